using System.Diagnostics;
using DistGpt.Contracts;
using DistGpt.Contracts.Wire;
using DistGpt.Model.Engine;
using DistGpt.Model.Training;

namespace DistGpt.Coordinator.Grains;

/// <summary>The coordinator's proxy for one worker silo, over that worker's connection. One call at a time.
/// The receive loop (run by the connection handler) matches gradient replies to the pending call and tracks heartbeats.</summary>
public sealed class RemoteWorker(FrameChannel channel, string name, int rank, RunDescription run, bool sendsWindows, Action abort) : IWorkerGrain
{
    sealed record Pending(ComputeRequest Request, NativeBuffer Gradients, TaskCompletionSource<GradientsReply> Done);

    Pending? pending;
    long lastHeardTicks = Stopwatch.GetTimestamp();

    public string Name => name;
    public int Rank => rank;
    public FrameChannel Channel => channel;
    /// <summary>The worker has no corpus of its own: each compute request carries its token windows.</summary>
    public bool SendsWindows => sendsWindows;
    public TimeSpan SinceLastHeard => Stopwatch.GetElapsedTime(Interlocked.Read(ref lastHeardTicks));

    public async Task<GradientsReply> ComputeGradientsAsync(ComputeRequest request, NativeBuffer weights, ReadOnlyMemory<byte> windows,
        NativeBuffer gradients, CancellationToken cancel)
    {
        var call = new Pending(request, gradients, new TaskCompletionSource<GradientsReply>(TaskCreationOptions.RunContinuationsAsynchronously));
        if (Interlocked.CompareExchange(ref pending, call, null) != null) throw new InvalidOperationException($"worker '{name}' already has a call in flight");
        try
        {
            Interlocked.Exchange(ref lastHeardTicks, Stopwatch.GetTimestamp());
            // Not cancellable: a frame abandoned half-way would corrupt the stream. A dead link fails the write, or, when a
            // cut cable stalls it (the frame is larger than the socket buffers), the worker's heartbeats stop: then the
            // connection is aborted and the worker is lost, as when it goes silent while computing.
            using (Telemetry.CoordinatorTelemetry.StartSendWeights(channel, name, rank))
            try
            {
                var send = channel.SendAsync(MessageKind.Compute, request, CancellationToken.None, NativeMemoryManager.Bytes(weights), windows);
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
                if (await Task.WhenAny(call.Done.Task, tick) == call.Done.Task) return await call.Done.Task;
                cancel.ThrowIfCancellationRequested();
                if (SinceLastHeard > run.HeartbeatTimeout)
                    throw new WorkerLostException(name, $"no heartbeat for {SinceLastHeard.TotalSeconds:F1} s (--heartbeat-timeout {run.HeartbeatTimeout.TotalSeconds:F0} s)");
            }
        }
        finally { Interlocked.CompareExchange(ref pending, null, call); }
    }

    /// <summary>Drops the connection (a lost or misbehaving worker); the worker notices and rejoins if it can.</summary>
    public void Abort() => abort();

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

    public async Task ShutdownAsync(string reason)
    {
        try { await channel.SendAsync(MessageKind.Shutdown, new Shutdown(run.RunId, reason)); }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException) { }
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
        long expected = run.ParameterCount * run.GradientDType.Size();
        if (call == null || reply.Step < call.Request.Step)
        {
            // A straggler's late answer for a step that was already completed without it: not an error, just ignored.
            await channel.SkipPayloadAsync(frame.PayloadLength, cancel);
            return;
        }
        string? problem = reply.RunId != run.RunId ? $"run {reply.RunId} is not this run"
            : reply.ConfigHash != run.ConfigHash ? $"config {reply.ConfigHash} is not this run's {run.ConfigHash}"
            : reply.Step != call.Request.Step || reply.WeightsVersion != call.Request.WeightsVersion ? $"stale reply for step {reply.Step} (version {reply.WeightsVersion}), expected step {call.Request.Step}"
            : frame.PayloadLength != expected ? $"gradient payload of {frame.PayloadLength} bytes, expected {expected} ({run.GradientDType.Name()})"
            : null;
        if (problem != null)
        {
            await channel.SkipPayloadAsync(frame.PayloadLength, cancel);
            call?.Done.TrySetException(new InvalidGradientsException(name, problem));
            return;
        }
        bool finite;
        if (run.GradientDType == WireDType.Bf16)
        {
            await channel.ReadBFloat16PayloadAsync(NativeMemoryManager.Bytes(call.Gradients), cancel);
            finite = GradientOps.AllFinite(call.Gradients.Span);
        }
        else finite = await channel.ReadFloatPayloadAsync(call.Gradients, cancel); // checked as it lands, not in a second pass
        if (!finite) call.Done.TrySetException(new InvalidGradientsException(name, "NaN or Inf in the gradients"));
        else call.Done.TrySetResult(reply);
    }
}

/// <summary>A worker's reply that must not be applied (wrong length, stale step, NaN…): its share is recomputed.</summary>
public sealed class InvalidGradientsException(string worker, string problem) : Exception($"worker '{worker}' sent invalid gradients: {problem}")
{
    public string Worker { get; } = worker;
}
