using DistGpt.Contracts;
using DistGpt.Contracts.Wire;
using DistGpt.Coordinator.Grains;
using DistGpt.Model;
using DistGpt.Model.Training;

namespace DistGpt.Coordinator.Training;

/// <summary>The coordinator's side of parameter shards (--shards K): lays the parameter ranges out on K worker silos (again
/// at a step boundary whenever the members change, after gathering them back), turns the holders' chunk sums of squares into
/// the step's gradient norm, gives each holder the go for its update, and gathers the ranges for evaluation and checkpoints.
/// Between layouts it moves no tensor: the gradient ranges and the updated weights travel between the worker silos.</summary>
public sealed class ShardedParameters(RunMembership grain, Gpt model, AdamW optimizer, RunDescription run, int requested, int shares,
    Action<string> log) : IRemoteOptimizer
{
    sealed record Layout(long Id, IReadOnlyList<ShardPlacement> Ranges, RemoteWorker[] Holders, RemoteWorker?[] Replicas, RemoteWorker[] Members)
    {
        /// <summary>Cancelled when a holder leaves the run: the step under way cannot finish (see <see cref="HolderLost"/>).</summary>
        public CancellationTokenSource Lost { get; } = new();
    }

    /// <summary>The holders' norm reports for a step: which shares they found invalid, or every range's chunk squares.</summary>
    public sealed record NormResult(double Norm, IReadOnlyList<int> InvalidShares);

    readonly object gate = new();
    readonly ChangeSignal changed = new();
    Layout? layout;
    long nextLayoutId = 1;
    readonly HashSet<string> ready = new();
    readonly Dictionary<int, ShardNorm> norms = new();
    readonly Dictionary<int, ShardState> states = new();
    RemoteWorker?[] gatherSources = [];
    long version;                       // updates applied (the holders' ranges are at this version)
    long gatheredVersion = -1;          // the local model's weights are of this version
    bool gatheredMoments;               // ... and the local AdamW's moments too
    readonly Dictionary<string, (long Sent, long Received)> traffic = new(); // the shard frames' bytes, per worker, not yet taken

    void Count(RemoteWorker worker, long sent, long received)
    {
        lock (traffic)
        {
            var (s, r) = traffic.GetValueOrDefault(worker.Name);
            traffic[worker.Name] = (s + sent, r + received);
        }
    }

    /// <summary>The bytes of the shard frames (layouts, norms, updates, gathered ranges) each worker's data-plane link
    /// carried since the previous call, as (worker, sent by the coordinator, received by it).</summary>
    public IReadOnlyList<(string Worker, long Sent, long Received)> TakeTraffic()
    {
        lock (traffic)
        {
            var taken = traffic.Select(kv => (kv.Key, kv.Value.Sent, kv.Value.Received)).ToList();
            traffic.Clear();
            return taken;
        }
    }

    async Task SendAsync<T>(RemoteWorker worker, MessageKind kind, T header, CancellationToken cancel, params ReadOnlyMemory<byte>[] payload) =>
        Count(worker, await worker.Channel.SendAsync(kind, header, cancel, payload), 0);

    /// <summary>Cancelled when a worker holding a range of the current layout leaves the run: the calls of the step under
    /// way are abandoned, and the step starts over once the shards are laid out again from the replicas.</summary>
    public CancellationToken HolderLost { get { lock (gate) return layout?.Lost.Token ?? CancellationToken.None; } }

    /// <summary>Why <see cref="HolderLost"/> fired: who left, and who stands in for it.</summary>
    public string? LostReason { get; private set; }

    /// <summary>Watches the membership for holders leaving.</summary>
    public void Watch()
    {
        grain.Left += (worker, _) =>
        {
            Layout? current;
            lock (gate) current = layout;
            if (current != null && worker is RemoteWorker holder && current.Holders.Contains(holder))
            {
                LostReason = Lost(current)(holder)?.Message;
                current.Lost.Cancel();
            }
            Signal();
        };
    }

    /// <summary>Ranges a shard holds (when the parameters have that many norm chunks): see <see cref="EnsureLayoutAsync"/>.</summary>
    public const int RangesPerShard = 4;

    TimeSpan Patience => TimeSpan.FromSeconds(Math.Max(10, 3 * run.HeartbeatTimeout.TotalSeconds));

    /// <summary>At a step boundary: a layout over exactly these members, at weights version <paramref name="weightsVersion"/>.
    /// A new one (first step, or the members changed) gathers the old layout's ranges first, then sends every member the
    /// whole weights and each holder its range's moments, and waits until all are linked to each other.</summary>
    public async Task EnsureLayoutAsync(IReadOnlyList<IWorkerProxy> members, long weightsVersion, CancellationToken cancel)
    {
        var workers = members.OfType<RemoteWorker>().OrderBy(w => w.Rank).ToArray();
        if (workers.Length != members.Count) throw new InvalidOperationException("parameter shards need workers with a data plane");
        Layout? old;
        lock (gate) old = layout;
        if (old != null && old.Members.Select(w => w.Name).SequenceEqual(workers.Select(w => w.Name)) && old.Members.SequenceEqual(workers)) return;
        if (old == null) (version, gatheredVersion, gatheredMoments) = (weightsVersion, weightsVersion, true); // the local model is the run's start
        else await GatherAsync(moments: true, cancel);
        int chunks = GradientOps.NormChunks(model.Parameters.Count);
        int k = Math.Min(Math.Min(requested == 0 ? workers.Length : requested, workers.Length), chunks);
        // Each of the K shards holds RangesPerShard ranges, every K-th one: the backward finishes the ranges from the end
        // of the buffer, so the workers' next range to send goes to another holder's link each time, not all to one.
        var plan = ParameterShards.Plan(model.Parameters.Count, Math.Min(k * RangesPerShard, chunks));
        RemoteWorker HolderOf(int range) => workers[range % k];
        // A range's replica is on the worker after its holder round the ring: every range survives the loss of any one worker.
        RemoteWorker? ReplicaOf(int range) => workers.Length < 2 ? null : workers[(range % k + 1) % workers.Length];
        var ranges = plan.Select(r => new ShardPlacement(r.Index, r.Offset, r.Length, HolderOf(r.Index).Name, HolderOf(r.Index).PeerEndpoint!, ReplicaOf(r.Index)?.Name)).ToArray();
        var next = new Layout(nextLayoutId++, ranges, ranges.Select(r => HolderOf(r.Index)).ToArray(), ranges.Select(r => ReplicaOf(r.Index)).ToArray(), workers);
        lock (gate)
        {
            layout = next;
            ready.Clear();
            norms.Clear();
        }
        var settings = new ShardOptimizer(optimizer.Beta1, optimizer.Beta2, optimizer.WeightDecay, optimizer.Eps, optimizer.StepCount);
        await Task.WhenAll(workers.Select(w =>
        {
            int[] holding = ranges.Where(r => next.Holders[r.Index] == w).Select(r => r.Index).ToArray();
            int[] replicating = ranges.Where(r => next.Replicas[r.Index] == w).Select(r => r.Index).ToArray();
            var header = new ShardLayout(run.RunId, run.ConfigHash, next.Id, version, shares, ranges, holding, settings, replicating);
            var payload = new List<ReadOnlyMemory<byte>> { Contracts.Wire.NativeMemoryManager.Bytes(model.Parameters.Values) };
            foreach (int r in holding.Concat(replicating))
                payload.AddRange([Moment(optimizer.ExpAvg, ranges[r]), Moment(optimizer.ExpAvgSq, ranges[r])]);
            return SendAsync(w, MessageKind.ShardLayout, header, cancel, payload.ToArray());
        }));
        await WaitAsync<object>(() => ready.Count == workers.Length ? ready : null, next.Members, _ => null, "link up for the shard layout", cancel);
        log($"parameter shards: layout {next.Id}, {k} shards of {ranges.Length} ranges: " + string.Join(", ", ranges.GroupBy(r => r.Worker)
            .Select(g => $"{g.Key} holds {g.Count()} ({g.Sum(r => r.Length):N0} parameters)")));
    }

    static Memory<byte> Moment(Model.Engine.NativeBuffer moments, ShardPlacement range) =>
        Contracts.Wire.NativeMemoryManager.Bytes(moments, range.Offset, range.Length);

    /// <summary>Waits for every holder's report on <paramref name="step"/>: the norm of the whole gradient sum, from the
    /// chunk squares in chunk order (the unsharded norm's bits); or, as soon as a holder refused shares, those shares.</summary>
    public async Task<NormResult> NormAsync(long step, CancellationToken cancel)
    {
        Layout current;
        lock (gate) current = layout ?? throw new InvalidOperationException("no shard layout");
        return await WaitAsync(() =>
        {
            var invalid = norms.Values.Where(n => n.Step == step && n.InvalidShares is { Length: > 0 }).SelectMany(n => n.InvalidShares!).Distinct().ToList();
            if (invalid.Count > 0)
            {
                foreach (var k in norms.Where(n => n.Value.InvalidShares is { Length: > 0 }).Select(n => n.Key).ToList()) norms.Remove(k);
                return new NormResult(double.NaN, invalid);
            }
            if (current.Ranges.Any(r => !norms.TryGetValue(r.Index, out var n) || n.Step != step)) return null;
            if (norms.Values.Any(n => n.Overflowed)) throw new TrainingDivergedException($"the gradient sum overflowed at step {step}; lower --learning-rate");
            return new NormResult(GradientOps.NormOfChunkSquares(current.Ranges.SelectMany(r => norms[r.Index].ChunkSquares).ToArray()), []);
        }, current.Holders, Lost(current), $"report the sums of squares of step {step}", cancel);
    }

    /// <summary>A holder of <paramref name="current"/> is gone: the step can start over from its replica, if that is still there.</summary>
    Func<RemoteWorker, Exception?> Lost(Layout current) => gone =>
    {
        int held = Array.IndexOf(current.Holders, gone); // its ranges all have their replica on the same worker
        if (held < 0) return null;
        string ranges = string.Join(", ", current.Ranges.Where(r => current.Holders[r.Index] == gone).Select(r => r.Index));
        var members = grain.Members();
        return current.Replicas[held] is { } replica && members.Contains(replica)
            ? new ShardHolderLostException($"worker '{gone.Name}' left the run holding parameter ranges {ranges}; their replica on '{replica.Name}' takes over")
            : new RunFailedException($"worker '{gone.Name}' left the run holding parameter ranges {ranges}, and their replica{(current.Replicas[held] is { } r ? $" on '{r.Name}' is gone too" : " does not exist (a single worker)")}: the ranges' optimizer state is lost");
    };

    /// <summary>Until <paramref name="done"/> (called under the lock) has an answer; fails when one of the workers it needs
    /// leaves the run (with <paramref name="lost"/>'s exception, if it has one for that worker) or nothing comes for the patience.</summary>
    async Task<T> WaitAsync<T>(Func<T?> done, IReadOnlyList<RemoteWorker?> needed, Func<RemoteWorker, Exception?> lost, string what, CancellationToken cancel) where T : class
    {
        var until = DateTime.UtcNow + Patience;
        while (true)
        {
            // Short rounds: a worker leaving the run is the membership's news, not a pulse here.
            if (await changed.UntilAsync(gate, done, TimeSpan.FromMilliseconds(250), cancel) is { } answer) return answer;
            var members = grain.Members();
            if (needed.FirstOrDefault(w => w != null && !members.Contains(w)) is { } gone)
                throw lost(gone) ?? new ShardHolderLostException($"worker '{gone.Name}' left the run before it could {what}");
            if (DateTime.UtcNow > until) throw new RunFailedException($"the workers did not {what} within {Patience.TotalSeconds:F0} s");
        }
    }

    public void Step(long step, float lr, float gradScale) => StepAsync(step, lr, gradScale).GetAwaiter().GetResult();

    async Task StepAsync(long step, float lr, float gradScale)
    {
        Layout current;
        lock (gate) current = layout ?? throw new InvalidOperationException("no shard layout");
        var update = new ShardUpdate(run.RunId, step, lr, gradScale);
        // Holders and replicas alike. One that cannot be reached is gone: its range comes from the other copy at the next layout.
        await Task.WhenAll(current.Holders.Concat(current.Replicas).OfType<RemoteWorker>().Distinct().Select(async w =>
        {
            try { await SendAsync(w, MessageKind.ShardUpdate, update, CancellationToken.None); }
            catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
            {
                log($"worker '{w.Name}' could not be given step {step}'s update: {e.Message}");
            }
        }));
        optimizer.StepCount++;
        version = step;
    }

    public void Gather(bool moments) => GatherAsync(moments, CancellationToken.None).GetAwaiter().GetResult();

    async Task GatherAsync(bool moments, CancellationToken cancel)
    {
        if (gatheredVersion == version && (gatheredMoments || !moments)) return;
        Layout current;
        var members = grain.Members();
        RemoteWorker?[] sources;
        lock (gate)
        {
            current = layout ?? throw new InvalidOperationException("no shard layout");
            // Each range from its holder, or from its replica when the holder is gone.
            sources = current.Ranges.Select(r => members.Contains(current.Holders[r.Index]) ? current.Holders[r.Index]
                : current.Replicas[r.Index] is { } replica && members.Contains(replica) ? replica : null).ToArray();
            states.Clear();
            gatherSources = sources;
        }
        if (Array.IndexOf(sources, null) is var missing && missing >= 0)
            throw Lost(current)(current.Holders[missing])!;
        try
        {
            await Task.WhenAll(sources.Select((w, k) => SendAsync(w!, MessageKind.ShardStateRequest, new ShardStateRequest(run.RunId, current.Id, moments, k, version), cancel)));
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
        {
            throw new ShardHolderLostException($"a parameter range's holder could not be asked for it: {e.Message}");
        }
        var got = await WaitAsync(() => states.Count == current.Ranges.Count ? states.Values.ToList() : null, sources, _ => null, "send back their parameter ranges", cancel);
        if (got.FirstOrDefault(s => s.WeightsVersion != version || s.Moments != moments) is { } stale)
            throw new RunFailedException($"parameter range {stale.Shard} came back at version {stale.WeightsVersion}, expected {version}");
        if (moments) optimizer.StepCount = got[0].StepCount;
        (gatheredVersion, gatheredMoments) = (version, moments);
    }

    /// <summary>A worker's parameter-shard frame (on its data-plane receive loop).</summary>
    public async Task OnFrameAsync(RemoteWorker worker, Frame frame, CancellationToken cancel)
    {
        Layout? current;
        lock (gate) current = layout;
        Count(worker, 0, frame.Size);
        switch (frame.Kind)
        {
            case MessageKind.ShardReady:
                var r = frame.Read<ShardReady>();
                await worker.Channel.SkipPayloadAsync(frame.PayloadLength, cancel);
                lock (gate) if (r.RunId == run.RunId && r.LayoutId == current?.Id) ready.Add(worker.Name);
                break;
            case MessageKind.ShardNorm:
                var n = frame.Read<ShardNorm>();
                await worker.Channel.SkipPayloadAsync(frame.PayloadLength, cancel);
                if (n.LayoutId != current?.Id || Refuse(worker, current, n.RunId, n.Shard, out var range)) break; // (a report from an earlier layout is late)
                int chunks = GradientOps.NormChunks(range!.Length);
                if (n.InvalidShares is not { Length: > 0 } && !n.Overflowed && n.ChunkSquares?.Length != chunks)
                {
                    log($"worker '{worker.Name}' reported {n.ChunkSquares?.Length} chunk squares for parameter range {n.Shard}, which has {chunks}; ignored");
                    break;
                }
                if (n.InvalidShares?.Any(s => s < 0 || s >= shares) == true) break;
                lock (gate) norms[n.Shard] = n;
                break;
            case MessageKind.ShardState:
                var s = frame.Read<ShardState>();
                long expected = s.Length * sizeof(float) * (s.Moments ? 3 : 1);
                bool asked;
                lock (gate) asked = s.Shard >= 0 && s.Shard < gatherSources.Length && ReferenceEquals(gatherSources[s.Shard], worker);
                if (!asked || Refuse(worker, current, s.RunId, s.Shard, out range, replicaToo: true) || s.LayoutId != current!.Id || s.Offset != range!.Offset || s.Length != range.Length
                    || frame.PayloadLength != expected)
                {
                    log($"worker '{worker.Name}' sent a parameter range that does not match the layout; ignored");
                    await worker.Channel.SkipPayloadAsync(frame.PayloadLength, cancel);
                    break;
                }
                await worker.Channel.ReadPayloadAsync(Moment(model.Parameters.Values, range), cancel);
                if (s.Moments)
                {
                    await worker.Channel.ReadPayloadAsync(Moment(optimizer.ExpAvg, range), cancel);
                    await worker.Channel.ReadPayloadAsync(Moment(optimizer.ExpAvgSq, range), cancel);
                }
                lock (gate) states[s.Shard] = s;
                break;
            default:
                await worker.Channel.SkipPayloadAsync(frame.PayloadLength, cancel);
                return;
        }
        Signal();
    }

    /// <summary>A report about a range this worker does not hold (or of another run) is ignored.</summary>
    bool Refuse(RemoteWorker worker, Layout? current, string runId, int shard, out ShardPlacement? range, bool replicaToo = false)
    {
        range = current != null && shard >= 0 && shard < current.Ranges.Count ? current.Ranges[shard] : null;
        if (runId == run.RunId && range != null
            && (ReferenceEquals(current!.Holders[shard], worker) || replicaToo && ReferenceEquals(current.Replicas[shard], worker))) return false;
        log($"worker '{worker.Name}' sent a report about parameter range {shard}, which it does not hold; ignored");
        return true;
    }

    void Signal() => changed.Pulse();
}

/// <summary>A worker holding a parameter range left mid-step: the step starts over once the range's replica stands in.</summary>
public sealed class ShardHolderLostException(string message) : Exception(message);
