namespace DistGpt.Contracts;

/// <summary>The coordinator as a worker sees it: join the run, take part, leave.</summary>
public interface ICoordinatorGrain
{
    /// <summary>Validates the request (token, build, data, config, name) and reserves a rank; nothing changes when refused.</summary>
    JoinDecision Join(JoinRequest request);

    /// <summary>Makes an accepted worker part of the run from the next step boundary on.</summary>
    void Admit(IWorkerGrain worker);

    void Leave(IWorkerGrain worker, string reason);
}

public sealed record JoinDecision(JoinAccepted? Accepted, string? RefusedReason);
