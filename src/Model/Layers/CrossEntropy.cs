using System.Numerics.Tensors;
using DistGpt.Model.Engine;
using Tensor = DistGpt.Model.Engine.Tensor;

namespace DistGpt.Model.Layers;

/// <summary>Fused log-softmax + negative log-likelihood over rows of logits (N, V).
/// Forward leaves the per-token losses; backward seeds dlogits = (softmax - onehot) * LossScale,
/// where LossScale is 1/N for a mean loss or 1 for a gradient sum that a coordinator averages later.</summary>
public sealed unsafe class CrossEntropy : Op
{
    readonly Tensor logits;
    readonly int[] targets;
    readonly float* lse, losses;
    readonly int n, v;

    public CrossEntropy(Graph g, Tensor logits, int[] targets)
    {
        (this.logits, this.targets) = (logits, targets);
        n = logits.Rows;
        v = logits.LastDim;
        lse = g.Allocate(n).Pointer;
        losses = g.Allocate(n).Pointer;
    }

    public float LossScale { get; set; } = 1f;

    /// <summary>Sum of the per-token losses of the last forward, accumulated in double.</summary>
    public double LossSum()
    {
        double s = 0;
        for (int i = 0; i < n; i++) s += losses[i];
        return s;
    }

    public int Tokens => n;

    public override void Forward(StepContext step)
    {
        for (int r = 0; r < n; r++)
        {
            var row = new ReadOnlySpan<float>(logits.Data + (long)r * v, v);
            float max = TensorPrimitives.Max(row);
            double sum = 0;
            for (int j = 0; j < v; j++) sum += MathF.Exp(row[j] - max);
            float l = max + (float)Math.Log(sum);
            lse[r] = l;
            losses[r] = l - row[targets[r]];
        }
    }

    public override void Backward(StepContext step)
    {
        float scale = LossScale;
        for (int r = 0; r < n; r++)
        {
            float* row = logits.Data + (long)r * v, d = logits.Grad + (long)r * v;
            float l = lse[r];
            for (int j = 0; j < v; j++) d[j] += MathF.Exp(row[j] - l) * scale;
            d[targets[r]] -= scale;
        }
    }
}
