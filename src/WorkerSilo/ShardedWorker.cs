using DistGpt.Contracts;
using DistGpt.Contracts.Wire;
using DistGpt.Model;
using DistGpt.Model.Engine;
using DistGpt.Model.Training;

namespace DistGpt.WorkerSilo;

/// <summary>A worker's part in one shard layout: a link to every other range's holder (its gradient ranges go out there,
/// that range's updated weights come back), the range it holds itself if any, and the version of each range of its
/// weights, which a computation waits for.</summary>
public sealed class ShardedWorker : IAsyncDisposable
{
    readonly ShardLayout layout;
    readonly Gpt model;
    readonly WireDType dtype;
    readonly string name;
    readonly Action<string> log;
    readonly FrameChannel?[] links;
    readonly long[] versions;
    readonly List<FrameChannel> inbound = new();
    readonly CancellationTokenSource closing = new();
    readonly List<Task> loops = new();
    readonly object gate = new();
    readonly ChangeSignal advanced = new();
    string? linkFailure;
    readonly Dictionary<long, (long Sent, long Received)> peerBytes = new(); // by the step whose tensors they were
    WeightsArrival? arrival;  // the computation waiting for the weights of arrivalVersion, as they land
    long arrivalVersion;

    public long LayoutId => layout.LayoutId;
    /// <summary>The ranges this worker holds, and those it keeps the replica of, by range index.</summary>
    public IReadOnlyDictionary<int, ShardHolder> Holders { get; }
    public IReadOnlyDictionary<int, ShardReplica> Replicas { get; }

    ShardedWorker(ShardLayout layout, Gpt model, WireDType dtype, string name, Func<ShardNorm, Task> report, Action<string> log)
    {
        (this.layout, this.model, this.dtype, this.name, this.log) = (layout, model, dtype, name, log);
        links = new FrameChannel?[layout.Ranges.Count];
        versions = Enumerable.Repeat(layout.WeightsVersion, layout.Ranges.Count).ToArray();
        Holders = layout.Holding.ToDictionary(k => k, k => new ShardHolder(model, layout, k, report, log)
            { Updated = v => Advance(k, v), Sent = (step, bytes) => Count(step, bytes, 0) });
        Replicas = layout.Replicating.ToDictionary(k => k, k => new ShardReplica(model, layout, k));
    }

    /// <summary>Takes the layout: the worker's weights (and its range's moments) are read from <paramref name="payload"/>
    /// by the caller through <see cref="PayloadTargets"/>; then <see cref="ConnectAsync"/>.</summary>
    public static ShardedWorker Create(ShardLayout layout, Gpt model, WireDType dtype, string name, Func<ShardNorm, Task> report, Action<string> log)
    {
        bool InRange(int k) => k >= 0 && k < layout.Ranges.Count;
        if (layout.Ranges.Count < 1 || layout.Shares < 1 || !layout.Holding.All(InRange) || !layout.Replicating.All(InRange)
            || layout.Holding.Concat(layout.Replicating).Distinct().Count() != layout.Holding.Count + layout.Replicating.Count)
            throw new ProtocolException($"shard layout with {layout.Ranges.Count} ranges, holding [{string.Join(',', layout.Holding)}], replicating [{string.Join(',', layout.Replicating)}], {layout.Shares} shares");
        long next = 0;
        for (int k = 0; k < layout.Ranges.Count; k++)
        {
            var r = layout.Ranges[k];
            if (r.Offset != next || r.Length < 1 || r.Index != k || r.Offset % Model.Training.GradientOps.NormChunk != 0) throw new ProtocolException($"shard layout range {r.Index} [{r.Offset}, {r.Offset + r.Length}) does not continue at {next}");
            next = r.Offset + r.Length;
        }
        if (next != model.Parameters.Count) throw new ProtocolException($"shard layout covers {next} parameters of {model.Parameters.Count}");
        return new ShardedWorker(layout, model, dtype, name, report, log);
    }

