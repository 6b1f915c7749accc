namespace DistGpt.Contracts;

/// <summary>A worker grain: one per compute node, keyed by the worker's name and always activated on that worker's own silo.
/// A call says what to compute; the weights and the gradient sum travel on the worker's data-plane connection
/// (/dev/shm in dev mode, the socket stream in cluster mode), never in a grain message.</summary>
public interface IWorkerGrain : IGrainWithStringKey
{
    /// <summary>Orders the gradient sum of the request's share at the weights that arrive on the data plane for the same step
    /// and version; the worker sends the sum, with its loss and timings, back there. One-way: the answer is the data plane's,
    /// and a lost worker shows in Orleans membership and on its connection, so a response message per step would only cost
    /// the cores the computation needs (measured: 0.7 ms of a 20 ms dev-mode step on 2 cores).</summary>
    [Orleans.Concurrency.OneWay]
    Task ComputeGradients(ComputeRequest request);

    /// <summary>The run is over: the worker process leaves the cluster and exits 0.</summary>
    Task Shutdown(string reason);
}
