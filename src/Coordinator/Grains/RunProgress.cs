using DistGpt.Contracts;
using DistGpt.Model.Training;

namespace DistGpt.Coordinator.Grains;

/// <summary>The run's latest figures, for `distgpt status`: written by the training loop after each step.</summary>
public sealed class RunProgress(string runId, long maxIters)
{
    volatile StepMetrics? last;
    float? lastValLoss; // (read without a lock: a status line may be one step behind)

    public void Report(StepMetrics m)
    {
        if (m.ValLoss is { } v) lastValLoss = v;
        last = m;
    }

    public RunStatus Status(RunMembership membership)
    {
        var m = last;
        var workers = membership.Members().Select(w => w is RemoteWorker r
            ? new WorkerStatus(r.Name, r.Rank, r.Silo, r.LastComputeMs, r.LastCommMs)
            : new WorkerStatus(w.Name, w.Rank, null, null, null)).ToList();
        return new RunStatus(runId, m?.Step ?? 0, maxIters, m?.Loss, lastValLoss, m?.TokensPerS, workers);
    }
}