    /// <summary>Where the layout's payload goes: the whole weights, then the held range's two moments, then the replicated
    /// range's (whose copy of the weights starts as the whole weights' range: see <see cref="PayloadLanded"/>).</summary>
    public IEnumerable<Memory<byte>> PayloadTargets()
    {
        yield return NativeMemoryManager.Bytes(model.Parameters.Values);
        foreach (int k in layout.Holding)
        {
            yield return Holders[k].MomentBytes(second: false);
            yield return Holders[k].MomentBytes(second: true);
        }
        foreach (int k in layout.Replicating)
        {
            yield return Replicas[k].MomentBytes(second: false);
            yield return Replicas[k].MomentBytes(second: true);
        }
    }

    /// <summary>After the payload: the replica's copy of its range's weights.</summary>
    public void PayloadLanded()
    {
        foreach (var r in Replicas.Values) NativeMemoryManager.Bytes(model.Parameters.Values, r.Range.Offset, r.Range.Length).CopyTo(r.WeightBytes);
    }

    /// <summary>Links to every other range's holder.</summary>
    public async Task ConnectAsync(string secret, Fabric.FabricTls? tls, CancellationToken cancel)
    {
        var remote = layout.Ranges.Where(r => !Holders.ContainsKey(r.Index)).ToList();
        await Task.WhenAll(remote.Select(async r =>
        {
            var channel = await PeerPlane.ConnectAsync(r.Endpoint, secret, tls, layout.RunId, name, layout.LayoutId, r.Index, cancel);
            links[r.Index] = channel;
        }));
        foreach (var r in remote)
            loops.Add(ReceiveWeightsAsync(r, links[r.Index]!, closing.Token));
    }

    /// <summary>Reads the holder's updated ranges into this worker's weights until the link closes.</summary>
    async Task ReceiveWeightsAsync(ShardPlacement range, FrameChannel link, CancellationToken cancel)
    {
        try
        {
            while (await link.ReceiveAsync(cancel) is { } frame)
            {
                if (frame.Kind == MessageKind.ShardSum && Replicas.TryGetValue(range.Index, out var replica))
                {
                    var h = frame.Read<ShardSum>();
                    if (h.RunId != layout.RunId) throw new ProtocolException($"a gradient sum for run {Untrusted.Quote(h.RunId, Untrusted.IdLength)}");
                    Count(h.Step, 0, frame.Size);
                    await replica.LandSumAsync(link, h, frame.PayloadLength, cancel);
                    continue;
                }
                if (frame.Kind != MessageKind.ShardWeights)
                {
                    await link.SkipPayloadAsync(frame.PayloadLength, cancel);
                    continue;
                }
                var w = frame.Read<ShardWeights>();
                Count(w.Version, 0, frame.Size);
                if (w.RunId != layout.RunId || w.Offset != range.Offset || w.Count != range.Length || frame.PayloadLength != range.Length * sizeof(float))
                    throw new ProtocolException($"weights [{w.Offset}, {w.Offset + w.Count}) of {frame.PayloadLength} bytes from the holder of range {range.Index}");
                if (w.Version <= Volatile.Read(ref versions[range.Index]))
                {
                    await link.SkipPayloadAsync(frame.PayloadLength, cancel);
                    continue;
                }
                await link.ReadPayloadAsync(NativeMemoryManager.Bytes(model.Parameters.Values, range.Offset, range.Length), cancel,
                    landed => Landing(range, w.Version, landed / sizeof(float)));
                Advance(range.Index, w.Version);
            }
            Fail($"the holder of range {range.Index} ({range.Worker}) closed its link");
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested) { }
        catch (Exception e) when (e is IOException or ProtocolException or ObjectDisposedException)
        {
            Fail($"the link to the holder of range {range.Index} ({range.Worker}) failed: {e.Message}");
        }
    }

    void Advance(int range, long version)
    {
        lock (gate)
        {
            versions[range] = Math.Max(versions[range], version);
            if (arrival != null) arrival.Advance(PrefixAt(arrivalVersion));
        }
        advanced.Pulse();
    }

    /// <summary>Part of a range has landed: the forward may read it if every range before it is in.</summary>
    void Landing(ShardPlacement range, long version, long values)
    {
        lock (gate)
            if (arrival != null && version == arrivalVersion && PrefixAt(version) == range.Offset) arrival.Advance(range.Offset + values);
    }

