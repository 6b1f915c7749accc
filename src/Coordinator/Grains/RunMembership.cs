using System.Security.Cryptography;
using DistGpt.Contracts;

namespace DistGpt.Coordinator.Grains;

/// <summary>Membership of the run: who may join (token, build, config, data, unique name), which rank each worker has,
/// and who is active. Admission has two halves: the coordinator grain's Join reserves a rank and hands out a single-use
/// ticket; the worker's data-plane connection redeems it and becomes a member. The training loop takes a snapshot of the
/// members at every step boundary.</summary>
public sealed class RunMembership(RunDescription run, Action<string> log)
{
    /// <summary>A worker admitted by the grain that has not opened its data plane yet keeps its rank this long.</summary>
    static readonly TimeSpan TicketLifetime = TimeSpan.FromSeconds(60);

    /// <summary>A rank held for an admitted worker until its data plane is up (Admit) or fails (Leave); a ticket is redeemed once.</summary>
    sealed record Reservation(JoinAccepted Accepted, JoinRequest Request, DateTime Expires)
    {
        public bool Redeemed { get; set; }
    }

    readonly object gate = new();
    readonly Dictionary<string, Reservation> reserved = new();  // name -> accepted but not yet on the data plane
    readonly SortedList<int, IWorkerProxy> members = new();     // rank -> worker
    readonly ChangeSignal membershipChanged = new();

    public RunDescription Run => run;

    /// <summary>Takes the parameter-shard frames workers send on the data plane (set by the run when it has shards).</summary>
    public Func<RemoteWorker, Contracts.Wire.Frame, CancellationToken, Task>? ShardFrames { get; set; }
    public event Action<IWorkerProxy>? Joined;
    public event Action<IWorkerProxy, string>? Left;

    public JoinDecision Join(JoinRequest request)
    {
        string? reason = Validate(request);
        lock (gate)
        {
            foreach (var stale in reserved.Where(r => !r.Value.Redeemed && r.Value.Expires < DateTime.UtcNow).Select(r => r.Key).ToList()) reserved.Remove(stale);
            if (reason == null && members.Values.Any(w => w.Name == request.WorkerName))
                reason = $"a worker named '{request.WorkerName}' is already in the run; give each worker a unique --name";
            if (reason != null)
            {
                log($"refused worker {Untrusted.Quote(request.WorkerName, Untrusted.IdLength)}: {reason}");
                return new JoinDecision(null, reason);
            }
            if (reserved.TryGetValue(request.WorkerName, out var earlier) && earlier.Redeemed)
            {
                log($"refused worker '{request.WorkerName}': its previous admission is still opening its data plane");
                return new JoinDecision(null, $"a worker named '{request.WorkerName}' is joining the run right now; give each worker a unique --name");
            }
            reserved.Remove(request.WorkerName); // an earlier attempt of the same worker that never reached the data plane
            int rank = 0;
            while (members.ContainsKey(rank) || reserved.Values.Any(r => r.Accepted.Rank == rank)) rank++;
            var accepted = new JoinAccepted(run.RunId, rank, run.Config, run.ConfigHash, run.Vocabulary, run.Seed,
                run.ParameterCount, SendsWindows: request.DataSha256 == null, run.HeartbeatTimeout.TotalSeconds, run.GradientDType,
                GradientBucketBytes: run.GradientBucketBytes, ReplicasPerShare: run.ReplicasPerShare, Ticket: Convert.ToHexString(RandomNumberGenerator.GetBytes(32)),
                PeerSecret: run.PeerSecret);
            reserved[request.WorkerName] = new Reservation(accepted, request, DateTime.UtcNow + TicketLifetime);
            return new JoinDecision(accepted, null);
        }
    }

