using DistGpt.Contracts;
using DistGpt.Contracts.Wire;
using DistGpt.Coordinator.Grains;
using System.Net;

namespace DistGpt.Coordinator.Hosting;

/// <summary>Serves one worker's persistent connection (as Orleans' own networking: one connection per silo).
/// First frame must be a join; then the connection carries compute calls until either side leaves. With
/// <paramref name="offerSharedMemory"/> (dev mode), a worker that says it runs on this host gets two /dev/shm regions
/// for its payloads, so tensors skip the socket; with <paramref name="sharedWeights"/> (the coordinator's parameter
/// memory) the weights region is that one, common to every local worker, and nothing is copied down.</summary>
public sealed class WorkerConnectionHandler(RunMembership grain, Action<string> log, bool offerSharedMemory = false,
    SharedMemoryRegion? sharedWeights = null) : IDisposable
{
    // A connection's regions stay mapped after it ends, until the host is disposed: a step may still read the gradients a
    // worker left in its region just before its connection dropped, or be copying weights into one.
    readonly List<SharedMemoryRegion> retired = new();

    public async Task HandleAsync(Stream stream, EndPoint? remote, Action abort, CancellationToken closed)
    {
        var channel = new FrameChannel(stream, stream);
        Frame? first;
        try
        {
            using var joinTimeout = CancellationTokenSource.CreateLinkedTokenSource(closed);
            joinTimeout.CancelAfter(TimeSpan.FromSeconds(15));
            first = await channel.ReceiveAsync(joinTimeout.Token);
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or ProtocolException)
        {
            log($"connection from {remote} closed before joining: {e.Message}");
            return;
        }
        if (first == null) return;
        if (first.Kind != MessageKind.Join)
        {
            log($"connection from {remote} sent {first.Kind} before joining; closed");
            return;
        }
        JoinRequest request;
        try { request = first.Read<JoinRequest>(); }
        catch (ProtocolException e)
        {
            log($"connection from {remote}: {e.Message}");
            return;
        }
        var decision = grain.Join(request);
        if (decision.Accepted is not { } accepted)
        {
            await channel.SendAsync(MessageKind.JoinRefused, new JoinRefused(decision.RefusedReason!));
            return;
        }
        var worker = new RemoteWorker(channel, request.WorkerName, accepted.Rank, grain.Run, accepted.SendsWindows, abort);
        SharedMemoryRegion? down = null, up = null;
        try
        {
            if (offerSharedMemory && request.SharedMemory && SharedMemoryRegion.Directory is { } dir)
            {
                // Weights (and, when they fit, token windows) down; a gradient sum up. A worker that samples its own
                // batches maps the coordinator's weights themselves; token windows would need a region of its own.
                long tensorBytes = accepted.ParameterCount * sizeof(float);
                string stem = Path.Combine(dir, $"distgpt-{accepted.RunId}-{accepted.Rank}-{Guid.NewGuid():N}");
                bool shareWeights = sharedWeights != null && !accepted.SendsWindows && sharedWeights.Capacity == tensorBytes;
                down = shareWeights ? sharedWeights : SharedMemoryRegion.Create(stem + "-down", tensorBytes + (1 << 20));
                up = SharedMemoryRegion.Create(stem + "-up", tensorBytes);
                accepted = accepted with { SharedMemory = new SharedMemoryPaths(down!.Path, down.Capacity, up.Path, up.Capacity, shareWeights) };
            }
            await channel.SendAsync(MessageKind.JoinAccepted, accepted);
            if (down != null)
            {
                channel.UseSharedMemory(send: down, receive: up!);
                if (accepted.GradientDType == WireDType.Fp32) unsafe { worker.GradientRegion = Model.Engine.NativeBuffer.Over((float*)up!.Pointer, accepted.ParameterCount); }
            }
            grain.Admit(worker);
            using var stopHeartbeats = CancellationTokenSource.CreateLinkedTokenSource(closed);
            var heartbeats = worker.HeartbeatLoopAsync(stopHeartbeats.Token);
            string reason = await worker.ReceiveLoopAsync(closed);
            stopHeartbeats.Cancel();
            await heartbeats;
            grain.Leave(worker, reason);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            grain.Leave(worker, $"connection failed: {e.Message}");
        }
        finally
        {
            lock (retired)
            {
                if (down != null && down != sharedWeights) retired.Add(down);
                if (up != null) retired.Add(up);
            }
        }
    }

    public void Dispose()
    {
        lock (retired)
        {
            foreach (var region in retired) region.Dispose();
            retired.Clear();
        }
    }
}