    /// <summary>Values [0, n) of the weights are at <paramref name="version"/>: n is the start of the first range that is not.</summary>
    long PrefixAt(long version)
    {
        for (int k = 0; k < versions.Length; k++)
            if (versions[k] < version) return layout.Ranges[k].Offset;
        return model.Parameters.Count;
    }

    void Fail(string why)
    {
        lock (gate)
        {
            linkFailure ??= why;
            arrival?.Fail(new ShardLinkException(why));
        }
        advanced.Pulse();
    }

    /// <summary>The weights of <paramref name="version"/> as they land, for a forward that starts before they are all in
    /// (each op waits for the values it reads); fails after <paramref name="patience"/> unless all are in by then.</summary>
    public WeightsArrival ArrivalOf(long version, TimeSpan patience)
    {
        var watched = new WeightsArrival();
        lock (gate)
        {
            (arrival, arrivalVersion) = (watched, version);
            watched.Advance(PrefixAt(version));
            if (linkFailure != null) watched.Fail(new ShardLinkException(linkFailure));
        }
        _ = Task.Delay(patience).ContinueWith(_ =>
        {
            lock (gate)
                if (PrefixAt(version) < model.Parameters.Count)
                    watched.Fail(new ShardLinkException($"the weights of version {version} did not all come within {patience.TotalSeconds:F0} s"));
        }, TaskScheduler.Default);
        return watched;
    }

    /// <summary>Waits until every range of this worker's weights has <paramref name="version"/> updates.</summary>
    public async Task WeightsAsync(long version, TimeSpan patience, CancellationToken cancel)
    {
        var complete = await advanced.UntilAsync(gate, () =>
        {
            if (Array.TrueForAll(versions, v => v >= version)) return versions;
            if (linkFailure != null) throw new ShardLinkException(linkFailure);
            return null;
        }, patience, cancel);
        if (complete != null) return;
        int missing;
        lock (gate) missing = Math.Max(0, Array.FindIndex(versions, v => v < version));
        throw new ShardLinkException($"range {missing}'s weights of version {version} did not come from {layout.Ranges[missing].Worker} within {patience.TotalSeconds:F0} s");
    }

    public IReadOnlyList<ShardPlacement> Ranges => layout.Ranges;

    /// <summary>Range k of a share's gradient sum to range k's holder, for every k (this worker's own range stays here).</summary>
    public Task SendGradientsAsync(long step, int share, NativeBuffer grads, byte[]? narrowed, CancellationToken cancel) =>
        Task.WhenAll(layout.Ranges.Select(r => SendRangeAsync(step, share, grads, narrowed, r.Index, cancel)));

    /// <summary>Range <paramref name="k"/> of a share's gradient sum to its holder, in the run's dtype (landed here when it is
    /// this worker's own).</summary>
    public Task SendRangeAsync(long step, int share, NativeBuffer grads, byte[]? narrowed, int k, CancellationToken cancel)
    {
        var r = layout.Ranges[k];
        var payload = BucketUploader.Encode(grads, r.Offset, r.Length, dtype, narrowed);
        if (Holders.TryGetValue(k, out var holder)) return holder.LandLocalAsync(step, share, payload, dtype);
        var link = links[k]!;
        return Task.Run(async () =>
        {
            // A holder that is gone is the coordinator's to notice (it lays the shards out again and the step starts over).
            try { Count(step, await link.SendAsync(MessageKind.ShardGradients, new ShardGradients(layout.RunId, step, share, r.Offset, r.Length), cancel, payload), 0); }
            catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
            {
                Fail($"sending range {k} to its holder ({r.Worker}) failed: {e.Message}");
            }
        });
    }

