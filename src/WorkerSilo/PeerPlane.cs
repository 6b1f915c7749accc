using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using DistGpt.Contracts;
using DistGpt.Contracts.Wire;

namespace DistGpt.WorkerSilo;

/// <summary>This worker's peer-plane listener in a run with parameter shards: other workers connect to it to send the
/// range it holds of their gradient sums and to receive that range's updated weights. A connection is admitted only with
/// proof of the run's peer secret (HMAC of a fresh nonce), within a few seconds, and a bounded number wait at once. In a
/// TLS cluster every link is mutual TLS with the nodes' certificates first (<see cref="Fabric.FabricTls.PeerServerOptions"/>).</summary>
public sealed class PeerPlane : IAsyncDisposable
{
    const int MaxHandshakes = 32;
    static readonly TimeSpan HandshakeTimeout = TimeSpan.FromSeconds(5), LayoutPatience = TimeSpan.FromSeconds(30);

    readonly TcpListener listener;
    readonly string secret, runId;
    readonly Fabric.FabricTls? tls;
    readonly Action<string> log;
    readonly CancellationTokenSource closing = new();
    readonly Task accepting;
    readonly Fabric.ThrottledLog refusals;
    int handshakes;
    ShardedWorker? current;
    readonly ChangeSignal layoutChanged = new();

    /// <summary>host:port for the coordinator to hand to the other workers.</summary>
    public string Endpoint { get; }

    /// <summary>Listens on <paramref name="port"/> (0: a free one), on every address unless <paramref name="advertise"/> is a
    /// loopback one (as the worker's silo), and gives <paramref name="advertise"/> as its host.</summary>
    public PeerPlane(IPAddress advertise, int port, string secret, string runId, Fabric.FabricTls? tls, Action<string> log)
    {
        (this.secret, this.runId, this.tls, this.log) = (secret, runId, tls, log);
        refusals = new Fabric.ThrottledLog(log);
        var v6 = advertise.AddressFamily == AddressFamily.InterNetworkV6;
        listener = new TcpListener(IPAddress.IsLoopback(advertise) ? advertise : v6 ? IPAddress.IPv6Any : IPAddress.Any, port);
        try { listener.Start(); }
        catch (SocketException e) { throw new Model.ConfigException($"--peer-port {port}: the peer plane cannot listen there ({e.Message})"); }
        int bound = ((IPEndPoint)listener.LocalEndpoint).Port;
        Endpoint = v6 ? $"[{advertise}]:{bound}" : $"{advertise}:{bound}";
        accepting = AcceptLoopAsync();
    }

    /// <summary>The layout inbound peers are served for from now on.</summary>
    public void Serve(ShardedWorker? layout)
    {
        lock (listener) current = layout;
        layoutChanged.Pulse();
    }

