namespace DistGpt.Contracts;

/// <summary>A worker grain: one per compute node, keyed by the worker's name and always activated on that worker's own silo.
/// A call says what to compute; the weights and the gradient sum travel on the worker's data-plane connection
/// (/dev/shm in dev mode, the socket stream in cluster mode), never in a grain message.</summary>
public interface IWorkerGrain : IGrainWithStringKey
{
    /// <summary>Computes the gradient sum of the request's share at the weights that arrive on the data plane for the same
    /// step and version, sends it back there, and returns the loss and timings behind it.</summary>
    Task<GradientsReply> ComputeGradients(ComputeRequest request);

    /// <summary>The run is over: the worker process leaves the cluster and exits 0.</summary>
    Task Shutdown(string reason);
}
