namespace DistGpt.Model.Training;

/// <summary>Where a step's gradients come from: this process (single-process training) or the worker silos.</summary>
public interface IGradientSource
{
    /// <summary>Leaves the gradient SUM over the step's whole global batch in the model's gradient buffer.</summary>
    StepGradients Compute(long step, CancellationToken cancel);
}

/// <summary>A step's gradient sum plus what the distributed source measured (null for single-process); SumNorm is the L2
/// norm of the gradient buffer when the source computed it as it summed (<see cref="GradientOps.SumInOrderWithNorm"/>).</summary>
public sealed record StepGradients(GradientSum Sum, int? Workers = null, double? CommMs = null, IReadOnlyDictionary<string, object>? Extra = null,
    double? SumNorm = null);

public sealed class LocalGradientSource(IGradientComputer worker) : IGradientSource
{
    public StepGradients Compute(long step, CancellationToken cancel) => new(worker.Compute(step, first: 0));
}
