using DistGpt.Contracts;
using DistGpt.Contracts.Wire;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using DistGpt.Coordinator.Grains;
using DistGpt.Fabric;
using DistGpt.Model;

namespace DistGpt.Coordinator.Hosting;

/// <summary>Hosts the coordinator grain on one TCP (or TLS) endpoint, one persistent connection per worker.
/// A plain socket accept loop rather than a Kestrel connection handler: measured with `distgpt bench-exchange`,
/// Kestrel's transport moves a 43 MB tensor through 4 KiB pipe segments and took 2.2–2.5× the raw-socket time,
/// while a socket read straight into the flat buffers stays within a few percent of it.</summary>
public sealed class CoordinatorHost : IAsyncDisposable
{
    readonly TcpListener listener;
    readonly CancellationTokenSource stopping = new();
    readonly Task acceptLoop;
    readonly List<(Socket Socket, Task Handler)> connections = new();
    readonly WorkerConnectionHandler handler;

    CoordinatorHost(TcpListener listener, Uri address, WorkerConnectionHandler handler, X509Certificate2? cert, Action<string> log)
    {
        (this.listener, Address, this.handler) = (listener, address, handler);
        acceptLoop = AcceptLoopAsync(handler, cert, log);
    }

    /// <summary>The address workers should use (the bound port when 0 was asked for).</summary>
    public Uri Address { get; }

    public static Task<CoordinatorHost> StartAsync(Uri listen, RunMembership grain, Func<string, IWorkerGrain> workerGrain, Action<string> log,
        string? tlsCert = null, string? tlsKey = null, bool offerSharedMemory = false, SharedMemoryRegion? sharedWeights = null)
    {
        if (listen.Scheme is not ("http" or "https"))
            throw new ConfigException($"--listen '{listen}' must be http://HOST:PORT (or https:// with --tls-cert/--tls-key)");
        if ((tlsCert != null) != (tlsKey != null)) throw new ConfigException("--tls-cert and --tls-key go together");
        X509Certificate2? cert = null;
        if (tlsCert != null)
        {
            try { cert = X509Certificate2.CreateFromPemFile(tlsCert, tlsKey); }
            catch (Exception e) when (e is IOException or System.Security.Cryptography.CryptographicException)
            { throw new ConfigException($"cannot load --tls-cert '{tlsCert}' / --tls-key '{tlsKey}': {e.Message}"); }
        }
        IPAddress ip = ListenAddress(listen);
        var listener = new TcpListener(ip, listen.Port);
        ExclusiveRebind(listener.Server);
        try { listener.Start(); }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.AddressAlreadyInUse)
        { throw new ConfigException($"port {listen.Port} is in use on {ip} (another coordinator, or another program): cannot listen on {listen}"); }
        catch (SocketException e) { throw new ConfigException($"cannot listen on {listen}: {e.Message}"); }
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        var address = new UriBuilder(cert != null ? "https" : "http", ip.ToString(), port).Uri;
        log($"coordinator listening on {address}");
        return Task.FromResult(new CoordinatorHost(listener, address, new WorkerConnectionHandler(grain, workerGrain, log, offerSharedMemory && cert == null, sharedWeights), cert, log));
    }

    public static IPAddress ListenAddress(Uri listen) =>
        listen.Host is "localhost" ? IPAddress.Loopback
        : IPAddress.TryParse(listen.Host, out var parsed) ? parsed
        : throw new ConfigException($"--listen host '{listen.Host}' must be an IP address (e.g. 0.0.0.0 or 127.0.0.1)");

    /// <summary>A restarted coordinator must rebind its port while the killed one's connections linger in TIME_WAIT, so the
    /// listener sets SO_REUSEADDR; .NET's ReuseAddress would also set SO_REUSEPORT on Linux, which lets a second coordinator
    /// bind the same port and the kernel split the workers between two runs.</summary>
    static void ExclusiveRebind(Socket socket)
    {
        if (OperatingSystem.IsLinux()) socket.SetRawSocketOption(1 /* SOL_SOCKET */, 2 /* SO_REUSEADDR */, BitConverter.GetBytes(1));
    }

    /// <summary>Socket settings for tensor traffic: no Nagle delay, buffers that hold a few 1 MiB chunks.</summary>
    public static NetworkStream Tune(Socket socket)
    {
        socket.NoDelay = true;
        socket.SendBufferSize = 4 << 20;
        socket.ReceiveBufferSize = 4 << 20;
        return new NetworkStream(socket, ownsSocket: true);
    }

    /// <summary>Accepts until the host is disposed. A failed accept (EMFILE when the process is out of file descriptors,
    /// a connection reset in the backlog) leaves the listener usable: it is retried after a pause, never given up.</summary>
    async Task AcceptLoopAsync(WorkerConnectionHandler handler, X509Certificate2? cert, Action<string> log)
    {
        var strangers = new UnauthenticatedConnections("data plane", log);
        var acceptFailures = new ThrottledLog(log);
        var pause = TimeSpan.FromMilliseconds(50);
        while (!stopping.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await listener.AcceptSocketAsync(stopping.Token);
                pause = TimeSpan.FromMilliseconds(50);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException) { return; }
            catch (SocketException e)
            {
                acceptFailures.Write($"accepting a data-plane connection failed ({e.Message}); retrying");
                try { await Task.Delay(pause, stopping.Token); } catch (OperationCanceledException) { return; }
                pause = TimeSpan.FromTicks(Math.Min(pause.Ticks * 2, TimeSpan.FromSeconds(1).Ticks));
                continue;
            }
            var remote = socket.RemoteEndPoint;
            var stranger = strangers.Track(remote, () => socket.Close(0)); // here, not in the task: the bound must hold at accept
            var task = Task.Run(async () =>
            {
                using var _ = stranger;
                Stream stream = Tune(socket);
                try
                {
                    if (cert != null)
                    {
                        var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
                        await ssl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions { ServerCertificate = cert }, stopping.Token);
                        stream = ssl;
                    }
                    await handler.HandleAsync(stream, remote, stranger.Authenticated, () => socket.Close(0), stopping.Token);
                }
                catch (Exception e) when (e is IOException or OperationCanceledException or System.Security.Authentication.AuthenticationException or ObjectDisposedException or SocketException)
                {
                    handler.Refused($"connection from {remote} ended: {e.Message}");
                }
                finally { await stream.DisposeAsync(); }
            });
            lock (connections)
            {
                connections.RemoveAll(c => c.Handler.IsCompleted);
                connections.Add((socket, task));
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        stopping.Cancel();
        listener.Stop();
        await acceptLoop;
        List<(Socket Socket, Task Handler)> open;
        lock (connections) open = connections.ToList();
        foreach (var c in open)
        {
            try { c.Socket.Shutdown(SocketShutdown.Send); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        }
        await Task.WhenAny(Task.WhenAll(open.Select(c => c.Handler)), Task.Delay(TimeSpan.FromSeconds(2)));
        foreach (var c in open) c.Socket.Dispose();
        stopping.Dispose();
        handler.Dispose();
    }
}
