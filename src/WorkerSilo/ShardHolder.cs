using System.Runtime.InteropServices;
using DistGpt.Contracts;
using DistGpt.Contracts.Wire;
using DistGpt.Model.Engine;
using DistGpt.Model.Training;

namespace DistGpt.WorkerSilo;

/// <summary>One parameter range held by this worker silo: the range's AdamW moments (its master weights are this worker's
/// own model weights there), a buffer per share of the step's batch for range k of that share's gradient sum, and the
/// peers its updated range goes to. Shares are added up in share order once all are in, as the unsharded coordinator
/// does, so the sum, the norm's chunk squares and the update have the unsharded bits.</summary>
public sealed class ShardHolder : IDisposable
{
    enum Slot { Empty, Landing, Full }

    readonly ShardRange range;
    readonly NativeBuffer sum;
    readonly NativeBuffer[] shares;
    readonly NativeBuffer[] shareViews; // the share buffers indexed by parameter, as SumRangeWithSquares reads them
    readonly Slot[] slots;
    readonly FlatParameters view;       // the model's weights, with this range's gradient sum in place of its gradients
    readonly AdamW optimizer;
    readonly NativeBuffer weights;
    readonly string runId;
    readonly Func<ShardNorm, Task> report;
    readonly Action<string> log;
    readonly object gate = new();
    readonly List<FrameChannel> subscribers = new();
    readonly string? replicaName;
    readonly long layoutId;
    FrameChannel? replica;
    bool summed;

    public ShardRange Range => range;
    /// <summary>Updates applied to the range.</summary>
    public long Version { get; private set; }
    public long StepCount => optimizer.StepCount;
    public NativeBuffer ExpAvg => optimizer.ExpAvg;
    public NativeBuffer ExpAvgSq => optimizer.ExpAvgSq;
    /// <summary>Called with the new version after each update (this worker's own copy of the range is updated in place).</summary>
    public Action<long>? Updated { get; init; }
    /// <summary>Called with a step and the bytes of a frame that carried its updated range to a peer.</summary>
    public Action<long, long>? Sent { get; init; }

    public ShardHolder(Model.Gpt model, ShardLayout layout, int held, Func<ShardNorm, Task> report, Action<string> log)
    {
        var placement = layout.Ranges[held];
        runId = layout.RunId;
        range = new ShardRange(placement.Index, placement.Offset, placement.Length);
        replicaName = placement.Replica;
        layoutId = layout.LayoutId;
        (this.report, this.log) = (report, log);
        weights = model.Parameters.Values;
        long count = model.Parameters.Count;
        sum = new NativeBuffer(range.Length);
        shares = Enumerable.Range(0, layout.Shares).Select(_ => new NativeBuffer(range.Length)).ToArray();
        shareViews = shares.Select(s => RangeViews.IndexedFrom(s, range.Offset, count)).ToArray();
        slots = new Slot[layout.Shares];
        var o = layout.Optimizer;
        view = new FlatParameters(Model.Gpt.Layout(model.Config), n => RangeViews.IndexedFrom(weights, 0, n), n => RangeViews.IndexedFrom(sum, range.Offset, n));
        optimizer = new AdamW(view, o.Beta1, o.Beta2, o.WeightDecay, o.Eps, range) { StepCount = o.StepCount };
        Version = layout.WeightsVersion;
    }

    /// <summary>The range's moments, as the layout's payload brings them.</summary>
    public Memory<byte> MomentBytes(bool second) => NativeMemoryManager.Bytes(second ? optimizer.ExpAvgSq : optimizer.ExpAvg);

    /// <summary>A peer that receives the range after every update (and its sum before, when it keeps the range's replica).</summary>
    public void Subscribe(FrameChannel peer, string name)
    {
        lock (gate)
        {
            subscribers.Add(peer);
            if (name == replicaName) replica = peer;
        }
    }

    public void Unsubscribe(FrameChannel peer)
    {
        lock (gate)
        {
            subscribers.Remove(peer);
            if (replica == peer) replica = null;
        }
    }

    public IReadOnlyList<FrameChannel> Subscribers { get { lock (gate) return subscribers.ToArray(); } }

    /// <summary>Claims share <paramref name="share"/> of <paramref name="step"/> for landing; false when it is not wanted
    /// (another step, or already in: a recomputed share has the same bits).</summary>
    bool Claim(long step, int share)
    {
        lock (gate)
        {
            if (step != Version + 1 || share < 0 || share >= slots.Length || slots[share] != Slot.Empty) return false;
            slots[share] = Slot.Landing;
            return true;
        }
    }

