using DistGpt.Model.Data;

namespace DistGpt.Model.Training;

/// <summary>Computes the gradient SUM over a contiguous slice of a step's global batch into the model's flat gradient
/// buffer, with the batches and dropout masks of <see cref="BatchSampler"/> and <see cref="GradientWorker.DropoutKey"/>.
/// The engine's <see cref="GradientWorker"/> is one; the TorchSharp backend (src/TorchBackend) another. Both read the
/// weights from and write the gradients to the same flat buffers, so nothing past a worker knows which one ran.</summary>
public interface IGradientComputer : IDisposable
{
    int Sequences { get; }

    /// <summary>Cuts the gradient buffer into buckets of about <paramref name="capFloats"/> values for Compute's
    /// bucketReady; returns them in the order they complete.</summary>
    IReadOnlyList<GradientBucket> UseBuckets(long capFloats);

    /// <summary>Zeroes the gradients, then forward + backward on sequences [first, first + Sequences) of step's batch.</summary>
    GradientSum Compute(long step, long first, Action<string>? phase = null, Action<GradientBucket>? bucketReady = null,
        WeightsArrival? weights = null);

    /// <summary>As Compute, on token windows given by the coordinator (Sequences × (block + 1) ids).</summary>
    GradientSum ComputeOnWindows(long step, long first, ReadOnlySpan<int> windows, Action<string>? phase = null,
        Action<GradientBucket>? bucketReady = null);
}