    async Task AcceptLoopAsync()
    {
        while (!closing.IsCancellationRequested)
        {
            TcpClient client;
            try { client = await listener.AcceptTcpClientAsync(closing.Token); }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException) { return; }
            client.NoDelay = true;
            client.SendBufferSize = client.ReceiveBufferSize = 4 << 20;
            if (Interlocked.Increment(ref handshakes) > MaxHandshakes)
            {
                Interlocked.Decrement(ref handshakes);
                refusals.Write($"peer connection from {client.Client.RemoteEndPoint} refused: {MaxHandshakes} handshakes already waiting");
                client.Dispose();
                continue;
            }
            _ = ServeAsync(client);
        }
    }

    async Task ServeAsync(TcpClient client)
    {
        var remote = client.Client.RemoteEndPoint;
        Stream stream = client.GetStream();
        FrameChannel? channel = null;
        (ShardedWorker Layout, PeerHello Hello)? admitted = null;
        try
        {
            using var handshake = CancellationTokenSource.CreateLinkedTokenSource(closing.Token);
            handshake.CancelAfter(HandshakeTimeout);
            if (tls != null)
            {
                var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
                stream = ssl;
                await ssl.AuthenticateAsServerAsync(tls.PeerServerOptions(), handshake.Token);
            }
            channel = new FrameChannel(stream, stream);
            admitted = await HandshakeAsync(channel, remote, handshake.Token);
        }
        catch (AuthenticationException e)
        {
            refusals.Write($"peer connection from {remote} refused: no TLS certificate of the cluster's CA ({e.Message})");
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or ProtocolException or ObjectDisposedException)
        {
            refusals.Write($"peer connection from {remote} closed before proving the run's secret: {e.Message}");
        }
        finally { Interlocked.Decrement(ref handshakes); }
        try
        {
            if (admitted is var (layout, hello)) await layout.ServePeerAsync(channel!, hello.WorkerName, hello.Range, closing.Token);
        }
        finally
        {
            if (channel != null) await channel.DisposeAsync();
            else await stream.DisposeAsync();
            client.Dispose();
        }
    }

    async Task<(ShardedWorker, PeerHello)?> HandshakeAsync(FrameChannel channel, EndPoint? remote, CancellationToken cancel)
    {
        string nonce = Convert.ToHexString(RandomNumberGenerator.GetBytes(16));
        await channel.SendAsync(MessageKind.PeerChallenge, new PeerChallenge(nonce), cancel);
        var frame = await channel.ReceiveAsync(cancel);
        if (frame is not { Kind: MessageKind.PeerHello } || frame.PayloadLength != 0)
        {
            refusals.Write($"peer connection from {remote} sent {frame?.Kind.ToString() ?? "nothing"} instead of a hello; closed");
            return null;
        }
        var hello = frame.Read<PeerHello>();
        if (hello.RunId != runId || !PeerProof.Valid(secret, nonce, runId, hello.WorkerName ?? "", hello.Proof))
        {
            refusals.Write($"peer connection from {remote} could not prove the run's peer secret; closed");
            return null;
        }
        // The peer may have its layout before this worker: wait (bounded) for the same one here.
        var reached = await layoutChanged.UntilAsync(listener, () => current?.LayoutId >= hello.LayoutId ? current : null, LayoutPatience, closing.Token);
        return reached?.LayoutId == hello.LayoutId ? (reached, hello) : null;
    }

    /// <summary>Opens a link to the holder at <paramref name="endpoint"/> (TLS first, in a TLS cluster) and proves the run's secret.</summary>
    public static async Task<FrameChannel> ConnectAsync(string endpoint, string secret, Fabric.FabricTls? tls, string runId, string worker, long layoutId, int range, CancellationToken cancel)
    {
        var (host, port) = Split(endpoint);
        var client = new TcpClient { NoDelay = true, SendBufferSize = 4 << 20, ReceiveBufferSize = 4 << 20 };
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancel);
            timeout.CancelAfter(HandshakeTimeout);
            await client.ConnectAsync(host, port, timeout.Token);
            Stream stream = client.GetStream();
            if (tls != null)
            {
                var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
                stream = ssl;
                try { await ssl.AuthenticateAsClientAsync(tls.PeerClientOptions(host), timeout.Token); }
                catch (AuthenticationException e) { throw new IOException($"the peer at {endpoint} failed the TLS handshake: {e.Message}", e); }
            }
            var channel = new FrameChannel(stream, stream);
            var challenge = await channel.ReceiveAsync(timeout.Token);
            if (challenge is not { Kind: MessageKind.PeerChallenge }) throw new ProtocolException($"the peer at {endpoint} did not send a challenge");
            string nonce = challenge.Read<PeerChallenge>().Nonce;
            await channel.SendAsync(MessageKind.PeerHello, new PeerHello(worker, runId, layoutId, range, PeerProof.Of(secret, nonce, runId, worker)), timeout.Token);
            // Admitted once the holder has the same layout and has subscribed this link to its updates.
            timeout.CancelAfter(LayoutPatience);
            var admitted = await channel.ReceiveAsync(timeout.Token);
            if (admitted is not { Kind: MessageKind.ShardReady }) throw new IOException($"the holder at {endpoint} did not admit this worker's link");
            return channel;
        }
        catch
        {
            client.Dispose();
            throw;
        }
    }

    static (string Host, int Port) Split(string endpoint)
    {
        int colon = endpoint.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(endpoint[(colon + 1)..], out int port) || port is < 1 or > 65535)
            throw new ProtocolException($"peer endpoint {Untrusted.Quote(endpoint, Untrusted.IdLength)} is not host:port");
        return (endpoint[..colon].Trim('[', ']'), port);
    }

    public async ValueTask DisposeAsync()
    {
        closing.Cancel();
        listener.Stop();
        await accepting;
        closing.Dispose();
    }
}
