using DistGpt.Contracts;
using DistGpt.Model.Engine;

namespace DistGpt.Coordinator.Grains;

/// <summary>A worker silo as the training logic sees it, whatever carries the calls: ask for a share's gradient sum, tell it
/// the run is over.</summary>
public interface IWorkerProxy
{
    string Name { get; }
    int Rank { get; }
    /// <summary>The worker's Orleans silo address (null where no silo stands behind it).</summary>
    string? Silo { get; }

    /// <summary>Sends the weights, has the worker compute the gradient sum of its sequences, and receives that sum
    /// into <paramref name="gradients"/>. Throws <see cref="WorkerLostException"/> when the worker dies or goes silent, and
    /// refuses (as <see cref="InvalidGradientsException"/>) a sum that is stale, of the wrong size, or not all finite.
    /// With parameter shards both buffers are null: the worker has its weights from the range holders and sends its sum there.</summary>
    Task<GradientsReply> ComputeGradientsAsync(ComputeRequest request, NativeBuffer? weights, ReadOnlyMemory<byte> windows,
        NativeBuffer? gradients, CancellationToken cancel);

    /// <summary>Gives the worker the order for a coming call now, while it waits for its weights: the call with the same
    /// share then sends only its tensors. (Where orders and tensors travel together, there is nothing to send ahead.)</summary>
    void OrderAhead(ComputeRequest request) { }

    /// <summary>Tells the worker the run is over.</summary>
    Task ShutdownAsync(string reason);

    /// <summary>The worker is gone (its silo was declared dead): a call in flight fails with the reason, and its link is dropped.</summary>
    void Lose(string reason);
}
