using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using DistGpt.Model.Engine;
using Tensor = DistGpt.Model.Engine.Tensor;

namespace DistGpt.Model.Layers;

/// <summary>The lm_head (logits = x Wᵀ, W tied to wte) fused with the mean/summed cross-entropy over block rows at a
/// time: the (N, V) logits never exist whole, only one (rows, V) block of them (at GPT-2's vocabulary they would be the
/// largest tensor by far: 2.5 GB for nanoGPT's 12 x 1024 batch). Forward keeps each row's loss; the gradient of a block
/// is softmax - onehot, written over that block's logits, from which dx (assigned: the op is x's only consumer) and
/// dW (accumulated) follow before the next block is computed.
///
/// When the caller announces the loss gradient's scale before the forward (<see cref="AnnounceGradient"/>), the
/// gradient is computed during the forward, while each block is still at hand; otherwise backward recomputes the blocks
/// (one more lm_head product). Blocks are multiples of the matmul's KC rows, so dW sums over the rows in exactly the
/// order one product over all rows would.</summary>
public sealed unsafe class LmHeadCrossEntropy : Op
{
    public const int DefaultRowBlock = 256;

    readonly Tensor x, weight;
    readonly int[] targets;
    readonly float* block, losses;
    readonly int n, c, v, rowBlock;
    float? announcedScale;
    float? computedScale; // the scale of the gradient already in x.Grad / weight.Grad, when the forward computed it

    public LmHeadCrossEntropy(Graph g, Tensor x, Tensor weight, int[] targets, int rowBlock = DefaultRowBlock)
    {
        (this.x, this.weight, this.targets) = (x, weight, targets);
        (n, c, v) = (x.Rows, x.LastDim, weight.Shape[0]);
        if (weight.LastDim != c) throw new ArgumentException($"lm_head weight {weight} does not match {x}");
        this.rowBlock = Math.Clamp(rowBlock, 1, Math.Max(1, n));
        if (x.HasGrad) x.GradAssignedByConsumer = true;
        block = g.Allocate((long)this.rowBlock * v).Pointer;
        losses = g.Allocate(n).Pointer;
    }

    public override string ProfileName => $"LmHead+CrossEntropy {n}x{c}->{v}";

    public override IEnumerable<Tensor> Parameters => [weight];

    /// <summary>1/N for a mean loss's gradient, 1 for a sum that a coordinator averages later.</summary>
    public float LossScale { get; set; } = 1f;

    public int Tokens => n;

    /// <summary>Sum of the per-token losses of the last forward, accumulated in double.</summary>
    public double LossSum() => LossSum(n);

    /// <summary>Sum of the per-token losses of the first <paramref name="rows"/> tokens of the last forward.</summary>
    public double LossSum(int rows)
    {
        double s = 0;
        for (int i = 0; i < rows; i++) s += losses[i];
        return s;
    }

    /// <summary>Makes the next forward also compute the loss gradient at <paramref name="scale"/> (x's gradient assigned,
    /// W's accumulated, so W's gradient must be zeroed before that forward); the backward that follows must use the same
    /// scale.</summary>
    public void AnnounceGradient(float scale)
    {
        if (!x.HasGrad || !weight.HasGrad) throw new InvalidOperationException("this graph was built for inference (no gradients)");
        announcedScale = scale;
    }

    public override void Forward(StepContext step)
    {
        float? scale = announcedScale;
        announcedScale = null;
        computedScale = scale;
        for (int r0 = 0; r0 < n; r0 += rowBlock) Block(r0, Math.Min(rowBlock, n - r0), scale);
    }

    public override void Backward(StepContext step)
    {
        if (computedScale is { } done)
        {
            computedScale = null;
            if (done != LossScale)
                throw new InvalidOperationException($"the forward computed the loss gradient at scale {done}, the backward asks for {LossScale}");
            return;
        }
        for (int r0 = 0; r0 < n; r0 += rowBlock) Block(r0, Math.Min(rowBlock, n - r0), LossScale);
    }

    /// Rows [r0, r0 + rows): logits into the block buffer, each row's loss, and with a scale the gradient.
    void Block(int r0, int rows, float? gradientScale)
    {
        float* xb = x.Data + (long)r0 * c;
        Gemm.Sgemm(false, true, rows, v, c, 1f, xb, c, weight.Data, c, 0f, block, v);
        int chunks = RowChunks.Count(rows, 8);
        float scale = gradientScale ?? 0f;
        bool gradient = gradientScale.HasValue;
        Compute.For(chunks, chunk =>
        {
            var (start, end) = RowChunks.Range(chunk, chunks, rows);
            for (int r = start; r < end; r++)
            {
                float* row = block + (long)r * v;
                int target = targets[r0 + r];
                losses[r0 + r] = gradient ? LossAndGradient(row, v, target, scale) : Loss(row, v, target);
            }
        });
        if (!gradient) return;

        // dx assigned (this op is x's only consumer), dW accumulated: Linear's backward products on the block.
        Linear.Products(rows, c, v, block, weight.Data, xb, x.Grad + (long)r0 * c, 0f, weight.Grad);
    }

    /// log-sum-exp(row) - row[target], reading the row only.
    static float Loss(float* row, int v, int target)
    {
        float max = TensorPrimitives.Max(new ReadOnlySpan<float>(row, v));
        var vm = Vector256.Create(max);
        var acc = Vector256<float>.Zero;
        int j = 0;
        for (; j + 8 <= v; j += 8) acc += VectorMath.Exp(Vector256.Load(row + j) - vm);
        float sum = Vector256.Sum(acc);
        for (; j < v; j++) sum += MathF.Exp(row[j] - max);
        return max + MathF.Log(sum) - row[target];
    }

    /// The row's loss, then (softmax(row) - onehot(target)) * scale over the row: one exp per logit, kept in place
    /// between the sum and the normalisation.
    static float LossAndGradient(float* row, int v, int target, float scale)
    {
        float max = TensorPrimitives.Max(new ReadOnlySpan<float>(row, v));
        float logit = row[target];
        var vm = Vector256.Create(max);
        var acc = Vector256<float>.Zero;
        int j = 0;
        for (; j + 8 <= v; j += 8)
        {
            var e = VectorMath.Exp(Vector256.Load(row + j) - vm);
            e.Store(row + j);
            acc += e;
        }
        float sum = Vector256.Sum(acc);
        for (; j < v; j++) sum += row[j] = MathF.Exp(row[j] - max);
        float k = scale / sum;
        var vk = Vector256.Create(k);
        for (j = 0; j + 8 <= v; j += 8) (Vector256.Load(row + j) * vk).Store(row + j);
        for (; j < v; j++) row[j] *= k;
        row[target] -= scale;
        return max + MathF.Log(sum) - logit;
    }
}
