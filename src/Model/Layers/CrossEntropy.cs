using System.Runtime.Intrinsics;
using DistGpt.Model.Engine;
using Tensor = DistGpt.Model.Engine.Tensor;

namespace DistGpt.Model.Layers;

/// <summary>Fused log-softmax + negative log-likelihood over rows of logits (N, V).
/// Forward leaves the per-token losses; backward seeds dlogits = (softmax - onehot) * LossScale,
/// where LossScale is 1/N for a mean loss or 1 for a gradient sum that a coordinator averages later.
/// Rows are independent, so both passes run row-parallel with 8-wide exp. No probabilities are kept: forward keeps
/// each row's log-sum-exp, backward recomputes exp(logit - lse) straight into dlogits. As the logits' only consumer
/// (<c>soleConsumer</c>) it assigns dlogits, so their gradient may be the logits' own buffer (the model's: at GPT-2's
/// vocabulary the (B*T, V) logits are the largest tensor, and a second one for their gradient would double that).</summary>
public sealed unsafe class CrossEntropy : Op
{
    readonly Tensor logits;
    readonly int[] targets;
    readonly float* lse, losses;
    readonly int n, v, chunks;
    readonly bool assign;

    public CrossEntropy(Graph g, Tensor logits, int[] targets, bool soleConsumer = false)
    {
        (this.logits, this.targets, assign) = (logits, targets, soleConsumer);
        if (soleConsumer) logits.GradAssignedByConsumer = true;
        n = logits.Rows;
        v = logits.LastDim;
        lse = g.Allocate(n).Pointer;
        losses = g.Allocate(n).Pointer;
        chunks = RowChunks.Count(n, 32);
    }

    public float LossScale { get; set; } = 1f;

    /// <summary>Sum of the per-token losses of the last forward, accumulated in double.</summary>
    public double LossSum() => LossSum(n);

    /// <summary>Sum of the per-token losses of the first <paramref name="rows"/> tokens of the last forward.</summary>
    public double LossSum(int rows)
    {
        double s = 0;
        for (int i = 0; i < rows; i++) s += losses[i];
        return s;
    }

    public int Tokens => n;

    public override void Forward(StepContext step) => Compute.For(chunks, chunk =>
    {
        var (start, end) = RowChunks.Range(chunk, chunks, n);
        int full = v & ~7;
        for (int r = start; r < end; r++)
        {
            float* row = logits.Data + (long)r * v;
            float max = System.Numerics.Tensors.TensorPrimitives.Max(new ReadOnlySpan<float>(row, v));
            var vm = Vector256.Create(max);
            var acc = Vector256<float>.Zero;
            int j = 0;
            for (; j < full; j += 8) acc += VectorMath.Exp(Vector256.Load(row + j) - vm);
            float sum = Vector256.Sum(acc);
            for (; j < v; j++) sum += MathF.Exp(row[j] - max);
            float l = max + MathF.Log(sum);
            lse[r] = l;
            losses[r] = l - row[targets[r]];
        }
    });

    public override void Backward(StepContext step)
    {
        float scale = LossScale;
        Compute.For(chunks, chunk =>
        {
            var (start, end) = RowChunks.Range(chunk, chunks, n);
            var vs = Vector256.Create(scale);
            for (int r = start; r < end; r++)
            {
                float* row = logits.Data + (long)r * v, d = logits.Grad + (long)r * v;
                float l = lse[r];
                var vl = Vector256.Create(l);
                int j = 0;
                if (assign) // row and d may be the same memory: each element is read before it is written
                {
                    for (; j + 8 <= v; j += 8) (VectorMath.Exp(Vector256.Load(row + j) - vl) * vs).Store(d + j);
                    for (; j < v; j++) d[j] = MathF.Exp(row[j] - l) * scale;
                }
                else
                {
                    for (; j + 8 <= v; j += 8)
                        Vector256.FusedMultiplyAdd(VectorMath.Exp(Vector256.Load(row + j) - vl), vs, Vector256.Load(d + j)).Store(d + j);
                    for (; j < v; j++) d[j] += MathF.Exp(row[j] - l) * scale;
                }
                d[targets[r]] -= scale;
            }
        });
    }
}
