using DistGpt.Contracts;
using DistGpt.Fabric;
using Orleans.Concurrency;

namespace DistGpt.WorkerSilo;

/// <summary>The worker grain, on its own worker's silo: takes the coordinator's orders and hands them to the worker, whose
/// data plane brings the tensors. Reentrant: a shutdown must not wait behind a long compute.</summary>
[SiloNamedByKeyPlacement, Reentrant]
public sealed class WorkerGrain(WorkerSilo worker) : Grain, IWorkerGrain
{
    public Task ComputeGradients(ComputeRequest request)
    {
        worker.Orders.Place(request);
        return Task.CompletedTask;
    }

    public Task Shutdown(string reason)
    {
        worker.EndRun(reason);
        return Task.CompletedTask;
    }
}
