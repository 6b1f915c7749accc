using System.Net;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Orleans.Configuration;
using Orleans.Connections.Security;
using Orleans.Hosting;
using Orleans.Serialization;

namespace DistGpt.Fabric;

/// <summary>Where one silo listens and what it advertises. <paramref name="Primary"/>: the coordinator's silo endpoint,
/// which holds development clustering's membership table (the coordinator's silo is its own primary).</summary>
public sealed record SiloEndpoints(string SiloName, IPAddress Advertised, int SiloPort, int GatewayPort, IPEndPoint Primary, bool ListenOnAnyAddress);

/// <summary>How DistGpt's silos and clients are configured, in one place: cluster identity, who may connect, where grains
/// go, how fast a dead silo is noticed, how messages are serialized, and Orleans' own log lines.</summary>
public static class FabricHosting
{
    public const string ClusterId = "distgpt", ServiceId = "distgpt";
    /// <summary>The coordinator's silo name, and so the coordinator grain's key (see <see cref="SiloNamedByKeyPlacement"/>).</summary>
    public const string CoordinatorSilo = "coordinator";
    /// <summary>The coordinator's silo and gateway ports default to the two after its data-plane port, so that one address
    /// (http://HOST:PORT, given to workers and to `distgpt status`) finds all three.</summary>
    public static int SiloPortOf(int dataPlanePort) => dataPlanePort + 1;
    public static int GatewayPortOf(int dataPlanePort) => dataPlanePort + 2;

    /// <summary>A port nothing listens on now at <paramref name="on"/> (any address when it is not loopback), for a silo.</summary>
    public static int FreePort(IPAddress on)
    {
        using var probe = new System.Net.Sockets.TcpListener(IPAddress.IsLoopback(on) ? on : IPAddress.Any, 0);
        probe.Start();
        return ((IPEndPoint)probe.LocalEndpoint).Port;
    }

