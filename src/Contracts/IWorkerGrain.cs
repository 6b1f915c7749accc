using DistGpt.Model.Engine;

namespace DistGpt.Contracts;

/// <summary>A worker silo as the coordinator sees it: one per compute node.</summary>
public interface IWorkerGrain
{
    string Name { get; }
    int Rank { get; }

    /// <summary>Sends the weights, has the worker compute the gradient sum of its sequences, and receives that sum
    /// into <paramref name="gradients"/>. Throws <see cref="WorkerLostException"/> when the worker dies or goes silent, and
    /// refuses (as the coordinator's InvalidGradientsException) a sum that is stale, of the wrong size, or not all finite.</summary>
    Task<GradientsReply> ComputeGradientsAsync(ComputeRequest request, NativeBuffer weights, ReadOnlyMemory<byte> windows,
        NativeBuffer gradients, CancellationToken cancel);

    /// <summary>Tells the worker the run is over.</summary>
    Task ShutdownAsync(string reason);
}

public sealed class WorkerLostException(string worker, string reason, Exception? inner = null)
    : Exception($"worker '{worker}' lost: {reason}", inner)
{
    public string Worker { get; } = worker;
    public string Reason { get; } = reason;
}
