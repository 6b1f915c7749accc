using DistGpt.Contracts;
using DistGpt.Fabric;
using Orleans.Concurrency;

namespace DistGpt.Coordinator.Grains;

/// <summary>The coordinator grain, on the coordinator's silo: admission and status, delegated to the run's membership and
/// progress. Reentrant: both are thread-safe, and a join must not wait behind a status call.</summary>
[SiloNamedByKeyPlacement, Reentrant]
public sealed class CoordinatorGrain(RunMembership membership, RunProgress progress) : Grain, ICoordinatorGrain
{
    public Task<JoinDecision> Join(JoinRequest request) => Task.FromResult(membership.Join(request));

    public Task<RunStatus> GetStatus() => Task.FromResult(progress.Status(membership));
}
