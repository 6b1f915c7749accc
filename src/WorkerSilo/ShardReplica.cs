using DistGpt.Contracts;
using DistGpt.Contracts.Wire;
using DistGpt.Model.Engine;
using DistGpt.Model.Training;

namespace DistGpt.WorkerSilo;

/// <summary>The replica of another worker's parameter range: its own copy of the range's weights and AdamW moments, to which
/// it applies every update the holder applies, from the holder's own gradient sum (sent here before the holder reports its
/// norm) and the coordinator's go, so the bits stay the holder's. If the holder is lost, the coordinator gathers the range
/// from here.</summary>
public sealed class ShardReplica : IDisposable
{
    readonly ShardRange range;
    readonly NativeBuffer weights, sum;
    readonly FlatParameters view;
    readonly AdamW optimizer;
    readonly object gate = new();
    long summedStep = -1;
    ShardUpdate? waiting;
    readonly ChangeSignal advanced = new();

    public ShardRange Range => range;
    /// <summary>Updates applied to the copy.</summary>
    public long Version { get; private set; }
    public long StepCount => optimizer.StepCount;

    public ShardReplica(Model.Gpt model, ShardLayout layout, int replicated)
    {
        var placement = layout.Ranges[replicated];
        range = new ShardRange(placement.Index, placement.Offset, placement.Length);
        weights = new NativeBuffer(range.Length);
        sum = new NativeBuffer(range.Length);
        long count = model.Parameters.Count;
        view = new FlatParameters(Model.Gpt.Layout(model.Config), n => RangeViews.IndexedFrom(weights, range.Offset, n), n => RangeViews.IndexedFrom(sum, range.Offset, n));
        var o = layout.Optimizer;
        optimizer = new AdamW(view, o.Beta1, o.Beta2, o.WeightDecay, o.Eps, range) { StepCount = o.StepCount };
        Version = layout.WeightsVersion;
    }

    /// <summary>Where the layout's payload puts the copy's starting weights (the caller copies them from the whole weights).</summary>
    public Memory<byte> WeightBytes => NativeMemoryManager.Bytes(weights);
    public Memory<byte> MomentBytes(bool second) => NativeMemoryManager.Bytes(second ? optimizer.ExpAvgSq : optimizer.ExpAvg);

    /// <summary>The holder's sum for a step, from its link; skipped unless it is the next step's.</summary>
    public async Task LandSumAsync(FrameChannel link, ShardSum header, long payloadLength, CancellationToken cancel)
    {
        if (header.Offset != range.Offset || header.Count != range.Length || payloadLength != range.Length * sizeof(float))
            throw new ProtocolException($"gradient sum [{header.Offset}, {header.Offset + header.Count}) of {payloadLength} bytes for the replica of [{range.Offset}, {range.End})");
        lock (gate)
            if (header.Step != Version + 1) header = header with { Step = -1 };
        if (header.Step < 0)
        {
            await link.SkipPayloadAsync(payloadLength, cancel);
            return;
        }
        await link.ReadPayloadAsync(NativeMemoryManager.Bytes(sum), cancel);
        lock (gate) summedStep = header.Step;
        TryApply();
    }

    /// <summary>The coordinator's go for a step: applied as soon as the holder's sum for it is in.</summary>
    public void Update(ShardUpdate update)
    {
        lock (gate)
        {
            if (update.Step != Version + 1) throw new ProtocolException($"update for step {update.Step} at a replica of version {Version}");
            waiting = update;
        }
        TryApply();
    }

    void TryApply()
    {
        lock (gate)
        {
            if (waiting is not { } update || summedStep != update.Step) return;
            optimizer.Step(update.Lr, update.GradScale);
            Version = update.Step;
            waiting = null;
        }
        advanced.Pulse();
    }

    /// <summary>Waits (bounded) until the copy has <paramref name="version"/> updates.</summary>
    public async Task WaitForAsync(long version, TimeSpan patience, CancellationToken cancel)
    {
        if (await advanced.UntilAsync(gate, () => Version >= version ? this : null, patience, cancel) == null)
            throw new ProtocolException($"the replica of range {range.Index} is at version {Version}, not {version}, after {patience.TotalSeconds:F0} s");
    }

    public void Dispose()
    {
        optimizer.Dispose();
        view.Dispose(); // views only
        weights.Dispose();
        sum.Dispose();
    }
}

static class RangeViews
{
    /// <summary>A view of <paramref name="buffer"/> that puts its first value at index <paramref name="first"/>, for code
    /// that indexes by parameter (only [first, first + buffer.Length) may be touched). Range offsets are whole norm chunks,
    /// so the view keeps the buffer's 64-byte alignment.</summary>
    public static unsafe NativeBuffer IndexedFrom(NativeBuffer buffer, long first, long length) => NativeBuffer.Over(buffer.Pointer - first, length);
}