    /// <summary>A silo on the generic host. <paramref name="services"/> registers what its grains delegate to.</summary>
    public static IHost BuildSilo(SiloEndpoints endpoints, ClusterAuthentication authentication, FabricFailure failure,
        TimeSpan heartbeatTimeout, Action<string> log, Action<IServiceCollection> services, FabricTls? tls = null)
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        ConfigureLogging(builder.Logging, log);
        services(builder.Services);
        builder.Services.AddSingleton<Orleans.Runtime.IFatalErrorHandler>(failure);
        builder.UseOrleans(silo =>
        {
            AddGrainRuntime(silo);
            silo.Configure<ClusterOptions>(o => (o.ClusterId, o.ServiceId) = (ClusterId, ServiceId));
            silo.Configure<SiloOptions>(o => o.SiloName = endpoints.SiloName);
            silo.ConfigureEndpoints(endpoints.Advertised, endpoints.SiloPort, endpoints.GatewayPort, endpoints.ListenOnAnyAddress);
            silo.UseDevelopmentClustering(endpoints.Primary);
            silo.Configure<ClusterMembershipOptions>(o => TuneFailureDetection(o, heartbeatTimeout));
            silo.Configure<SiloMessagingOptions>(o => o.ResponseTimeout = CallTimeout);
            silo.AddActivityPropagation(); // a grain call made inside a step's span carries its trace to the other silo
            silo.Configure<SiloConnectionOptions>(o =>
            {
                if (tls != null) // first: the token handshake below then runs inside TLS
                {
                    o.ConfigureSiloInboundConnection(c => c.UseServerTls(tls.Options(peersShowCertificates: true)));
                    o.ConfigureGatewayInboundConnection(c => c.UseServerTls(tls.Options(peersShowCertificates: false)));
                    o.ConfigureSiloOutboundConnection(c => c.UseClientTls(tls.Options(peersShowCertificates: true)));
                }
                o.ConfigureSiloInboundConnection(c => c.Use(next => ctx => authentication.AcceptAsync(ctx, next)));
                o.ConfigureGatewayInboundConnection(c => c.Use(next => ctx => authentication.AcceptAsync(ctx, next)));
                o.ConfigureSiloOutboundConnection(c => c.Use(next => ctx => authentication.ConnectAsync(ctx, next)));
            });
        });
        ScreenedListenerFactory.Decorate(builder.Services, authentication.Strangers);
        return builder.Build();
    }

    /// <summary>What DistGpt's grains need of any silo, a real one or a test cluster's: their placement rule and the
    /// serialization of DistGpt's messages.</summary>
    public static ISiloBuilder AddGrainRuntime(ISiloBuilder silo)
    {
        silo.Services.AddSerializer(Serialization);
        silo.Services.AddSingleton<Orleans.Statistics.IEnvironmentStatisticsProvider, QuietEnvironmentStatistics>();
        return silo.AddPlacementDirector<SiloNamedByKeyPlacement, SiloNamedByKeyPlacementDirector>();
    }

    /// <summary>An Orleans client of the cluster through the coordinator's gateway (`distgpt status`).</summary>
    public static IHost BuildClient(IPEndPoint gateway, ClusterAuthentication authentication, Action<string> log, FabricTls? tls = null)
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        ConfigureLogging(builder.Logging, log);
        builder.Services.AddSerializer(Serialization);
        builder.UseOrleansClient(client =>
        {
            client.Services.AddSingleton<Orleans.Statistics.IEnvironmentStatisticsProvider, QuietEnvironmentStatistics>();
            client.Configure<ClusterOptions>(o => (o.ClusterId, o.ServiceId) = (ClusterId, ServiceId));
            client.UseStaticClustering(gateway);
            client.AddActivityPropagation();
            client.Configure<ClientMessagingOptions>(o => o.ResponseTimeout = TimeSpan.FromSeconds(10));
            client.Configure<ClientConnectionOptions>(o => o.ConfigureConnection(c =>
            {
                if (tls != null) c.UseClientTls(tls.Options(peersShowCertificates: true)); // the gateway must show the cluster's certificate
            }));
            client.Configure<ClientConnectionOptions>(o => o.ConfigureConnection(c => c.Use(next => ctx => authentication.ConnectAsync(ctx, next))));
        });
        return builder.Build();
    }

    /// <summary>Grain calls are control messages; the data plane moves tensors, and its heartbeats and Orleans' membership
    /// detect a lost worker. This only bounds a call nobody else would end.</summary>
    static readonly TimeSpan CallTimeout = TimeSpan.FromMinutes(30);

    /// <summary>Orleans' defaults take ~10 s to declare a killed silo dead and ~60 s a hung one; these (measured on loopback:
    /// 1.1 s and 8.4 s) let membership notice a lost worker about as fast as the data plane does.</summary>
    static void TuneFailureDetection(ClusterMembershipOptions o, TimeSpan heartbeatTimeout)
    {
        o.ProbeTimeout = TimeSpan.FromSeconds(Math.Clamp(heartbeatTimeout.TotalSeconds / 4, 0.25, 1));
        o.NumMissedProbesLimit = 2;
        o.NumVotesForDeathDeclaration = 1;
        o.TableRefreshTimeout = TimeSpan.FromSeconds(2);
        o.IAmAliveTablePublishTimeout = TimeSpan.FromSeconds(30);
    }

    /// <summary>DistGpt's own messages (JoinRequest, ComputeRequest, GptConfig…) are records that already travel as JSON on
    /// the data plane: Orleans serializes them with System.Text.Json too.</summary>
    static void Serialization(ISerializerBuilder s) =>
        s.AddJsonSerializer(isSupported: t => t.Namespace?.StartsWith("DistGpt.", StringComparison.Ordinal) == true);

    /// <summary>Orleans logs through Microsoft.Extensions.Logging; only errors reach distgpt's log, one line each.</summary>
    static void ConfigureLogging(ILoggingBuilder logging, Action<string> log)
    {
        logging.ClearProviders();
        logging.SetMinimumLevel(Enum.TryParse<LogLevel>(Environment.GetEnvironmentVariable("DISTGPT_ORLEANS_LOG_LEVEL"), true, out var level) ? level : LogLevel.Error);
        logging.AddProvider(new OneLineLoggerProvider(log));
    }

    /// <summary>One line, without the stack traces some Orleans exception messages embed.</summary>
    static string Flat(string text)
    {
        int stack = text.IndexOf("   at ", StringComparison.Ordinal);
        return (stack >= 0 ? text[..stack] : text).ReplaceLineEndings(" ").Trim();
    }

    sealed class OneLineLoggerProvider(Action<string> log) : ILoggerProvider
    {
        public ILogger CreateLogger(string category) => new OneLineLogger(category, log);
        public void Dispose() { }
    }

    sealed class OneLineLogger(string category, Action<string> log) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel level) => level != LogLevel.None;
        public void Log<TState>(LogLevel level, EventId id, TState state, Exception? e, Func<TState, Exception?, string> format)
        {
            string message = Flat(format(state, e));
            if (e != null) message += $" ({e.GetType().Name}: {Flat(e.Message)})";
            log($"orleans {level.ToString().ToLowerInvariant()} [{category}]: {message}");
        }
    }
}
