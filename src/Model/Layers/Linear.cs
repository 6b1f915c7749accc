using System.Numerics.Tensors;
using DistGpt.Model.Engine;
using Tensor = DistGpt.Model.Engine.Tensor;

namespace DistGpt.Model.Layers;

/// <summary>y = x W^T + b, W stored (out, in) as PyTorch's nn.Linear.   (N, in) -> (N, out)
/// With <c>soleConsumer</c> this op is x's only consumer and assigns dx instead of adding to it (no zeroing pass).</summary>
public sealed unsafe class Linear : Op
{
    readonly Tensor x, weight, y;
    readonly Tensor? bias;
    readonly int n, inF, outF;
    readonly float dxBeta;

    public Linear(Tensor x, Tensor weight, Tensor? bias, Tensor y, bool soleConsumer = false)
    {
        (this.x, this.weight, this.bias, this.y) = (x, weight, bias, y);
        (n, inF, outF) = (x.Rows, x.LastDim, weight.Shape[0]);
        if (soleConsumer) x.GradAssignedByConsumer = true;
        dxBeta = soleConsumer ? 0f : 1f;
    }

    public override string ProfileName => $"Linear {n}x{inF}->{outF}";

    public override IEnumerable<Tensor> Parameters => bias == null ? [weight] : [weight, bias];

    public override void Forward(StepContext step)
    {
        Gemm.Sgemm(false, true, n, outF, inF, 1f, x.Data, inF, weight.Data, inF, 0f, y.Data, outF);
        if (bias == null) return;
        var b = new ReadOnlySpan<float>(bias.Data, outF);
        for (int r = 0; r < n; r++)
        {
            var row = new Span<float>(y.Data + (long)r * outF, outF);
            TensorPrimitives.Add(row, b, row);
        }
    }

    public override void Backward(StepContext step)
    {
        Products(n, inF, outF, y.Grad, weight.Data, x.Data, x.HasGrad ? x.Grad : null, dxBeta, weight.Grad);
        if (bias == null) return;
        var db = new Span<float>(bias.Grad, outF);
        for (int r = 0; r < n; r++) TensorPrimitives.Add(db, new ReadOnlySpan<float>(y.Grad + (long)r * outF, outF), db);
    }

    /// <summary>The backward's two products for n rows of y = x Wᵀ: dx = dy W + dxBeta·dx (skipped when dx is null) and
    /// dW += dyᵀ x. On two cores, one each (one fork/join, no shared panels); each product is computed exactly as the
    /// serial kernel would, so the results do not change.</summary>
    internal static void Products(int n, int inF, int outF, float* dy, float* w, float* x, float* dx, float dxBeta, float* dW)
    {
        if (dx != null && Compute.AvailableThreads == 2)
        {
            Compute.For(2, i =>
            {
                if (i == 0) Gemm.Sgemm(false, false, n, inF, outF, 1f, dy, outF, w, inF, dxBeta, dx, inF, parallel: false);
                else Gemm.Sgemm(true, false, outF, inF, n, 1f, dy, outF, x, inF, 1f, dW, inF, parallel: false);
            });
            return;
        }
        if (dx != null) Gemm.Sgemm(false, false, n, inF, outF, 1f, dy, outF, w, inF, dxBeta, dx, inF);
        Gemm.Sgemm(true, false, outF, inF, n, 1f, dy, outF, x, inF, 1f, dW, inF);
    }
}
