using System.CommandLine;
using DistGpt.Coordinator.Training;
using DistGpt.Model;

namespace DistGpt.Coordinator.Cli;

/// <summary>`distgpt coordinator`: cluster mode. Waits for --min-workers workers, then trains with their gradients.</summary>
public static class CoordinatorCommand
{
    public static Command Create()
    {
        var train = new TrainOptions();
        var cluster = new ClusterOptions();
        var dashboard = new DashboardOptions();
        var listen = new Option<string>("--listen") { Description = "the data plane's address to bind, http://IP:PORT (workers are given this address)", DefaultValueFactory = _ => "http://0.0.0.0:7070" };
        var siloPort = new Option<int?>("--silo-port") { Description = "the coordinator's Orleans silo port (default: --listen's port + 1, where workers look for it)" };
        var gatewayPort = new Option<int?>("--gateway-port") { Description = "the Orleans gateway port `distgpt status` connects to (default: --listen's port + 2)" };
        var advertise = new Option<string>("--advertise") { Description = "the IP address the silo advertises to workers (default: --listen's, or this host's first non-loopback IPv4 address when --listen is 0.0.0.0)" };
        var minWorkers = new Option<int>("--min-workers") { Description = "workers to wait for before training", DefaultValueFactory = _ => 1 };
        var tolerate = new Option<bool>("--tolerate-failures") { Description = "recompute a lost worker's share on the others and go on (false: stop the run)", DefaultValueFactory = _ => true };
        var tlsCert = new Option<string>("--tls-cert") { Description = "PEM certificate, signed by --tls-ca: TLS on the data plane (--listen https://), between silos and at the gateway" };
        var tlsKey = new Option<string>("--tls-key") { Description = "PEM private key for --tls-cert" };
        var allowUnauthenticated = new Option<bool>("--allow-unauthenticated") { Description = "listen beyond loopback without a cluster token: anyone who reaches the ports may join (refused otherwise)" };
        var tlsCa = new Option<string>("--tls-ca") { Description = "PEM CA certificate of the cluster: the workers' silo certificates must chain to it" };
        var replicas = new Option<int>("--replicas-per-share")
        {
            Description = "graphs every worker cuts its share of a step into, whatever its --threads, so a share's gradient sum has the same bits on any worker (default: this host's cores; best set to the workers' --threads)",
            DefaultValueFactory = _ => Environment.ProcessorCount,
        };
        var command = new Command("coordinator", "Run the coordinator of a cluster: workers join it with `distgpt worker`.") { listen, siloPort, gatewayPort, advertise, minWorkers, tolerate, tlsCert, tlsKey, tlsCa, allowUnauthenticated, replicas };
        train.AddTo(command);
        cluster.AddTo(command);
        dashboard.AddTo(command);
        command.SetAction((r, cancel) => ExitCodes.GuardAsync(async () =>
        {
            using var telemetry = Telemetry.TelemetryProviders.Start(Telemetry.TelemetryProviders.CoordinatorService, null);
            Compute.Threads = train.ReadThreads(r);
            Check.InRange(r.GetValue(minWorkers), 1, 1 << 16, "--min-workers");
            Check.InRange(r.GetValue(replicas), 1, ThreadsOption.Max, "--replicas-per-share");
            dashboard.Check(r);
            var dataPlane = ParseUri(r.GetValue(listen)!, "--listen");
            if (cluster.Token(r) == null && !System.Net.IPAddress.IsLoopback(Hosting.CoordinatorHost.ListenAddress(dataPlane)) && !r.GetValue(allowUnauthenticated))
                throw new ConfigException($"--listen {dataPlane} reaches beyond this host but no cluster token is set: anyone could join. Set DISTGPT_CLUSTER_TOKEN (or --cluster-token), or pass --allow-unauthenticated");
            var settings = new CoordinatorSettings
            {
                Listen = dataPlane, SiloPort = Port(r.GetValue(siloPort) ?? Fabric.FabricHosting.SiloPortOf(dataPlane.Port), "--silo-port"),
                GatewayPort = Port(r.GetValue(gatewayPort) ?? Fabric.FabricHosting.GatewayPortOf(dataPlane.Port), "--gateway-port"), Advertise = Address(r.GetValue(advertise), "--advertise"), MinWorkers = r.GetValue(minWorkers), ClusterToken = cluster.Token(r),
                HeartbeatTimeout = cluster.Seconds(r, cluster.HeartbeatTimeout), JoinTimeout = cluster.Seconds(r, cluster.JoinTimeout),
                TolerateFailures = r.GetValue(tolerate), StragglerTimeout = cluster.Straggler(r), MaxRejections = cluster.Rejections(r),
                GradientDType = cluster.GradientDType(r), GradientBucketBytes = cluster.BucketBytes(r), TlsCert = r.GetValue(tlsCert), TlsKey = r.GetValue(tlsKey),
                SiloTls = Fabric.FabricTls.For(dataPlane, "--listen", r.GetValue(tlsCert), r.GetValue(tlsKey), r.GetValue(tlsCa)),
                ReplicasPerShare = r.GetValue(replicas), ParameterShards = cluster.ParameterShards(r),
            };
            using var setup = RunSetup.Create(train, r);
            PrintModel(setup);
            await using var page = dashboard.Start(r, setup, "coordinator", settings.MinWorkers, DistGpt.Contracts.WireDTypes.Name(settings.GradientDType));
            int code = await DistributedTraining.RunAsync(setup, settings, new ProgressView(setup.Settings.MaxIters), null, cancel, page == null ? null : page.Record);
            page?.End("finished");
            return code;
        }));
        return command;
    }

    public static Uri ParseUri(string value, string flag) =>
        Uri.TryCreate(value, UriKind.Absolute, out var uri) && uri.Port > 0 && uri.Scheme is "http" or "https"
            ? uri : throw new ConfigException($"{flag} '{value}' is not an address like http://HOST:PORT");

    public static int Port(int port, string flag) =>
        port is > 0 and <= 65535 ? port : throw new ConfigException($"{flag} must be a port number from 1 to 65535 (got {port})");

    public static System.Net.IPAddress? Address(string? value, string flag) =>
        value == null ? null : System.Net.IPAddress.TryParse(value, out var ip) ? ip : throw new ConfigException($"{flag} '{value}' is not an IP address");

    public static void PrintModel(RunSetup run)
    {
        var cfg = run.Model.Config;
        Console.WriteLine($"model: {cfg.NLayer} layers, {cfg.NHead} heads, n_embd {cfg.NEmbd}, block {cfg.BlockSize}, vocab {cfg.VocabSize}, {run.Model.Parameters.Count:N0} parameters; data {run.Corpus.Path}");
        if (run.StartStep > 0) Console.WriteLine($"resuming from step {run.StartStep} in {run.OutDir}");
    }
}
