using System.Diagnostics;
using DistGpt.Contracts;
using DistGpt.Contracts.Wire;
using DistGpt.Model.Engine;
using DistGpt.Model.Training;

namespace DistGpt.Coordinator.Grains;

/// <summary>The coordinator's proxy for one worker silo: its worker grain takes the orders (what to compute), its data-plane
/// connection carries the tensors. One call at a time. The receive loop (run by the connection handler) matches gradient
/// replies to the pending call and tracks heartbeats.</summary>
public sealed class RemoteWorker(IWorkerGrain grain, FrameChannel channel, string name, int rank, string? silo, RunDescription run,
    bool sendsWindows, Action abort) : IWorkerProxy
{
    /// <summary>A call in flight; Gradients null: the sum goes to the parameter-shard holders, the reply has no payload.</summary>
    sealed record Pending(ComputeRequest Request, NativeBuffer? Gradients, TaskCompletionSource<GradientsReply> Done)
    {
        /// <summary>Streamed buckets have filled [Covered, end of the buffer); they arrive from the end down.</summary>
        public long Covered { get; set; } = Gradients?.Length ?? 0;
        /// <summary>A bucket was refused: the rest of this step's reply is skipped.</summary>
        public bool Refused { get; set; }
    }

    Pending? pending;
    readonly List<(ComputeRequest Request, Task Sent)> orderedAhead = new();
    long lastHeardTicks = Stopwatch.GetTimestamp();

    public string Name => name;
    public int Rank => rank;
    /// <summary>The worker's Orleans silo address (Orleans membership declaring it dead ends this worker's part).</summary>
    public string? Silo => silo;
    public double? LastComputeMs { get; private set; }
    public double? LastCommMs { get; private set; }
    public FrameChannel Channel => channel;
    /// <summary>The worker has no corpus of its own: each compute request carries its token windows.</summary>
    public bool SendsWindows => sendsWindows;

    /// <summary>Dev mode with fp32 gradients: the shared-memory region this worker writes its gradient sum to. Passed as a
    /// call's gradients buffer, the sum is neither copied nor checked as it lands: the caller checks it as it adds it up
    /// (GradientOps.SumInOrderWithNorm), one pass instead of two. It stays valid until this worker's next call (the
    /// region outlives the connection, see WorkerConnectionHandler).</summary>
    public NativeBuffer? GradientRegion { get; set; }
    /// <summary>Where the worker's peer plane listens (host:port), in a run with parameter shards.</summary>
    public string? PeerEndpoint { get; init; }

    /// <summary>Handles the parameter-shard frames this worker sends (layout ready, norms, state); null: skipped.</summary>
    public Func<RemoteWorker, Frame, CancellationToken, Task>? ShardFrames { get; init; }

    public TimeSpan SinceLastHeard => Stopwatch.GetElapsedTime(Interlocked.Read(ref lastHeardTicks));

    public async Task<GradientsReply> ComputeGradientsAsync(ComputeRequest request, NativeBuffer? weights, ReadOnlyMemory<byte> windows,
        NativeBuffer? gradients, CancellationToken cancel)
    {
        var call = new Pending(request, gradients, new TaskCompletionSource<GradientsReply>(TaskCreationOptions.RunContinuationsAsynchronously));
        if (Interlocked.CompareExchange(ref pending, call, null) != null) throw new InvalidOperationException($"worker '{name}' already has a call in flight");
        var roundTrip = Stopwatch.StartNew();
        try
        {
            Interlocked.Exchange(ref lastHeardTicks, Stopwatch.GetTimestamp());
            // The order goes by (one-way) grain call, unless it went ahead; the weights it names follow on the data plane, whose
            // reply ends the call (its sum is checked as it lands). An order that cannot even be sent fails the call at once.
            var order = TakeOrderedAhead(request) ?? grain.ComputeGradients(request);
            _ = order.ContinueWith(t => call.Done.TrySetException(new WorkerLostException(name,
                    $"its worker grain could not be given the order: {Untrusted.Escape(t.Exception!.GetBaseException().Message)}")), TaskContinuationOptions.OnlyOnFaulted);
            // Not cancellable: a frame abandoned half-way would corrupt the stream. A dead link fails the write, or, when a
            // cut cable stalls it (the frame is larger than the socket buffers), the worker's heartbeats stop: then the
            // connection is aborted and the worker is lost, as when it goes silent while computing.
            using (Telemetry.CoordinatorTelemetry.StartSendWeights(channel, name, rank))
            try
            {
                var send = channel.SendAsync(MessageKind.Compute, request, CancellationToken.None,
                    weights == null ? ReadOnlyMemory<byte>.Empty : NativeMemoryManager.Bytes(weights), windows);
                while (await Task.WhenAny(send, Task.Delay(TimeSpan.FromMilliseconds(250), CancellationToken.None)) != send)
                    if (SinceLastHeard > run.HeartbeatTimeout)
                    {
                        abort();
                        throw new WorkerLostException(name, $"no heartbeat for {SinceLastHeard.TotalSeconds:F1} s while sending the weights (--heartbeat-timeout {run.HeartbeatTimeout.TotalSeconds:F0} s)");
                    }
                await send;
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
            {
                throw new WorkerLostException(name, $"sending the weights failed ({e.Message})", e);
            }
            while (true)
            {
                var tick = Task.Delay(TimeSpan.FromMilliseconds(250), cancel);
                if (await Task.WhenAny(call.Done.Task, tick) == call.Done.Task)
                {
                    var reply = await call.Done.Task;
                    LastComputeMs = reply.ComputeMs;
                    LastCommMs = Math.Max(0, roundTrip.Elapsed.TotalMilliseconds - reply.ComputeMs);
                    return reply;
                }
                cancel.ThrowIfCancellationRequested();
                if (SinceLastHeard > run.HeartbeatTimeout)
                    throw new WorkerLostException(name, $"no heartbeat for {SinceLastHeard.TotalSeconds:F1} s (--heartbeat-timeout {run.HeartbeatTimeout.TotalSeconds:F0} s)");
            }
        }
        finally { Interlocked.CompareExchange(ref pending, null, call); }
    }

    /// <summary>Orders sent during the previous step's last round trip, for this worker's shares of the next step if the
    /// workers stay the same: a grain call handled while the worker computes wakes thread-pool threads on a core its kernels
    /// need, one handled while it waits for its weights does not (measured on 2 cores, alternating blocks of 10 steps in one
    /// dev run: 0.1-1.2 ms off an 18-22 ms step).</summary>
    public void OrderAhead(ComputeRequest request)
    {
        var sent = grain.ComputeGradients(request);
        lock (orderedAhead) orderedAhead.Add((request, sent));
    }

    /// <summary>The order sent ahead for this request's share, if one was and it did not fail; forgets older ones.</summary>
    Task? TakeOrderedAhead(ComputeRequest request)
    {
        lock (orderedAhead)
        {
            int i = orderedAhead.FindIndex(o => o.Request.SameShareAs(request));
            var sent = i >= 0 ? orderedAhead[i].Sent : null;
            if (i >= 0) orderedAhead.RemoveAt(i);
            orderedAhead.RemoveAll(o => o.Request.Step < request.Step);
            return sent is { IsFaulted: false } ? sent : null;
        }
    }

    /// <summary>Drops the connection (a lost or misbehaving worker); the worker notices and rejoins if it can.</summary>
    public void Abort() => abort();

    /// <summary>The worker is gone (its silo was declared dead): its call fails with the reason, and its connection is dropped.</summary>
    public void Lose(string reason)
    {
        pending?.Done.TrySetException(new WorkerLostException(name, reason));
        abort();
    }

    /// <summary>Sends heartbeats so that a worker waiting for work can tell a silent coordinator from a dead link.</summary>
    public async Task HeartbeatLoopAsync(CancellationToken cancel)
    {
        var period = TimeSpan.FromSeconds(Math.Max(0.05, run.HeartbeatTimeout.TotalSeconds / 4));
        try
        {
            while (!cancel.IsCancellationRequested)
            {
                await Task.Delay(period, cancel);
                await channel.SendAsync(MessageKind.Heartbeat, new Heartbeat(run.RunId, 0), cancel);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or ObjectDisposedException or InvalidOperationException) { }
    }

    /// <summary>Tells the worker grain the run is over (bounded: a worker that is gone is not waited for).</summary>
    public async Task ShutdownAsync(string reason)
    {
        try { await grain.Shutdown(reason).WaitAsync(TimeSpan.FromSeconds(5)); }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Gone already, or its silo is: the data plane closing when the coordinator exits tells it too.
            try { await channel.SendAsync(MessageKind.Shutdown, new Shutdown(run.RunId, reason)); }
            catch (Exception f) when (f is IOException or ObjectDisposedException or InvalidOperationException) { }
        }
    }

    /// <summary>Reads frames until the connection closes; returns why it ended.</summary>
    public async Task<string> ReceiveLoopAsync(CancellationToken cancel)
    {
        string reason;
        try
        {
            while (await channel.ReceiveAsync(cancel) is { } frame)
            {
                Interlocked.Exchange(ref lastHeardTicks, Stopwatch.GetTimestamp());
                if (frame.Kind == MessageKind.Gradients) await ReceiveGradientsAsync(frame, cancel);
                else if (frame.Kind == MessageKind.GradientsBucket) await ReceiveBucketAsync(frame, cancel);
                else if (frame.Kind is MessageKind.ShardReady or MessageKind.ShardNorm or MessageKind.ShardState && ShardFrames != null) await ShardFrames(this, frame, cancel);
                else await channel.SkipPayloadAsync(frame.PayloadLength, cancel);
            }
            reason = "connection closed";
        }
        catch (OperationCanceledException) { reason = "coordinator shutting down"; }
        catch (Exception e) when (e is IOException or ProtocolException or ObjectDisposedException) { reason = $"connection failed: {e.Message}"; }
        pending?.Done.TrySetException(new WorkerLostException(name, reason));
        return reason;
    }

    async Task ReceiveGradientsAsync(Frame frame, CancellationToken cancel)
    {
        var reply = frame.Read<GradientsReply>();
        var call = pending;
        long expected = call?.Gradients == null ? 0 : run.ParameterCount * run.GradientDType.Size();
        if (call == null || reply.Step < call.Request.Step || call.Refused)
        {
            // A straggler's late answer for a step that was already completed without it (or the end of a reply whose
            // bucket was refused): not an error, just ignored.
            await channel.SkipPayloadAsync(frame.PayloadLength, cancel);
            return;
        }
        bool streamed = call.Gradients != null && call.Covered < call.Gradients.Length;
        string? problem = Mismatch(reply.RunId, reply.ConfigHash, reply.Step, reply.WeightsVersion, call)
            ?? (streamed && frame.PayloadLength != 0 ? $"gradient payload of {frame.PayloadLength} bytes after streamed buckets"
            : streamed && call.Covered != 0 ? $"gradient buckets covered values [{call.Covered}, {call.Gradients.Length}) only"
            : !streamed && frame.PayloadLength != expected ? $"gradient payload of {frame.PayloadLength} bytes, expected {expected}{(call.Gradients == null ? " (the sum goes to the parameter shards)" : $" ({run.GradientDType.Name()})")}"
            : null);
        if (problem != null)
        {
            await channel.SkipPayloadAsync(frame.PayloadLength, cancel);
            call.Done.TrySetException(new InvalidGradientsException(name, problem));
            return;
        }
        if (call.Gradients != null && !streamed && !await channel.ReadGradientPayloadAsync(NativeMemoryManager.Bytes(call.Gradients), run.GradientDType, cancel, check: !ReferenceEquals(call.Gradients, GradientRegion)))
            call.Done.TrySetException(new InvalidGradientsException(name, "NaN or Inf in the gradients"));
        else call.Done.TrySetResult(reply);
    }

    /// <summary>One streamed bucket of the pending call's gradient sum: it must continue the buffer downwards from where the
    /// previous one began, and is read straight into its place (and checked) as it arrives.</summary>
    async Task ReceiveBucketAsync(Frame frame, CancellationToken cancel)
    {
        var bucket = frame.Read<GradientsBucket>();
        var call = pending;
        if (call == null || bucket.Step < call.Request.Step || call.Refused)
        {
            await channel.SkipPayloadAsync(frame.PayloadLength, cancel);
            return;
        }
        string? problem = Mismatch(bucket.RunId, bucket.ConfigHash, bucket.Step, bucket.WeightsVersion, call)
            ?? (call.Gradients == null ? "a gradient bucket, but the sum goes to the parameter shards"
            : bucket.Count < 1 || bucket.Offset < 0 || bucket.Offset + bucket.Count != call.Covered
                ? $"gradient bucket [{bucket.Offset}, {bucket.Offset + bucket.Count}) does not end where the streamed values begin ({call.Covered})"
            : frame.PayloadLength != bucket.Count * run.GradientDType.Size()
                ? $"gradient payload of {frame.PayloadLength} bytes for values [{bucket.Offset}, {bucket.Offset + bucket.Count}), expected {bucket.Count * run.GradientDType.Size()} ({run.GradientDType.Name()})"
            : null);
        if (problem == null)
        {
            var place = NativeMemoryManager.Bytes(call.Gradients!).Slice(checked((int)bucket.Offset * sizeof(float)), checked((int)bucket.Count * sizeof(float)));
            if (await channel.ReadGradientPayloadAsync(place, run.GradientDType, cancel))
            {
                call.Covered = bucket.Offset;
                return;
            }
            problem = "NaN or Inf in the gradients";
        }
        else await channel.SkipPayloadAsync(frame.PayloadLength, cancel);
        call.Refused = true;
        call.Done.TrySetException(new InvalidGradientsException(name, problem));
    }

    string? Mismatch(string runId, string configHash, long step, long version, Pending call) =>
        runId != run.RunId ? $"run {Untrusted.Quote(runId, Untrusted.IdLength)} is not this run"
        : configHash != run.ConfigHash ? $"config {Untrusted.Quote(configHash, Untrusted.IdLength)} is not this run's {run.ConfigHash}"
        : step != call.Request.Step || version != call.Request.WeightsVersion ? $"stale reply for step {step} (version {version}), expected step {call.Request.Step}"
        : null;
}

/// <summary>A worker's reply that must not be applied (wrong length, stale step, NaN…): its share is recomputed.</summary>
public sealed class InvalidGradientsException(string worker, string problem) : Exception($"worker '{worker}' sent invalid gradients: {problem}")
{
    public string Worker { get; } = worker;
}