    /// <summary>The admission a data-plane hello's ticket stands for (used up by this call), or null: unknown name, wrong or
    /// expired ticket.</summary>
    public (JoinAccepted Accepted, JoinRequest Request)? Redeem(DataPlaneHello hello)
    {
        lock (gate)
        {
            if (hello.WorkerName == null || hello.Ticket == null || !reserved.TryGetValue(hello.WorkerName, out var r) || r.Redeemed || r.Expires < DateTime.UtcNow
                || !BuildInfo.TokensEqual(hello.Ticket, r.Accepted.Ticket!)) return null;
            r.Redeemed = true; // the rank stays reserved until Admit or Leave
            return (r.Accepted with { Ticket = null }, r.Request);
        }
    }

    string? Validate(JoinRequest r)
    {
        if (run.ClusterToken != null && !BuildInfo.TokensEqual(r.ClusterToken, run.ClusterToken))
            return r.ClusterToken == null ? "authentication failed: no cluster token given (--cluster-token or DISTGPT_CLUSTER_TOKEN)"
                                          : "authentication failed: wrong cluster token";
        if (r.ProtocolVersion != BuildInfo.ProtocolVersion || r.BuildVersion != BuildInfo.Version)
            return $"build mismatch: worker runs build {Untrusted.Quote(r.BuildVersion, 40)} (protocol {r.ProtocolVersion}), coordinator runs {BuildInfo.Version} (protocol {BuildInfo.ProtocolVersion})";
        if (!ValidName(r.WorkerName))
            return "a worker name is 1 to 64 letters, digits, '.', '_' or '-'";
        if (r.WorkerName == Fabric.FabricHosting.CoordinatorSilo)
            return $"'{r.WorkerName}' is the coordinator's silo name; give the worker another --name";
        if (r.ExpectedConfigHash != null && r.ExpectedConfigHash != run.ConfigHash)
            return $"model config mismatch: worker expects config {Untrusted.Quote(r.ExpectedConfigHash, Untrusted.IdLength)}, the run's is {run.ConfigHash}";
        if (r.DataSha256 != null && r.DataSha256 != run.DataSha256)
            return $"data mismatch: the worker's corpus has SHA-256 {Untrusted.Escape(r.DataSha256, 12)}, the coordinator's {run.DataSha256[..12]}… (same file on every node, or no --data to receive windows from the coordinator)";
        if (r.Silo != null && !IsSiloAddress(r.Silo))
            return $"{Untrusted.Quote(r.Silo, 80)} is not an Orleans silo address";
        return null;
    }

    static bool IsSiloAddress(string address)
    {
        try { Orleans.Runtime.SiloAddress.FromParsableString(address); return true; }
        catch (FormatException) { return false; }
    }

    /// <summary>Names reach logs, spans, metrics and silo names: a short plain charset keeps them from forging lines.</summary>
    public static bool ValidName(string? name) =>
        name is { Length: > 0 and <= 64 } && name.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-');

    public void Admit(IWorkerProxy worker)
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

    public void Leave(IWorkerProxy worker, string reason)
    {
        bool removed;
        lock (gate)
        {
            if (reserved.TryGetValue(worker.Name, out var r) && r.Redeemed && r.Accepted.Rank == worker.Rank) reserved.Remove(worker.Name);
            removed = members.TryGetValue(worker.Rank, out var w) && ReferenceEquals(w, worker) && members.Remove(worker.Rank);
            if (removed) Signal();
        }
        if (!removed) return;
        log($"worker '{worker.Name}' (rank {worker.Rank}) left: {reason} ({Count} active)");
        Left?.Invoke(worker, reason);
    }

    public int Count { get { lock (gate) return members.Count; } }

    public IReadOnlyList<IWorkerProxy> Members() { lock (gate) return members.Values.ToArray(); }

    /// <summary>Waits until at least <paramref name="count"/> workers are active.</summary>
    public async Task WaitForAsync(int count, TimeSpan timeout, CancellationToken cancel)
    {
        if (await membershipChanged.UntilAsync(gate, () => members.Count >= count ? members : null, timeout, cancel) == null)
            throw new RunFailedException($"only {Count} of {count} workers joined within {timeout.TotalSeconds:F0} s");
    }

    void Signal() => membershipChanged.Pulse();
}
