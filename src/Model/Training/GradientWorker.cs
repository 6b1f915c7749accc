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
public sealed class GradientWorker : IDisposable
{
    readonly Gpt model;
    readonly ushort[] trainData;
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

    /// <param name="replicas">graphs the slice is cut into; default one per core (Compute.Threads), at most one per sequence.</param>
    public GradientWorker(Gpt model, ushort[] trainData, ulong seed, int sequences, int? replicas = null)
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

    /// <summary>The first replica's graph (the largest; all of the slice when there is one replica), e.g. for evaluation.</summary>
    public GptGraph Graph => replicas[0].Graph;

    /// <summary>The dropout key of a step: the same on every worker, so masks depend only on (seed, step, sequence).</summary>
    public static ulong DropoutKey(ulong seed, long step) => Rng.Key(seed, 0xd409, (ulong)step);

    /// <summary>Zeroes the gradients, then forward + backward on sequences [first, first + Sequences) of step's batch.</summary>
    public GradientSum Compute(long step, long first, Action<string>? phase = null)
    {
        foreach (var r in replicas)
            BatchSampler.Fill(trainData, seed, DataSplit.Train, step, first + r.Offset, r.Graph.Batch, model.Config.BlockSize, r.Graph.Tokens, r.Graph.Targets);
        return Run(step, first, phase);
    }

    /// <summary>As <see cref="Compute"/>, on token windows given by the coordinator (Sequences × (block + 1) ids).</summary>
    public GradientSum ComputeOnWindows(long step, long first, ReadOnlySpan<int> windows, Action<string>? phase = null)
    {
        int t = model.Config.BlockSize;
        if (windows.Length != Sequences * (t + 1)) throw new ArgumentException($"expected {Sequences * (t + 1)} window tokens, got {windows.Length}");
        foreach (int id in windows)
            if ((uint)id >= (uint)model.Config.VocabSize) throw new ArgumentException($"token id {id} is outside the vocabulary");
        foreach (var r in replicas)
            for (int b = 0; b < r.Graph.Batch; b++)
            {
                var window = windows.Slice((r.Offset + b) * (t + 1), t + 1);
                window[..t].CopyTo(r.Graph.Tokens.AsSpan(b * t, t));
                window[1..].CopyTo(r.Graph.Targets.AsSpan(b * t, t));
            }
        return Run(step, first, phase);
    }

    GradientSum Run(long step, long first, Action<string>? phase)
    {
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
            DistGpt.Model.Compute.For(replicas.Length, i => replicas[i].Graph.Forward());
        }
        phase?.Invoke("backward");
        using (TrainingTelemetry.Start("run backward", step))
        {
            DistGpt.Model.Compute.For(replicas.Length, i =>
            {
                replicas[i].Grads.Clear();
                replicas[i].Graph.Backward(1f);
            });
            GradientOps.SumInOrder(model.Parameters.Grads, replicaGrads, replicas.Length); // replica 0's buffer is the model's
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

    public void Dispose()
    {
        foreach (var r in replicas) r.Dispose();
    }
}
