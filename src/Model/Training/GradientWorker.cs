using DistGpt.Model.Data;
using DistGpt.Model.Engine;

namespace DistGpt.Model.Training;

/// <summary>The loss and token count behind a gradient sum.</summary>
public readonly record struct GradientSum(double LossSum, long Tokens)
{
    public float MeanLoss => (float)(LossSum / Tokens);
}

/// <summary>Computes the gradient SUM (not mean) over a contiguous slice of a step's global batch into the model's
/// flat gradient buffer. The single-process trainer runs it on the whole batch; a worker silo on its shard.
/// With several cores the slice is cut into one replica per core (data parallelism inside the process): each replica
/// runs its rows' forward and backward alone on its core, with single-core kernels and its own gradient buffer, and the
/// buffers are added in replica order. No fork/join per op, and every op runs on both cores, not just the matmuls.</summary>
public sealed class GradientWorker : IGradientComputer
{
    readonly Gpt model;
    readonly TokenSplit trainData;
    readonly ulong seed;
    readonly Replica[] replicas;
    readonly NativeBuffer[] replicaGrads;

    /// <summary>Rows [Offset, Offset + Graph.Batch) of the slice; replica 0 accumulates into the model's own gradients.</summary>
    sealed class Replica(GptGraph graph, int offset, NativeBuffer grads, bool ownsGrads) : IDisposable
    {
        public GptGraph Graph { get; } = graph;
        public int Offset { get; } = offset;
        public NativeBuffer Grads { get; } = grads;

        public void Dispose()
        {
            Graph.Dispose();
            if (ownsGrads) Grads.Dispose();
        }
    }

    /// <param name="replicas">graphs the slice is cut into; default one per core (Compute.Threads), at most one per sequence.
    /// The sum depends on the slice and this count only, not on the cores that run the replicas (each matmul element is
    /// one chain whatever the split, row reductions use <see cref="Engine.RowChunks"/>), so workers told the same count
    /// give the same bits.</param>
    public GradientWorker(Gpt model, TokenSplit trainData, ulong seed, int sequences, int? replicas = null)
    {
        (this.model, this.trainData, this.seed) = (model, trainData, seed);
        Sequences = sequences;
        int n = Math.Clamp(replicas ?? DistGpt.Model.Compute.Threads, 1, Math.Max(1, sequences));
        this.replicas = new Replica[n];
        for (int r = 0, offset = 0; r < n; r++)
        {
            int count = sequences / n + (r < sequences % n ? 1 : 0);
            var grads = r == 0 ? model.Parameters.Grads : new NativeBuffer(model.Parameters.Count);
            this.replicas[r] = new Replica(model.Build(count, model.Config.BlockSize, withGrad: true, grads: grads), offset, grads, ownsGrads: r > 0);
            offset += count;
        }
        replicaGrads = this.replicas.Select(r => r.Grads).ToArray();
    }

    public int Sequences { get; }

    IReadOnlyList<GradientBucket> buckets = [];
    long bucketCap;
    GradientBucket[][] bucketsAfterOp = [];
    int[] arrivals = [];
    Action<GradientBucket>? bucketReady;
    Action<int>? afterOp;

    /// <summary>Cuts the gradient buffer into buckets of about <paramref name="capFloats"/> values (see
    /// <see cref="GradientBuckets"/>) for <see cref="Compute"/>'s bucketReady; returns them in the order they complete
    /// (planned once per cap).</summary>
    public IReadOnlyList<GradientBucket> UseBuckets(long capFloats)
    {
        if (capFloats == bucketCap) return buckets;
        bucketCap = capFloats;
        var graph = replicas[0].Graph.Graph;
        buckets = GradientBuckets.Plan(model.Parameters, graph, capFloats);
        bucketsAfterOp = Enumerable.Range(0, graph.Ops.Count).Select(op => buckets.Where(b => b.CompleteAfterOp == op).ToArray()).ToArray();
        arrivals = new int[buckets.Count];
        afterOp = AfterOp;
        return buckets;
    }

    /// Called by each replica as its backward passes an op: the replica that completes a bucket last adds the replicas'
    /// ranges of it (in replica order, as the whole-buffer sum would) and hands it on.
    void AfterOp(int op)
    {
        foreach (var b in bucketsAfterOp[op])
        {
            if (Interlocked.Increment(ref arrivals[b.Index]) != replicas.Length) continue;
            GradientOps.SumRange(model.Parameters.Grads, replicaGrads, replicas.Length, b.Offset, b.Count);
            bucketReady!(b);
        }
    }

    /// <summary>The first replica's graph (the largest; all of the slice when there is one replica), e.g. for evaluation.</summary>
    public GptGraph Graph => replicas[0].Graph;