    /// <summary>An admitted peer's connection to the range this worker holds: it receives the range after each update and
    /// sends its gradient ranges, until it closes.</summary>
    public async Task ServePeerAsync(FrameChannel peer, string peerName, int range, CancellationToken cancel)
    {
        if (!Holders.TryGetValue(range, out var holder)) return;
        var served = new TaskCompletionSource();
        lock (gate)
        {
            inbound.Add(peer);
            loops.Add(served.Task);
        }
        holder.Subscribe(peer, peerName);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancel, closing.Token);
        try
        {
            await peer.SendAsync(MessageKind.ShardReady, new ShardReady(layout.RunId, layout.LayoutId), stop.Token); // admitted
            while (await peer.ReceiveAsync(stop.Token) is { } frame)
            {
                if (frame.Kind == MessageKind.ShardGradients)
                {
                    var header = frame.Read<ShardGradients>();
                    Count(header.Step, 0, frame.Size);
                    if (header.RunId != layout.RunId) throw new ProtocolException($"gradients for run {Untrusted.Quote(header.RunId, Untrusted.IdLength)}");
                    await holder.LandAsync(peer, header, frame.PayloadLength, dtype, stop.Token);
                }
                else await peer.SkipPayloadAsync(frame.PayloadLength, stop.Token);
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested) { }
        catch (Exception e) when (e is IOException or ProtocolException or ObjectDisposedException)
        {
            log($"{name}: peer link from {Untrusted.Escape(peerName, Untrusted.IdLength)} failed: {e.Message}");
        }
        finally
        {
            holder.Unsubscribe(peer);
            served.SetResult();
        }
    }

    void Count(long step, long sent, long received)
    {
        lock (peerBytes)
        {
            var (s, r) = peerBytes.GetValueOrDefault(step);
            peerBytes[step] = (s + sent, r + received);
        }
    }

    /// <summary>Peer-plane bytes (sent, received) of step <paramref name="step"/>: its gradient ranges out, the held range's
    /// shares in, and its update's ranges in and out, complete once every worker has the weights the next step needs.
    /// Forgets that step and the ones before.</summary>
    public (long Sent, long Received) TakePeerBytes(long step)
    {
        lock (peerBytes)
        {
            var bytes = peerBytes.GetValueOrDefault(step);
            foreach (var old in peerBytes.Keys.Where(s => s <= step).ToList()) peerBytes.Remove(old);
            return bytes;
        }
    }

    public async ValueTask DisposeAsync()
    {
        closing.Cancel();
        foreach (var link in links) if (link != null) await link.DisposeAsync();
        Task[] running;
        lock (gate) running = loops.ToArray();
        try { await Task.WhenAll(running); } catch { /* each loop reported its own end */ }
        foreach (var h in Holders.Values) h.Dispose();
        foreach (var r in Replicas.Values) r.Dispose();
        closing.Dispose();
    }
}

/// <summary>A link of the peer plane failed (its holder is gone, most likely): the share is abandoned, and the coordinator
/// lays the shards out again.</summary>
public sealed class ShardLinkException(string message) : Exception(message);

/// <summary>Sends a share's gradient ranges to their holders while the backward still runs: the buckets of the gradient
/// buffer become final from its end to its start (GradientBuckets' plan order), so range k goes out as soon as the
/// buckets down to its first value are in, the last range first.</summary>
public sealed class RangeUpload(ShardedWorker shards, long step, int share, NativeBuffer grads, byte[]? narrowed, IReadOnlyList<GradientBucket> plan)
{
    readonly System.Threading.Channels.Channel<int> ready = System.Threading.Channels.Channel.CreateUnbounded<int>(new() { SingleReader = true });

    /// <summary>Called from a compute thread: the bucket's range of the gradients is final.</summary>
    public void Ready(GradientBucket bucket) => ready.Writer.TryWrite(bucket.Index);

    /// <summary>The computation failed: stop waiting for buckets.</summary>
    public void Abandon(Exception error) => ready.Writer.TryComplete(error);

    public async Task RunAsync(CancellationToken cancel)
    {
        var sends = new List<Task>();
        var arrived = new bool[plan.Count];
        int contiguous = 0, next = shards.Ranges.Count - 1;
        long covered = grads.Length; // [covered, end) is final
        while (next >= 0)
        {
            if (contiguous < plan.Count)
            {
                arrived[await ready.Reader.ReadAsync(cancel)] = true;
                while (contiguous < plan.Count && arrived[contiguous]) covered = plan[contiguous++].Offset;
            }
            else covered = 0;
            for (; next >= 0 && covered <= shards.Ranges[next].Offset; next--) sends.Add(shards.SendRangeAsync(step, share, grads, narrowed, next, cancel));
        }
        await Task.WhenAll(sends);
    }
}