    /// <summary>Range k of a share's gradient sum from a peer: read straight into the share's buffer when wanted, else skipped.</summary>
    public async Task LandAsync(FrameChannel peer, ShardGradients header, long payloadLength, WireDType dtype, CancellationToken cancel)
    {
        if (header.Offset != range.Offset || header.Count != range.Length || payloadLength != range.Length * dtype.Size())
            throw new ProtocolException($"gradient range [{header.Offset}, {header.Offset + header.Count}) of {payloadLength} bytes for the holder of [{range.Offset}, {range.End})");
        if (!Claim(header.Step, header.Share))
        {
            await peer.SkipPayloadAsync(payloadLength, cancel);
            return;
        }
        bool finite;
        try { finite = await peer.ReadGradientPayloadAsync(NativeMemoryManager.Bytes(shares[header.Share]), dtype, cancel); }
        catch
        {
            lock (gate) slots[header.Share] = Slot.Empty;
            throw;
        }
        await LandedAsync(header.Step, header.Share, finite);
    }

    /// <summary>This worker's own share: range k of its gradient sum as it would go on the wire (<paramref name="encoded"/>,
    /// in the run's dtype, so a bfloat16 run rounds it as every other share), landed (and checked) without leaving the process.</summary>
    public Task LandLocalAsync(long step, int share, ReadOnlyMemory<byte> encoded, WireDType dtype)
    {
        if (!Claim(step, share)) return Task.CompletedTask;
        bool finite;
        if (dtype == WireDType.Fp32) finite = GradientOps.CopyAllFinite(MemoryMarshal.Cast<byte, float>(encoded.Span), shares[share].Span);
        else
        {
            BFloat16.Widen(MemoryMarshal.Cast<byte, ushort>(encoded.Span), shares[share].Span);
            finite = GradientOps.AllFinite(shares[share].Span);
        }
        return LandedAsync(step, share, finite);
    }

    async Task LandedAsync(long step, int share, bool finite)
    {
        ShardNorm? norm = null;
        lock (gate)
        {
            slots[share] = finite ? Slot.Full : Slot.Empty;
            if (!finite) norm = new ShardNorm(runId, layoutId, step, range.Index, [], [share]);
            else if (!summed && slots.All(s => s == Slot.Full))
            {
                var squares = new double[GradientOps.NormChunks(range.Length)];
                var whole = RangeViews.IndexedFrom(sum, range.Offset, range.End);
                bool sumFinite = GradientOps.SumRangeWithSquares(whole, shareViews, shares.Length, range.Offset, range.Length, squares);
                summed = true;
                norm = new ShardNorm(runId, layoutId, step, range.Index, sumFinite ? squares : [], Overflowed: !sumFinite);
            }
        }
        if (norm == null) return;
        if (norm.ChunkSquares.Length > 0) await ForwardSumAsync(step);
        await report(norm);
    }

    /// <summary>The step's sum to the replica, before the norm report: the coordinator's go for the update then finds it there.
    /// A replica that is gone is not waited for (the coordinator lays the shards out again).</summary>
    async Task ForwardSumAsync(long step)
    {
        FrameChannel? to;
        lock (gate) to = replica;
        if (to == null) return;
        try { Sent?.Invoke(step, await to.SendAsync(MessageKind.ShardSum, new ShardSum(runId, step, range.Offset, range.Length), CancellationToken.None, NativeMemoryManager.Bytes(sum))); }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
        {
            log($"sending range {range.Index}'s sum to its replica failed: {e.Message}");
        }
    }

    /// <summary>Step <paramref name="step"/>'s update of the range, then the range to every subscriber (not awaited here:
    /// the returned task ends when all have it).</summary>
    public Task Apply(ShardUpdate update)
    {
        lock (gate)
        {
            if (update.Step != Version + 1 || !summed)
                throw new ProtocolException($"update for step {update.Step} at a holder of version {Version}{(summed ? "" : " whose shares are not all in")}");
            optimizer.Step(update.Lr, update.GradScale);
            Version = update.Step;
            summed = false;
            Array.Fill(slots, Slot.Empty);
        }
        Updated?.Invoke(Version);
        var payload = NativeMemoryManager.Bytes(weights, range.Offset, range.Length);
        var header = new ShardWeights(runId, Version, range.Offset, range.Length);
        var peers = Subscribers;
        // Counted as they start: a peer's step report must not depend on how far these sends have got.
        Sent?.Invoke(header.Version, peers.Count * FrameChannel.FrameSize(header, payload.Length));
        return Task.WhenAll(peers.Select(async peer =>
        {
            try { await peer.SendAsync(MessageKind.ShardWeights, header, CancellationToken.None, payload); }
            catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
            {
                log($"sending range {range.Index} to a peer failed: {e.Message}");
                Unsubscribe(peer);
            }
        }));
    }

    public void Dispose()
    {
        optimizer.Dispose();
        view.Dispose(); // views only
        sum.Dispose();
        foreach (var s in shares) s.Dispose();
    }
}
