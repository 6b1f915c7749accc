using DistGpt.Contracts;
using DistGpt.Contracts.Wire;
using DistGpt.Coordinator.Grains;
using System.Net;

namespace DistGpt.Coordinator.Hosting;

/// <summary>Serves one worker's persistent connection (as Orleans' own networking: one connection per silo).
/// First frame must be a join; then the connection carries compute calls until either side leaves.</summary>
public sealed class WorkerConnectionHandler(CoordinatorGrain grain, Action<string> log)
{
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
        try
        {
            await channel.SendAsync(MessageKind.JoinAccepted, accepted);
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
    }
}
