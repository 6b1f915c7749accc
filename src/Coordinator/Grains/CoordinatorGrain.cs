using DistGpt.Contracts;

namespace DistGpt.Coordinator.Grains;

/// <summary>Membership of the run: who may join (token, build, config, data, unique name), which rank each worker has,
/// and who is active. The training loop takes a snapshot of the members at every step boundary.</summary>
public sealed class CoordinatorGrain(RunDescription run, Action<string> log) : ICoordinatorGrain
{
    readonly object gate = new();
    readonly Dictionary<string, int> reserved = new();      // name -> rank, accepted but not yet admitted
    readonly SortedList<int, IWorkerGrain> members = new(); // rank -> worker
    TaskCompletionSource membershipChanged = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public RunDescription Run => run;
    public event Action<IWorkerGrain>? Joined;
    public event Action<IWorkerGrain, string>? Left;

    public JoinDecision Join(JoinRequest request)
    {
        string? reason = Validate(request);
        lock (gate)
        {
            if (reason == null && (reserved.ContainsKey(request.WorkerName) || members.Values.Any(w => w.Name == request.WorkerName)))
                reason = $"a worker named '{request.WorkerName}' is already in the run; give each worker a unique --name";
            if (reason != null)
            {
                log($"refused worker '{request.WorkerName}': {reason}");
                return new JoinDecision(null, reason);
            }
            int rank = 0;
            while (members.ContainsKey(rank) || reserved.ContainsValue(rank)) rank++;
            reserved[request.WorkerName] = rank;
            return new JoinDecision(new JoinAccepted(run.RunId, rank, run.Config, run.ConfigHash, run.Vocabulary, run.Seed,
                run.ParameterCount, SendsWindows: request.DataSha256 == null, run.HeartbeatTimeout.TotalSeconds, run.GradientDType,
                GradientBucketBytes: run.GradientBucketBytes, ReplicasPerShare: run.ReplicasPerShare), null);
        }
    }

    string? Validate(JoinRequest r)
    {
        if (run.ClusterToken != null && !BuildInfo.TokensEqual(r.ClusterToken, run.ClusterToken))
            return r.ClusterToken == null ? "authentication failed: no cluster token given (--cluster-token or DISTGPT_CLUSTER_TOKEN)"
                                          : "authentication failed: wrong cluster token";
        if (r.ProtocolVersion != BuildInfo.ProtocolVersion || r.BuildVersion != BuildInfo.Version)
            return $"build mismatch: worker runs build {r.BuildVersion} (protocol {r.ProtocolVersion}), coordinator runs {BuildInfo.Version} (protocol {BuildInfo.ProtocolVersion})";
        if (r.ExpectedConfigHash != null && r.ExpectedConfigHash != run.ConfigHash)
            return $"model config mismatch: worker expects config {r.ExpectedConfigHash}, the run's is {run.ConfigHash}";
        if (r.DataSha256 != null && r.DataSha256 != run.DataSha256)
            return $"data mismatch: the worker's corpus has SHA-256 {r.DataSha256[..12]}…, the coordinator's {run.DataSha256[..12]}… (same file on every node, or no --data to receive windows from the coordinator)";
        return null;
    }

    public void Admit(IWorkerGrain worker)
    {
        lock (gate)
        {
            reserved.Remove(worker.Name);
            members[worker.Rank] = worker;
            Signal();
        }
        log($"worker '{worker.Name}' joined as rank {worker.Rank} ({Count} active)");
        Joined?.Invoke(worker);
    }

    public void Leave(IWorkerGrain worker, string reason)
    {
        bool removed;
        lock (gate)
        {
            reserved.Remove(worker.Name);
            removed = members.TryGetValue(worker.Rank, out var w) && ReferenceEquals(w, worker) && members.Remove(worker.Rank);
            if (removed) Signal();
        }
        if (!removed) return;
        log($"worker '{worker.Name}' (rank {worker.Rank}) left: {reason} ({Count} active)");
        Left?.Invoke(worker, reason);
    }

    public int Count { get { lock (gate) return members.Count; } }

    public IReadOnlyList<IWorkerGrain> Members() { lock (gate) return members.Values.ToArray(); }

    /// <summary>Waits until at least <paramref name="count"/> workers are active.</summary>
    public async Task WaitForAsync(int count, TimeSpan timeout, CancellationToken cancel)
    {
        var until = DateTime.UtcNow + timeout;
        while (true)
        {
            Task changed;
            lock (gate)
            {
                if (members.Count >= count) return;
                changed = membershipChanged.Task;
            }
            var left = until - DateTime.UtcNow;
            if (left <= TimeSpan.Zero) throw new RunFailedException($"only {Count} of {count} workers joined within {timeout.TotalSeconds:F0} s");
            await Task.WhenAny(changed, Task.Delay(left < TimeSpan.FromSeconds(5) ? left : TimeSpan.FromSeconds(5), cancel));
            cancel.ThrowIfCancellationRequested();
        }
    }

    void Signal()
    {
        var old = membershipChanged;
        membershipChanged = new(TaskCreationOptions.RunContinuationsAsynchronously);
        old.TrySetResult();
    }
}
