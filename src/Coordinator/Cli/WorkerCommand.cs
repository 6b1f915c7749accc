using System.CommandLine;
using DistGpt.Model;
using DistGpt.WorkerSilo;

namespace DistGpt.Coordinator.Cli;

/// <summary>`distgpt worker`: a worker silo. Joins the coordinator and computes gradients until the run ends (exit 0).</summary>
public static class WorkerCommand
{
    public static Command Create()
    {
        var coordinator = new Option<string>("--coordinator") { Description = "the coordinator's address, http://HOST:PORT", Required = true };
        var name = new Option<string>("--name") { Description = "unique worker name (default: host-pid)" };
        var threads = ThreadsOption.Create();
        var data = new Option<string>("--data") { Description = $"this node's copy of the corpus (else ${DataLocator.EnvVar}; with neither, the coordinator sends each step's windows)" };
        var token = new Option<string>("--cluster-token") { Description = $"shared secret (else ${ClusterOptions.TokenEnvVar})" };
        var connectTimeout = new Option<double>("--connect-timeout") { Description = "seconds to keep retrying an unreachable coordinator", DefaultValueFactory = _ => 30 };
        var expectConfig = new Option<string>("--expect-config") { Description = "refuse to join unless the run's model-config hash is this" };
        var tlsCa = new Option<string>("--tls-ca") { Description = "PEM CA certificate of the cluster (it signed the coordinator's certificate); with an https:// coordinator" };
        var tlsCert = new Option<string>("--tls-cert") { Description = "PEM certificate of this worker's silo, signed by --tls-ca (with an https:// coordinator)" };
        var tlsKey = new Option<string>("--tls-key") { Description = "PEM private key for --tls-cert" };
        var siloPort = new Option<int?>("--silo-port") { Description = "this worker's Orleans silo port, which the coordinator must reach (default: a free port)" };
        var coordinatorSiloPort = new Option<int?>("--coordinator-silo-port") { Description = "the coordinator's Orleans silo port (its --silo-port; default: --coordinator's port + 1)" };
        var advertise = new Option<string>("--advertise") { Description = "the IP address this worker's silo (and, with --shards, its peer plane) advertises (default: the one it reaches the coordinator from)" };
        var peerPort = new Option<int?>("--peer-port") { Description = "with parameter shards (--shards on the coordinator): the port other workers reach this one's peer plane on (default: a free port)" };
        var sharedMemory = new Option<bool>("--shared-memory") { Description = "on the coordinator's host: take tensors through /dev/shm when it offers (dev mode does)" };
        var backends = new BackendOptions();
        var command = new Command("worker", "Run a worker silo that joins a coordinator.") { coordinator, name, threads, data, token, connectTimeout, expectConfig, tlsCa, tlsCert, tlsKey, sharedMemory, siloPort, coordinatorSiloPort, advertise, peerPort };
        backends.AddTo(command);
        command.SetAction((r, cancel) => ExitCodes.GuardAsync(async () =>
        {
            int computeThreads = ThreadsOption.Read(r, threads);
            var backend = backends.Load(r);
            var connectWait = ClusterOptions.Seconds(r.GetValue(connectTimeout), "--connect-timeout");
            string? dataPath = r.GetValue(data);
            if (string.IsNullOrEmpty(dataPath)) dataPath = Environment.GetEnvironmentVariable(DataLocator.EnvVar);
            if (!string.IsNullOrEmpty(dataPath) && !File.Exists(dataPath) && !Directory.Exists(dataPath))
                throw new Model.Data.DataException($"data file '{dataPath}' does not exist");
            string? secret = r.GetValue(token);
            if (string.IsNullOrEmpty(secret)) secret = Environment.GetEnvironmentVariable(ClusterOptions.TokenEnvVar);
            var address = CoordinatorCommand.ParseUri(r.GetValue(coordinator)!, "--coordinator");
            var options = new WorkerOptions
            {
                Coordinator = address,
                Name = WorkerName(r.GetValue(name)),
                SiloPort = r.GetValue(siloPort) is { } port ? CoordinatorCommand.Port(port, "--silo-port") : 0,
                CoordinatorSiloPort = CoordinatorCommand.Port(r.GetValue(coordinatorSiloPort) ?? Fabric.FabricHosting.SiloPortOf(address.Port), "--coordinator-silo-port"),
                Advertise = CoordinatorCommand.Address(r.GetValue(advertise), "--advertise"),
                PeerPort = r.GetValue(peerPort) is { } peer ? CoordinatorCommand.Port(peer, "--peer-port") : 0,
                Threads = computeThreads, DataPath = string.IsNullOrEmpty(dataPath) ? null : dataPath,
                ClusterToken = string.IsNullOrEmpty(secret) ? null : secret,
                ConnectTimeout = connectWait, ExpectConfigHash = r.GetValue(expectConfig),
                TlsCaPath = r.GetValue(tlsCa), SiloTls = Fabric.FabricTls.For(address, "--coordinator", r.GetValue(tlsCert), r.GetValue(tlsKey), r.GetValue(tlsCa)), SharedMemory = r.GetValue(sharedMemory), Backend = backend, Log = msg => Telemetry.TraceLog.Write("worker", msg),
            };
            using var telemetry = Telemetry.TelemetryProviders.Start(Telemetry.TelemetryProviders.WorkerService, options.Name);
            using var silo = new WorkerSilo.WorkerSilo(options);
            return await silo.RunAsync(cancel);
        }));
        return command;
    }

    /// <summary>--name, or host-pid; a name is also the worker's silo name and appears in logs and metrics, so it is checked here.</summary>
    static string WorkerName(string? given)
    {
        string name = given ?? $"{Environment.MachineName}-{Environment.ProcessId}";
        if (!Grains.RunMembership.ValidName(name))
            throw new ConfigException($"--name must be 1 to 64 letters, digits, '.', '_' or '-' (got {Contracts.Untrusted.Quote(name, 80)})");
        return name;
    }
}
