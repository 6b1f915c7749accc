using System.Numerics.Tensors;
using DistGpt.Model.Engine;
using Tensor = DistGpt.Model.Engine.Tensor;

namespace DistGpt.Model.Layers;

/// <summary>y = a + b (the residual stream).</summary>
public sealed class Residual(Tensor a, Tensor b, Tensor y) : Op
{
    public override void Forward(StepContext step) => TensorPrimitives.Add(a.DataSpan, b.DataSpan, y.DataSpan);

    public override void Backward(StepContext step)
    {
        TensorPrimitives.Add(a.GradSpan, y.GradSpan, a.GradSpan);
        TensorPrimitives.Add(b.GradSpan, y.GradSpan, b.GradSpan);
    }
}