    /// <summary>The dropout key of a step: the same on every worker, so masks depend only on (seed, step, sequence).</summary>
    public static ulong DropoutKey(ulong seed, long step) => Rng.Key(seed, 0xd409, (ulong)step);

    /// <summary>Zeroes the gradients, then forward + backward on sequences [first, first + Sequences) of step's batch.
    /// With <paramref name="bucketReady"/> (after <see cref="UseBuckets"/>), each bucket is handed to it, from a compute
    /// thread, as soon as its range of the model's gradients holds the final sum, while the backward goes on.
    /// With <paramref name="weights"/>, the model's weights are still arriving: each op of the forward waits for the ones
    /// it reads.</summary>
    public GradientSum Compute(long step, long first, Action<string>? phase = null, Action<GradientBucket>? bucketReady = null,
        WeightsArrival? weights = null)
    {
        foreach (var r in replicas)
            BatchSampler.Fill(trainData, seed, DataSplit.Train, step, first + r.Offset, r.Graph.Batch, model.Config.BlockSize, r.Graph.Tokens, r.Graph.Targets);
        return Run(step, first, phase, bucketReady, weights);
    }

    /// <summary>As <see cref="Compute"/>, on token windows given by the coordinator (Sequences × (block + 1) ids).</summary>
    public GradientSum ComputeOnWindows(long step, long first, ReadOnlySpan<int> windows, Action<string>? phase = null,
        Action<GradientBucket>? bucketReady = null)
    {
        int t = model.Config.BlockSize;
        BatchSampler.CheckWindows(windows, Sequences, t, model.Config.VocabSize);
        foreach (var r in replicas) BatchSampler.FillFromWindows(windows, r.Offset, r.Graph.Batch, t, r.Graph.Tokens, r.Graph.Targets);
        return Run(step, first, phase, bucketReady, null);
    }

    long[]? weightsNeeded; // per op: the values [0, n) of the flat weights its forward reads

    GradientSum Run(long step, long first, Action<string>? phase, Action<GradientBucket>? ready, WeightsArrival? weights)
    {
        if (ready != null && afterOp == null) throw new InvalidOperationException("bucketReady needs UseBuckets first");
        this.bucketReady = ready;
        if (ready != null) Array.Clear(arrivals);
        foreach (var r in replicas)
        {
            r.Graph.Step.Training = true;
            r.Graph.Step.DropoutKey = DropoutKey(seed, step);
            r.Graph.Step.FirstSequence = first + r.Offset;
        }
        phase?.Invoke("forward");
        using (TrainingTelemetry.Start("run forward", step))
        {
            // One replica runs inline on the caller, whose kernels then use every core.
            Action<int>? waitForWeights = null;
            if (weights != null)
            {
                var needed = weightsNeeded ??= WeightsNeeded();
                waitForWeights = op => weights.WaitFor(needed[op]);
            }
            // The loss op, last, computes the loss's gradient (a sum: scale 1) in the forward, so the gradients are zeroed
            // just before it: after every other op has waited for its weights, where the backward used to zero them, so
            // the buffer holds the last step's sum for as long as it did before (dev mode's coordinator reads it in place).
            int lossOp = replicas[0].Graph.Graph.Ops.Count - 1;
            DistGpt.Model.Compute.For(replicas.Length, i => replicas[i].Graph.Forward(op =>
            {
                waitForWeights?.Invoke(op);
                if (op == lossOp) replicas[i].Grads.Clear();
            }, lossGradientScale: 1f));
        }
        phase?.Invoke("backward");
        using (TrainingTelemetry.Start("run backward", step))
        {
            var hook = ready == null ? null : afterOp;
            DistGpt.Model.Compute.For(replicas.Length, i => replicas[i].Graph.Backward(1f, hook));
            // replica 0's buffer is the model's; with buckets, each range was summed as it completed
            if (ready == null) GradientOps.SumInOrder(model.Parameters.Grads, replicaGrads, replicas.Length);
        }
        double lossSum = 0;
        long tokens = 0;
        foreach (var r in replicas)
        {
            lossSum += r.Graph.Loss.LossSum();
            tokens += r.Graph.Loss.Tokens;
        }
        return new GradientSum(lossSum, tokens);
    }

    /// For each op, how far into the flat weights its parameters reach.
    long[] WeightsNeeded()
    {
        var ops = replicas[0].Graph.Graph.Ops;
        return ops.Select(op => op.Parameters.Select(t => model.Parameters.Slot(t.Name)).Select(s => s.Offset + s.Length).DefaultIfEmpty(0).Max()).ToArray();
    }

    public void Dispose()
    {
        foreach (var r in replicas) r.Dispose();
    }
}
