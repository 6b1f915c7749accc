using System.Net;
using System.Net.Sockets;
using DistGpt.Contracts;
using DistGpt.Coordinator.Grains;
using DistGpt.Fabric;
using DistGpt.Model;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Orleans.Runtime;

namespace DistGpt.Coordinator.Hosting;

/// <summary>The coordinator's Orleans silo: the primary of development clustering (it holds the membership table), home
/// of the coordinator grain and the gateway `distgpt status` connects to. Orleans membership declaring a worker's silo
/// dead ends that worker's part in the run, as its data-plane connection closing does; whichever comes first.</summary>
public sealed class CoordinatorSilo : IAsyncDisposable
{
    readonly IHost host;
    readonly CancellationTokenSource stopping = new();
    readonly Task watch;
    readonly CancellationToken signalled;

    CoordinatorSilo(IHost host, RunMembership membership, SiloEndpoints endpoints, Action<string> log, CancellationToken signalled)
    {
        (this.host, Endpoints, this.signalled) = (host, endpoints, signalled);
        Grains = host.Services.GetRequiredService<IGrainFactory>();
        var cluster = host.Services.GetRequiredService<IClusterMembershipService>();
        watch = LostSiloWatch.RunAsync(cluster, membership, log, stopping.Token);
        // A worker whose data plane died is gone (a SIGKILL closes its socket at once): its silo is declared dead right away
        // rather than after the probes time out, so the whole cluster stops routing to it. A worker that comes back
        // starts a new silo anyway.
        membership.Left += (worker, reason) =>
        {
            if (!RunOver && worker.Silo is { } address)
                _ = cluster.TryKill(SiloAddress.FromParsableString(address)).ContinueWith(t => _ = t.Exception, TaskContinuationOptions.OnlyOnFaulted);
        };
    }

    /// <summary>Set once the run has ended: workers leaving then are not declared dead.</summary>
    public bool RunOver { get; set; }

    public IGrainFactory Grains { get; }
    public SiloEndpoints Endpoints { get; }

    public static async Task<CoordinatorSilo> StartAsync(SiloEndpoints endpoints, string? clusterToken, TimeSpan heartbeatTimeout,
        RunMembership membership, RunProgress progress, Action<string> log, FabricTls? tls, CancellationToken cancel)
    {
        var host = FabricHosting.BuildSilo(endpoints, new ClusterAuthentication(clusterToken, log), new FabricFailure(), heartbeatTimeout, log, services =>
        {
            services.AddSingleton(membership);
            services.AddSingleton(progress);
        }, tls);
        try { await host.StartAsync(cancel); }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            host.Dispose();
            var inUse = e as SocketException ?? e.InnerException as SocketException;
            throw new ConfigException(inUse?.SocketErrorCode == SocketError.AddressAlreadyInUse
                ? $"the silo port {endpoints.SiloPort} or gateway port {endpoints.GatewayPort} is in use on {endpoints.Advertised} (--silo-port, --gateway-port)"
                : $"cannot start the coordinator's silo on {endpoints.Advertised}:{endpoints.SiloPort} (gateway {endpoints.GatewayPort}): {e.GetBaseException().Message}");
        }
        log($"coordinator silo on {endpoints.Advertised}:{endpoints.SiloPort}, gateway {endpoints.GatewayPort}{(tls != null ? " (TLS)" : "")}");
        return new CoordinatorSilo(host, membership, endpoints, log, cancel);
    }

    /// <summary>The coordinator's silo endpoints for a data-plane address: the same IP unless it listens on every address, then
    /// --advertise or this host's first non-loopback IPv4 address.</summary>
    public static SiloEndpoints EndpointsFor(IPAddress listen, IPAddress? advertise, int siloPort, int gatewayPort)
    {
        bool any = listen.Equals(IPAddress.Any) || listen.Equals(IPAddress.IPv6Any);
        var ip = advertise ?? (any ? HostAddress() : listen);
        return new SiloEndpoints(FabricHosting.CoordinatorSilo, ip, siloPort, gatewayPort, new IPEndPoint(ip, siloPort), any);
    }

    static IPAddress HostAddress() =>
        System.Net.NetworkInformation.NetworkInterface.GetAllNetworkInterfaces()
            .Where(n => n.OperationalStatus == System.Net.NetworkInformation.OperationalStatus.Up)
            .SelectMany(n => n.GetIPProperties().UnicastAddresses)
            .Select(a => a.Address)
            .FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a)) ?? IPAddress.Loopback;

    public async ValueTask DisposeAsync()
    {
        stopping.Cancel();
        await watch;
        // Signalled (docker stop, Kubernetes, Ctrl-C), the process is about to exit and must do so fast: even an
        // ungraceful silo stop costs ~0.6 s, and the workers have been told the run is over on the data plane.
        if (signalled.IsCancellationRequested) return;
        using var bounded = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        try { await host.StopAsync(bounded.Token); }
        catch (Exception e) when (e is OperationCanceledException or OrleansException or TimeoutException) { }
        host.Dispose();
        stopping.Dispose();
    }
}
