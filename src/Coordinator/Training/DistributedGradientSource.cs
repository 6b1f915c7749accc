using System.Diagnostics;
using System.Runtime.InteropServices;
using DistGpt.Contracts;
using DistGpt.Coordinator.Grains;
using DistGpt.Coordinator.Telemetry;
using DistGpt.Model;
using DistGpt.Model.Data;
using DistGpt.Model.Engine;
using DistGpt.Model.Training;

namespace DistGpt.Coordinator.Training;

/// <summary>Gets a step's gradient sum from the worker silos. The global batch of B sequences is cut into N0 shares,
/// N0 the starting world size (<see cref="DistributedOptions.Shares"/>), fixed for the whole run: share r is sequences
/// [r*B/N0, (r+1)*B/N0), whoever computes it. Each share's gradient sum lands in its own buffer and the shares are added
/// in share order, so the result depends neither on arrival order nor on how many workers are left: a worker may compute
/// several shares in a step. A share whose worker is lost or sends invalid gradients is recomputed by a surviving worker
/// (when failures are tolerated), so every step still covers the whole global batch exactly once, and a run with
/// failures gives the bits of a fault-free one.</summary>
public sealed class DistributedGradientSource(
    RunMembership grain, Gpt model, Corpus corpus, TrainSettings settings, RunDescription run, DistributedOptions options,
    Action<string> log) : IGradientSource, IDisposable
{
    readonly List<NativeBuffer> shareBuffers = new();

    public StepGradients Compute(long step, CancellationToken cancel) => ComputeAsync(step, cancel).GetAwaiter().GetResult();

    /// <summary>A step; with parameter shards, started over when a worker holding a range is lost during it (the range's
    /// replica then stands in: every share is computed again at the same weights, so the step keeps its bits).</summary>
    async Task<StepGradients> ComputeAsync(long step, CancellationToken cancel)
    {
        while (true)
        {
            try { return await ComputeOnceAsync(step, cancel); }
            catch (ShardHolderLostException e)
            {
                if (!options.TolerateFailures) throw new RunFailedException($"step {step}: {e.Message}; stopping the run");
                log($"step {step}: {e.Message}; the step starts over with the shards laid out again");
            }
        }
    }

    sealed record Share(int Index, long First, int Count);

    async Task<StepGradients> ComputeOnceAsync(long step, CancellationToken cancel)
    {
        var members = await MembersAsync(cancel);
        var shares = Split(settings.BatchSize, options.Shares);
        var sharded = ParameterShards;
        if (sharded != null) await sharded.EnsureLayoutAsync(members, step - 1, cancel);
        while (sharded == null && shareBuffers.Count < shares.Count) shareBuffers.Add(new NativeBuffer(model.Parameters.Count));
        var replies = new GradientsReply?[shares.Count];
        var weights = model.Parameters.Values;
        var clock = Stopwatch.StartNew();
        var computeMs = new Dictionary<string, double>();
        var roundTripMs = new Dictionary<string, double>();
        var busyMs = new Dictionary<string, double>(); // compute without the waits for arriving weights
        var rejected = new List<string>();
        var todo = new Queue<Share>(shares);
        var alive = members.ToList();
        var stragglers = new List<string>();
        var lost = new List<string>();
        var traffic = new WireTraffic();
        // Where each share's sum is: its own buffer, or (dev mode, fp32) the gradient region its worker wrote it to, read
        // in place when that worker computes only this share in the round.
        var sources = sharded == null ? shareBuffers.Take(shares.Count).ToArray() : [];
        var computedBy = new IWorkerProxy?[shares.Count];

        // A worker's share that failed: lost, straggling, or invalid (its shares go back on the queue).
        void Fail(IWorkerProxy worker, Exception error, List<Share> unfinished)
        {
            alive.Remove(worker);
            foreach (var s in unfinished) todo.Enqueue(s);
            if (error is OperationCanceledException)
            {
                stragglers.Add(worker.Name);
                log($"step {step}: worker '{worker.Name}' is a straggler (not done {options.StragglerTimeout!.Value.TotalSeconds:F1} s after the first worker); its {unfinished.Count} share(s) go to the other workers");
                OnStraggler?.Invoke(worker, step);
                return;
            }
            if (!options.TolerateFailures) throw new RunFailedException($"step {step}: {error.Message}; stopping the run");
            log($"step {step}: {error.Message}; its {unfinished.Count} share(s) go to the other workers");
            if (error is InvalidGradientsException) rejected.Add(worker.Name);
            bool drop = error is WorkerLostException || Reject(worker);
            if (drop)
            {
                lost.Add(worker.Name);
                OnWorkerDropped?.Invoke(worker, error is WorkerLostException wl ? wl.Reason : $"{options.MaxRejections} rejected gradient payloads");
            }
        }

        double sumNorm, wallMs;
        Task? orderingAhead = null;
        while (true)
        {
            if (todo.Count == 0)
            {
                wallMs = clock.Elapsed.TotalMilliseconds;
                // The next step's orders go out while this one's sum is added up (see OrderAhead).
                if (step < settings.MaxIters) orderingAhead ??= Task.Run(() => OrderAhead(step + 1, shares));
                if (sharded == null)
                {
                    if (SumShares(step, shares, sources, computedBy, Fail, out sumNorm)) break;
                }
                else if (await ShardNormAsync(sharded, step, shares, computedBy, Fail, cancel) is { } norm)
                {
                    sumNorm = norm;
                    break;
                }
                continue;
            }
            MoveOutOfRegions(sources); // before a retry round: it may give a worker another share, rewriting its region
            if (alive.Count == 0) alive = (await MembersAsync(cancel)).ToList();
            // One queue per worker this round: round-robin over the live workers.
            var assignment = alive.ToDictionary(w => w, _ => new List<Share>());
            for (int i = 0; todo.Count > 0; i++) assignment[alive[i % alive.Count]].Add(todo.Dequeue());
            var busy = assignment.Where(a => a.Value.Count > 0).ToDictionary(a => a.Key, _ => CancellationTokenSource.CreateLinkedTokenSource(cancel));
            var firstDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var rounds = assignment.Where(a => a.Value.Count > 0).Select(async a =>
            {
                var worker = a.Key;
                var stop = busy[worker].Token;
                var region = a.Value.Count == 1 ? (worker as RemoteWorker)?.GradientRegion : null;
                for (int k = 0; k < a.Value.Count; k++)
                {
                    var share = a.Value[k];
                    var target = sharded != null ? null : region ?? shareBuffers[share.Index];
                    using var call = WorkerCall.Start(worker, step, share.Index, share.First, share.Count, traffic);
                    long started = Stopwatch.GetTimestamp();
                    try
                    {
                        var request = Order(step, share) with { TraceParent = call.TraceParent, TraceState = call.TraceState };
                        var windows = worker is RemoteWorker { SendsWindows: true } ? Windows(step, share) : ReadOnlyMemory<byte>.Empty;
                        var reply = await worker.ComputeGradientsAsync(request, sharded == null ? weights : null, windows, target, stop);
                        if (!double.IsFinite(reply.LossSum)) // (the worker grain has checked the gradients as they landed)
                            throw new InvalidGradientsException(worker.Name, "NaN or Inf in the loss");
                        replies[share.Index] = reply;
                        if (target != null) sources[share.Index] = target;
                        if (reply.PeerSent + reply.PeerReceived > 0) traffic.AddPeer(worker.Name, reply.PeerSent, reply.PeerReceived);
                        computedBy[share.Index] = worker;
                        lock (computeMs)
                        {
                            computeMs[worker.Name] = computeMs.GetValueOrDefault(worker.Name) + reply.ComputeMs;
                            busyMs[worker.Name] = busyMs.GetValueOrDefault(worker.Name) + reply.ComputeMs - reply.WeightsWaitMs;
                            roundTripMs[worker.Name] = roundTripMs.GetValueOrDefault(worker.Name) + Stopwatch.GetElapsedTime(started).TotalMilliseconds;
                        }
                        call.Completed(reply);
                    }
                    catch (Exception e) when (e is WorkerLostException or InvalidGradientsException
                                              || e is OperationCanceledException && !cancel.IsCancellationRequested)
                    {
                        call.Failed(e);
                        return (worker, e, a.Value.Skip(k).ToList());
                    }
                }
                firstDone.TrySetResult();
                return (worker, (Exception?)null, new List<Share>());
            }).ToList();
            var all = Task.WhenAll(rounds);
            var holderLost = sharded?.HolderLost ?? CancellationToken.None;
            using var abandon = holderLost.Register(() => { foreach (var cts in busy.Values) cts.Cancel(); });
            if (options.StragglerTimeout is { } patience)
            {
                // Straggler policy "drop": once one worker has finished its shares, the others get `patience` more;
                // whoever is still busy then is skipped for this step and its shares go to the workers that are done.
                if (await Task.WhenAny(all, firstDone.Task) != all && await Task.WhenAny(all, Task.Delay(patience, cancel)) != all)
                    foreach (var (w, cts) in busy) cts.Cancel();
            }
            var outcomes = await all;
            abandon.Dispose(); // before the calls' sources are disposed: a holder may still be lost after the round
            if (holderLost.IsCancellationRequested)
            {
                foreach (var cts in busy.Values) cts.Dispose();
                throw new ShardHolderLostException(sharded!.LostReason ?? "a worker holding a parameter range left the run");
            }
            foreach (var (worker, error, unfinished) in outcomes)
            {
                busy[worker].Dispose();
                if (error != null) Fail(worker, error, unfinished);
            }
        }
        if (orderingAhead != null) await orderingAhead;
        foreach (var (worker, sent, received) in sharded?.TakeTraffic() ?? []) traffic.Add(worker, sent, received, 0, 0);
        double lossSum = 0;
        long tokens = 0;
        foreach (var r in replies) { lossSum += r!.LossSum; tokens += r.Tokens; }
        double slowest = computeMs.Values.Max(), fastest = computeMs.Values.Min();
        var extra = new Dictionary<string, object>
        {
            ["compute_ms"] = Math.Round(slowest, 3),
            ["compute_busy_ms"] = Math.Round(busyMs.Values.Max(), 3),
            ["straggler_lag_ms"] = Math.Round(slowest - fastest, 3),
            ["worker_compute_ms"] = computeMs.ToDictionary(kv => kv.Key, kv => Math.Round(kv.Value, 3)),
            ["wire_bytes"] = traffic.Total.Socket(),
        };
        if (traffic.Total.UsedSharedMemory) extra["shm_bytes"] = traffic.Total.Shared();
        extra["node_bytes"] = traffic.NodeBytes();
        if (stragglers.Count > 0) extra["stragglers"] = stragglers;
        if (lost.Count > 0) extra["lost_workers"] = lost;
        if (rejected.Count > 0) extra["rejected_payloads"] = rejected;
        // Per worker, the round trips' time not spent computing (requests, replies, payload checks); the rest of the
        // step's gather time it spent waiting for the slowest worker.
        extra["worker_comm_ms"] = roundTripMs.ToDictionary(kv => kv.Key, kv => Math.Round(Math.Max(0, kv.Value - computeMs[kv.Key]), 3));
        var names = members.Select(w => w.Name).ToHashSet();
        var joined = names.Except(previousMembers).ToList();
        var left = previousMembers.Except(names).Except(previousLost).ToList();
        if (joined.Count > 0) extra["joined_workers"] = joined;
        if (left.Count > 0) extra["left_workers"] = left;
        (previousMembers, previousLost) = (names, lost.ToHashSet());
        return new StepGradients(new GradientSum(lossSum, tokens), members.Count, Math.Round(Math.Max(0, wallMs - slowest), 3), extra, sumNorm);
    }

    /// <summary>Adds the shares up in share order into the model's gradient buffer and takes the sum's norm in the same pass;
    /// false when the sum holds a NaN or an infinity from a share not checked as it landed (a worker's region): that share
    /// failed (<paramref name="fail"/>) and goes back on the queue. Every share finite and still an infinity: the addition
    /// overflowed, and the run cannot go on.</summary>
    bool SumShares(long step, List<Share> shares, NativeBuffer[] sources, IWorkerProxy?[] computedBy,
        Action<IWorkerProxy, Exception, List<Share>> fail, out double sumNorm)
    {
        using (TrainingTelemetry.Start("sum gradients", step))
            if (GradientOps.SumInOrderWithNorm(model.Parameters.Grads, sources, shares.Count, out sumNorm)) return true;
        var invalid = Enumerable.Range(0, shares.Count).Where(i => !GradientOps.AllFinite(sources[i].Span)).ToList();
        if (invalid.Count == 0) throw new TrainingDivergedException($"the gradient sum overflowed at step {step}; lower --learning-rate");
        foreach (var byWorker in invalid.GroupBy(i => computedBy[i]!))
        {
            var error = new InvalidGradientsException(byWorker.Key.Name, "NaN or Inf in the gradients");
            foreach (int i in byWorker)
                using (var call = WorkerCall.Start(byWorker.Key, step, i, shares[i].First, shares[i].Count)) call.Failed(error);
            fail(byWorker.Key, error, byWorker.Select(i => shares[i]).ToList());
        }
        return false;
    }

    /// <summary>With parameter shards: the norm of the step's gradient sum from the holders' reports, or null when a holder
    /// refused shares (they failed, as in <see cref="SumShares"/>, and go back on the queue).</summary>
    async Task<double?> ShardNormAsync(ShardedParameters sharded, long step, List<Share> shares, IWorkerProxy?[] computedBy,
        Action<IWorkerProxy, Exception, List<Share>> fail, CancellationToken cancel)
    {
        ShardedParameters.NormResult result;
        using (TrainingTelemetry.Start("sum gradients", step)) result = await sharded.NormAsync(step, cancel);
        if (result.InvalidShares.Count == 0) return result.Norm;
        foreach (var byWorker in result.InvalidShares.Where(i => computedBy[i] != null).GroupBy(i => computedBy[i]!))
        {
            var error = new InvalidGradientsException(byWorker.Key.Name, "NaN or Inf in the gradients (found by a parameter-shard holder)");
            foreach (int i in byWorker)
                using (var call = WorkerCall.Start(byWorker.Key, step, i, shares[i].First, shares[i].Count)) call.Failed(error);
            fail(byWorker.Key, error, byWorker.Select(i => shares[i]).ToList());
        }
        return null;
    }

    /// <summary>The members at the previous step's start and the ones it lost: a step names who joined or left since.</summary>
    HashSet<string> previousMembers = new(), previousLost = new();

    ComputeRequest Order(long step, Share share) => new(run.RunId, step, step - 1, run.ConfigHash, share.First, share.Count);

    /// <summary>The next step's orders, as its first round will hand them out if the workers stay the same, go out while the
    /// workers wait for the new weights (see <see cref="IWorkerProxy.OrderAhead"/>).</summary>
    void OrderAhead(long next, List<Share> shares)
    {
        var members = grain.Members();
        for (int i = 0; i < shares.Count && members.Count > 0; i++) members[i % members.Count].OrderAhead(Order(next, shares[i]));
    }

    /// <summary>Copies the shares whose sums are still in their workers' regions into their own buffers.</summary>
    void MoveOutOfRegions(NativeBuffer[] sources)
    {
        for (int i = 0; i < sources.Length; i++)
            if (!ReferenceEquals(sources[i], shareBuffers[i]))
            {
                sources[i].Span.CopyTo(shareBuffers[i].Span);
                sources[i] = shareBuffers[i];
            }
    }

    /// <summary>Set when the run has parameter shards: the workers' sums go to the range holders, not here.</summary>
    public ShardedParameters? ParameterShards { get; init; }

    /// <summary>A worker to remove from the run (lost, or too many rejected payloads), with the reason.</summary>
    public Action<IWorkerProxy, string>? OnWorkerDropped { get; init; }

    /// <summary>A worker skipped for a step under the "drop" straggler policy.</summary>
    public Action<IWorkerProxy, long>? OnStraggler { get; init; }

    readonly Dictionary<string, int> rejections = new();

    /// <summary>Counts a rejected payload; true when the worker has used up its allowance and must be dropped.</summary>
    bool Reject(IWorkerProxy worker)
    {
        int n = rejections[worker.Name] = rejections.GetValueOrDefault(worker.Name) + 1;
        return n >= options.MaxRejections;
    }

    async Task<IReadOnlyList<IWorkerProxy>> MembersAsync(CancellationToken cancel)
    {
        var members = grain.Members();
        if (members.Count > 0) return members;
        if (!options.TolerateFailures) throw new RunFailedException("no workers left in the run");
        log($"no workers left; waiting up to {options.RejoinTimeout.TotalSeconds:F0} s for one to join");
        await grain.WaitForAsync(1, options.RejoinTimeout, cancel);
        return grain.Members();
    }

    ReadOnlyMemory<byte> Windows(long step, Share share) =>
        MemoryMarshal.AsBytes(BatchSampler.Windows(corpus.Train, settings.Seed, step, share.First, share.Count, model.Config.BlockSize).AsSpan()).ToArray();

    /// <summary>B sequences in n shares: share r is [r*B/n, (r+1)*B/n).</summary>
    static List<Share> Split(int batch, int shares)
    {
        int n = Math.Clamp(shares, 1, batch);
        return Enumerable.Range(0, n).Select(r =>
        {
            long first = (long)r * batch / n, end = (long)(r + 1) * batch / n;
            return new Share(r, first, (int)(end - first));
        }).ToList();
    }

    public void Dispose()
    {
        foreach (var b in shareBuffers) b.Dispose();
    }
}

public sealed record DistributedOptions
{
    /// <summary>The shares the global batch is cut into every step: the starting world size (--min-workers; dev mode's
    /// --workers; a resumed run's checkpoint), kept when workers are lost or join, so the gradient sum keeps its bits.</summary>
    public required int Shares { get; init; }
    /// <summary>Recompute a lost worker's share on the survivors instead of stopping the run.</summary>
    public bool TolerateFailures { get; init; }
    public TimeSpan RejoinTimeout { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>Straggler policy: null waits for every worker ("wait"); a value drops a worker from the step when it is
    /// still busy this long after the first worker finished ("drop"), and its shares are recomputed by the others.</summary>
    public TimeSpan? StragglerTimeout { get; init; }
    /// <summary>Rejected gradient payloads (NaN/Inf, wrong length, stale) after which a worker is dropped.</summary>
    public int MaxRejections { get; init; } = 3;
}
