using System.Numerics.Tensors;
using DistGpt.Model.Engine;
using Tensor = DistGpt.Model.Engine.Tensor;

namespace DistGpt.Model.Layers;

/// <summary>y = a + b (the residual stream). Elementwise, split between cores in contiguous ranges.</summary>
public sealed unsafe class Residual(Tensor a, Tensor b, Tensor y) : Op
{
    readonly int chunks = RowChunks.Count(y.Length, 8192);

    public override void Forward(StepContext step) => Compute.For(chunks, chunk =>
    {
        var (start, end) = RowChunks.Range(chunk, chunks, y.Length);
        int n = end - start;
        TensorPrimitives.Add(new ReadOnlySpan<float>(a.Data + start, n), new ReadOnlySpan<float>(b.Data + start, n), new Span<float>(y.Data + start, n));
    });

    public override void Backward(StepContext step) => Compute.For(chunks, chunk =>
    {
        var (start, end) = RowChunks.Range(chunk, chunks, y.Length);
        int n = end - start;
        var dy = new ReadOnlySpan<float>(y.Grad + start, n);
        var da = new Span<float>(a.Grad + start, n);
        var db = new Span<float>(b.Grad + start, n);
        TensorPrimitives.Add(da, dy, da);
        TensorPrimitives.Add(db, dy, db);
    });
}
