using System.Numerics.Tensors;
using DistGpt.Model.Engine;
using Tensor = DistGpt.Model.Engine.Tensor;

namespace DistGpt.Model.Layers;

/// <summary>y = a + b (the residual stream). Elementwise, split between cores in contiguous ranges.
/// An input whose gradient buffer is y's (<see cref="Graph.ActivationSharingGrad"/>) already holds dy: its backward
/// adds nothing, and with both inputs sharing it there is no backward pass at all.</summary>
public sealed unsafe class Residual(Tensor a, Tensor b, Tensor y) : Op
{
    readonly int chunks = RowChunks.Count(y.Length, 8192);
    readonly bool addToA = a.Grad != y.Grad, addToB = b.Grad != y.Grad;

    public override void Forward(StepContext step) => Compute.For(chunks, chunk =>
    {
        var (start, end) = RowChunks.Range(chunk, chunks, y.Length);
        int n = end - start;
        TensorPrimitives.Add(new ReadOnlySpan<float>(a.Data + start, n), new ReadOnlySpan<float>(b.Data + start, n), new Span<float>(y.Data + start, n));
    });

    public override void Backward(StepContext step)
    {
        if (!addToA && !addToB) return;
        Compute.For(chunks, chunk =>
        {
            var (start, end) = RowChunks.Range(chunk, chunks, y.Length);
            int n = end - start;
            var dy = new ReadOnlySpan<float>(y.Grad + start, n);
            if (addToA) TensorPrimitives.Add(new Span<float>(a.Grad + start, n), dy, new Span<float>(a.Grad + start, n));
            if (addToB) TensorPrimitives.Add(new Span<float>(b.Grad + start, n), dy, new Span<float>(b.Grad + start, n));
        });
    }
}
