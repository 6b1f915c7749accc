using DistGpt.Contracts;

namespace DistGpt.WorkerSilo;

/// <summary>Where the worker grain's orders meet their tensors: a grain call places an order (run, step, version, share); the
/// data-plane loop, having read the header of the payload that order names, starts computing and sends the sum once it
/// has claimed the order. Either may come first.</summary>
public sealed class ComputeOrders
{
    public sealed record Order(ComputeRequest Request)
    {
        public TaskCompletionSource<GradientsReply> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    readonly object gate = new();
    readonly List<Order> open = new();
    readonly ChangeSignal placed = new();

    /// <summary>The order's outcome: the reply sent on the data plane, or why none was.</summary>
    public Task<GradientsReply> Place(ComputeRequest request)
    {
        var order = new Order(request);
        lock (gate)
        {
            open.Add(order);
            placed.Pulse();
        }
        _ = order.Done.Task.ContinueWith(t => t.Exception, TaskContinuationOptions.OnlyOnFaulted); // reported on the data plane
        return order.Done.Task;
    }

    /// <summary>The order for the payload whose header is <paramref name="payload"/>; orders for earlier steps are stale (the
    /// coordinator gave up on them) and fail.</summary>
    public async Task<Order> ClaimAsync(ComputeRequest payload, CancellationToken cancel) =>
        (await placed.UntilAsync(gate, () =>
        {
            foreach (var stale in open.Where(o => o.Request.Step < payload.Step).ToList())
            {
                open.Remove(stale);
                stale.Done.TrySetException(new InvalidOperationException($"order for step {stale.Request.Step} overtaken by step {payload.Step}"));
            }
            var match = open.FirstOrDefault(o => o.Request.SameShareAs(payload));
            if (match != null) open.Remove(match);
            return match;
        }, Timeout.InfiniteTimeSpan, cancel))!;

    /// <summary>The data plane the open orders were waiting on is gone.</summary>
    public void FailAll(string reason)
    {
        lock (gate)
        {
            foreach (var o in open) o.Done.TrySetException(new IOException(reason));
            open.Clear();
        }
    }
}
