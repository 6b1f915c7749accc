using DistGpt.Model.Data;
using DistGpt.Model.Engine;

namespace DistGpt.Model.Training;

/// <summary>The loss and token count behind a gradient sum.</summary>
public readonly record struct GradientSum(double LossSum, long Tokens)
{
    public float MeanLoss => (float)(LossSum / Tokens);
}

/// <summary>Computes the gradient SUM (not mean) over a contiguous slice of a step's global batch into the model's
/// flat gradient buffer. The single-process trainer runs it on the whole batch; a worker silo on its shard.</summary>
public sealed class GradientWorker : IDisposable
{
    readonly Gpt model;
    readonly ushort[] trainData;
    readonly ulong seed;
    readonly GptGraph graph;

    public GradientWorker(Gpt model, ushort[] trainData, ulong seed, int sequences)
    {
        (this.model, this.trainData, this.seed) = (model, trainData, seed);
        Sequences = sequences;
        graph = model.Build(sequences, model.Config.BlockSize, withGrad: true);
    }

    public int Sequences { get; }
    public GptGraph Graph => graph;

    /// <summary>The dropout key of a step: the same on every worker, so masks depend only on (seed, step, sequence).</summary>
    public static ulong DropoutKey(ulong seed, long step) => Rng.Key(seed, 0xd409, (ulong)step);

    /// <summary>Zeroes the gradients, then forward + backward on sequences [first, first + Sequences) of step's batch.</summary>
    public GradientSum Compute(long step, long first, Action<string>? phase = null)
    {
        BatchSampler.Fill(trainData, seed, DataSplit.Train, step, first, Sequences, model.Config.BlockSize, graph.Tokens, graph.Targets);
        return Run(step, first, phase);
    }

    /// <summary>As <see cref="Compute"/>, on token windows given by the coordinator (Sequences × (block + 1) ids).</summary>
    public GradientSum ComputeOnWindows(long step, long first, ReadOnlySpan<int> windows, Action<string>? phase = null)
    {
        int t = model.Config.BlockSize;
        if (windows.Length != Sequences * (t + 1)) throw new ArgumentException($"expected {Sequences * (t + 1)} window tokens, got {windows.Length}");
        for (int b = 0; b < Sequences; b++)
        {
            windows.Slice(b * (t + 1), t).CopyTo(graph.Tokens.AsSpan(b * t, t));
            windows.Slice(b * (t + 1) + 1, t).CopyTo(graph.Targets.AsSpan(b * t, t));
        }
        foreach (int id in windows)
            if ((uint)id >= (uint)model.Config.VocabSize) throw new ArgumentException($"token id {id} is outside the vocabulary");
        return Run(step, first, phase);
    }

    GradientSum Run(long step, long first, Action<string>? phase)
    {
        model.Parameters.ZeroGrads();
        graph.Step.Training = true;
        graph.Step.DropoutKey = DropoutKey(seed, step);
        graph.Step.FirstSequence = first;
        phase?.Invoke("forward");
        using (TrainingTelemetry.Start("run forward", step)) graph.Forward();
        phase?.Invoke("backward");
        using (TrainingTelemetry.Start("run backward", step)) graph.Backward(1f);
        return new GradientSum(graph.Loss.LossSum(), graph.Loss.Tokens);
    }

    public void Dispose() => graph.Dispose();
}
