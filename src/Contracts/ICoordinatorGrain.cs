namespace DistGpt.Contracts;

/// <summary>The coordinator grain: one per run, always on the coordinator's silo (its key is that silo's name). It admits
/// workers and reports the run; it moves no tensors.</summary>
public interface ICoordinatorGrain : IGrainWithStringKey
{
    /// <summary>Admission with the run's checks (token, build, config, data, unique name). An accepted worker then opens its
    /// data-plane connection with the ticket in the answer and takes part from the next step boundary on; nothing changes
    /// when refused.</summary>
    Task<JoinDecision> Join(JoinRequest request);

    /// <summary>The run as `distgpt status` shows it.</summary>
    Task<RunStatus> GetStatus();
}

public sealed record JoinDecision(JoinAccepted? Accepted, string? RefusedReason);

/// <summary>Where the run is: the last step's figures and each worker's last compute and communication time.</summary>
public sealed record RunStatus(string RunId, long Step, long MaxIters, double? Loss, double? ValLoss, double? TokensPerSecond,
    IReadOnlyList<WorkerStatus> Workers);

public sealed record WorkerStatus(string Name, int Rank, string? Silo, double? ComputeMs, double? CommMs);
