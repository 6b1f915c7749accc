using DistGpt.Contracts;
using DistGpt.Contracts.Wire;
using DistGpt.Coordinator.Grains;
using Microsoft.AspNetCore.Connections;

namespace DistGpt.Coordinator.Hosting;

/// <summary>Kestrel connection handler: one persistent connection per worker silo (as Orleans' own networking).
/// First frame must be a join; then the connection carries compute calls until either side leaves.</summary>
public sealed class WorkerConnectionHandler(CoordinatorGrain grain, Action<string> log) : ConnectionHandler
{
    public override async Task OnConnectedAsync(ConnectionContext connection)
    {
        var channel = new FrameChannel(connection.Transport.Input.AsStream(), connection.Transport.Output.AsStream());
        Frame? first;
        try
        {
            using var joinTimeout = CancellationTokenSource.CreateLinkedTokenSource(connection.ConnectionClosed);
            joinTimeout.CancelAfter(TimeSpan.FromSeconds(15));
            first = await channel.ReceiveAsync(joinTimeout.Token);
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or ProtocolException)
        {
            log($"connection from {connection.RemoteEndPoint} closed before joining: {e.Message}");
            return;
        }
        if (first == null) return;
        if (first.Kind != MessageKind.Join)
        {
            log($"connection from {connection.RemoteEndPoint} sent {first.Kind} before joining; closed");
            return;
        }
        JoinRequest request;
        try { request = first.Read<JoinRequest>(); }
        catch (ProtocolException e)
        {
            log($"connection from {connection.RemoteEndPoint}: {e.Message}");
            return;
        }
        var decision = grain.Join(request);
        if (decision.Accepted is not { } accepted)
        {
            await channel.SendAsync(MessageKind.JoinRefused, new JoinRefused(decision.RefusedReason!));
            return;
        }
        var worker = new RemoteWorker(channel, request.WorkerName, accepted.Rank, grain.Run, accepted.SendsWindows, connection.Abort);
        try
        {
            await channel.SendAsync(MessageKind.JoinAccepted, accepted);
            grain.Admit(worker);
            using var stopHeartbeats = CancellationTokenSource.CreateLinkedTokenSource(connection.ConnectionClosed);
            var heartbeats = worker.HeartbeatLoopAsync(stopHeartbeats.Token);
            string reason = await worker.ReceiveLoopAsync(connection.ConnectionClosed);
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
