using DistGpt.Contracts;
using DistGpt.Contracts.Wire;
using DistGpt.Coordinator.Grains;
using System.Net;

namespace DistGpt.Coordinator.Hosting;

/// <summary>Serves one worker's persistent data-plane connection. The first frame must be the hello with the ticket the
/// coordinator grain gave that worker at admission; then the connection carries the tensors of the compute orders its
/// worker grain receives, until either side leaves. With
/// <paramref name="offerSharedMemory"/> (dev mode), a worker that says it runs on this host gets two /dev/shm regions
/// for its payloads, so tensors skip the socket; with <paramref name="sharedWeights"/> (the coordinator's parameter
/// memory) the weights region is that one, common to every local worker, and nothing is copied down.</summary>
public sealed class WorkerConnectionHandler(RunMembership grain, Func<string, IWorkerGrain> workerGrain, Action<string> log,
    bool offerSharedMemory = false, SharedMemoryRegion? sharedWeights = null) : IDisposable
{
    // A connection's regions stay mapped after it ends, until the host is disposed: a step may still read the gradients a
    // worker left in its region just before its connection dropped, or be copying weights into one.
    readonly List<SharedMemoryRegion> retired = new();

    readonly Fabric.ThrottledLog refusals = new(log);

    /// <summary>Logs a connection that never joined: throttled, since anyone can open them by the thousand.</summary>
    public void Refused(string why) => refusals.Write(why);

    /// <summary>Serves one connection. It counts as a stranger's (bounded in number and time by the caller, which closes it
    /// at the deadline) until its hello redeems a ticket; then <paramref name="authenticated"/> is called.</summary>
    public async Task HandleAsync(Stream stream, EndPoint? remote, Action authenticated, Action abort, CancellationToken closed)
    {
        var channel = new FrameChannel(stream, stream);
        Frame? first;
        try { first = await channel.ReceiveAsync(closed); }
        catch (Exception e) when (e is OperationCanceledException or IOException or ProtocolException or ObjectDisposedException)
        {
            Refused($"connection from {remote} closed before joining: {e.Message}");
            return;
        }
        if (first == null) return;
        if (first.Kind != MessageKind.Join)
        {
            Refused($"connection from {remote} sent {first.Kind} before joining; closed");
            return;
        }
        DataPlaneHello hello;
        try { hello = first.Read<DataPlaneHello>(); }
        catch (ProtocolException e)
        {
            Refused($"connection from {remote}: {e.Message}");
            return;
        }
        if (grain.Redeem(hello) is not var (accepted, request))
        {
            Refused($"connection from {remote}: no valid admission ticket; closed");
            await channel.SendAsync(MessageKind.JoinRefused, new JoinRefused("no valid admission ticket for this worker (join through the coordinator grain first)"));
            return;
        }
        authenticated();
        var worker = new RemoteWorker(workerGrain(request.WorkerName), channel, request.WorkerName, accepted.Rank, request.Silo, grain.Run,
            accepted.SendsWindows, abort)
        {
            PeerEndpoint = grain.Run.PeerSecret != null ? hello.PeerEndpoint : null,
            ShardFrames = (w, frame, cancel) => grain.ShardFrames is { } handle ? handle(w, frame, cancel) : channel.SkipPayloadAsync(frame.PayloadLength, cancel),
        };
        SharedMemoryRegion? down = null, up = null;
        bool admitted = false;
        try
        {
            if (grain.Run.PeerSecret != null && !PeerEndpoints.Valid(hello.PeerEndpoint))
            {
                Refused($"worker '{request.WorkerName}' from {remote}: no peer-plane endpoint in its hello; refused");
                await channel.SendAsync(MessageKind.JoinRefused, new JoinRefused("this run has parameter shards: the hello must name the worker's peer-plane endpoint (host:port)"));
                return; // (its rank is freed below, as for any admission whose data plane is not set up)
            }
            if (offerSharedMemory && hello.SharedMemory && SharedMemoryRegion.Directory is { } dir)
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
            admitted = true;
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
            if (!admitted) grain.Leave(worker, "its data plane could not be set up"); // frees the rank it held
            lock (retired)
            {
                if (down != null && down != sharedWeights) retired.Add(down);
                if (up != null) retired.Add(up);
            }
        }
    }

    static class PeerEndpoints
    {
        /// <summary>host:port, short and plain (it reaches the other workers' logs).</summary>
        public static bool Valid(string? endpoint) =>
            endpoint is { Length: > 2 and <= 100 } && endpoint.LastIndexOf(':') is var colon && colon > 0
            && int.TryParse(endpoint[(colon + 1)..], out int port) && port is > 0 and < 65536
            && endpoint.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or ':' or '-' or '[' or ']');
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
