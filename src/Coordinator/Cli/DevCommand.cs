using System.CommandLine;
using System.Security.Cryptography;
using DistGpt.Contracts;
using DistGpt.Coordinator.Hosting;
using DistGpt.Coordinator.Training;
using DistGpt.Model;
using DistGpt.Model.Training;

namespace DistGpt.Coordinator.Cli;

/// <summary>`distgpt dev`: the coordinator plus N worker silo processes on this machine, one command.</summary>
public static class DevCommand
{
    public static Command Create()
    {
        var train = new TrainOptions();
        var cluster = new ClusterOptions();
        var dashboard = new DashboardOptions();
        var workers = new Option<int>("--workers") { Description = "worker processes to start", DefaultValueFactory = _ => 2 };
        var workerThreads = new Option<int>("--worker-threads") { Description = "threads per worker (default: cores / workers)" };
        var restart = new Option<bool>("--restart-workers") { Description = "restart a crashed worker process (bounded) and keep training", DefaultValueFactory = _ => true };
        var maxRestarts = new Option<int>("--max-restarts") { Description = "restarts allowed over the run", DefaultValueFactory = _ => 5 };
        var transport = new Option<string>("--transport")
        {
            Description = "how tensors move between the processes: shm (through /dev/shm, headers on the socket) or tcp (all on the socket)",
            DefaultValueFactory = _ => "shm",
        };
        var workerBackends = new Option<string>("--worker-backends")
        {
            Description = "what computes each worker's gradients, comma-separated in worker order, e.g. engine,torch (a shorter list repeats its last entry; torch needs a build with -p:DistGptTorch=true)",
            DefaultValueFactory = _ => "engine",
        };
        var command = new Command("dev", "Train with a coordinator and N worker processes on this machine.") { workers, workerThreads, restart, maxRestarts, transport, workerBackends };
        train.AddTo(command);
        cluster.AddTo(command);
        dashboard.AddTo(command);
        command.SetAction((r, cancel) => ExitCodes.GuardAsync(async () =>
        {
            using var telemetry = Telemetry.TelemetryProviders.Start(Telemetry.TelemetryProviders.CoordinatorService, null); // children inherit OTEL_*
            int n = r.GetValue(workers);
            Check.InRange(n, 1, 256, "--workers");
            int perWorker = r.GetResult(workerThreads) is { Implicit: false } ? r.GetValue(workerThreads) : Math.Max(1, Environment.ProcessorCount / n);
            Check.InRange(perWorker, 1, ThreadsOption.Max, "--worker-threads");
            Check.InRange(r.GetValue(maxRestarts), 0, 1 << 20, "--max-restarts");
            dashboard.Check(r);
            Compute.Threads = train.ReadThreads(r);
            Compute.HelperSpin = TimeSpan.Zero; // the workers' kernels share these cores
            bool restarting = r.GetValue(restart);
            string mode = r.GetValue(transport)!;
            if (mode is not ("shm" or "tcp")) throw new ConfigException($"--transport must be shm or tcp (got '{mode}')");
            var backends = GradientBackends.ParseList(r.GetValue(workerBackends)!, n);
            var backendOf = Enumerable.Range(0, n).ToDictionary(i => $"worker-{i}", i => backends[i]);
            foreach (var b in backends.Distinct()) GradientBackends.Load(b, "cpu"); // a missing backend fails here, before any process starts
            int shards = cluster.ParameterShards(r);
            string token = cluster.Token(r) ?? Convert.ToHexString(RandomNumberGenerator.GetBytes(24)).ToLowerInvariant();
            int dataPort = FreePortTriple();
            var settings = new CoordinatorSettings
            {
                Listen = new Uri($"http://127.0.0.1:{dataPort}"), SiloPort = Fabric.FabricHosting.SiloPortOf(dataPort), GatewayPort = Fabric.FabricHosting.GatewayPortOf(dataPort),
                MinWorkers = n, ClusterToken = token,
                HeartbeatTimeout = cluster.Seconds(r, cluster.HeartbeatTimeout), JoinTimeout = TimeSpan.FromSeconds(Math.Min(120, cluster.Seconds(r, cluster.JoinTimeout).TotalSeconds)),
                TolerateFailures = restarting, StragglerTimeout = cluster.Straggler(r), MaxRejections = cluster.Rejections(r),
                // With parameter shards the tensors move between the workers, over their peer-plane sockets.
                GradientDType = cluster.GradientDType(r), GradientBucketBytes = cluster.BucketBytes(r), OfferSharedMemory = mode == "shm" && shards == 1,
                ReplicasPerShare = perWorker, ParameterShards = shards,
            };
            using var weights = new Hosting.SharedWeights(); // outlives the model (disposed after it)
            using var setup = RunSetup.Create(train, r, settings.OfferSharedMemory ? weights.Allocate : null);
            settings = settings with { SharedWeights = weights.Region };
            CoordinatorCommand.PrintModel(setup);
            Console.WriteLine($"dev mode: {n} worker processes × {perWorker} threads{(backends.All(b => b == "engine") ? "" : $", backends {string.Join(',', backends)}")}");
            await using var page = dashboard.Start(r, setup, "dev", n, settings.GradientDType.Name());
            using var failed = CancellationTokenSource.CreateLinkedTokenSource(cancel);
            string? failure = null;
            WorkerProcesses? processes = null;
            string? tokenFile = null;
            try
            {
                int code = await DistributedTraining.RunAsync(setup, settings, new ProgressView(setup.Settings.MaxIters), address =>
                {
                    processes = new WorkerProcesses(name =>
                    {
                        var info = WorkerProcesses.SelfCommand(["worker", "--coordinator", address.ToString(), "--name", name,
                            "--threads", perWorker.ToString(), "--data", setup.Corpus.Path, "--connect-timeout", "20",
                            "--backend", backendOf[name],
                            ..(settings.OfferSharedMemory ? new[] { "--shared-memory" } : [])]);
                        info.Environment[ClusterOptions.TokenEnvVar] = token; // not on the command line, where ps would show it
                        return info;
                    }, restarting ? r.GetValue(maxRestarts) : 0);
                    processes.Failed += why =>
                    {
                        failure = why;
                        Console.Error.WriteLine($"[dev] {why}; stopping the run");
                        failed.Cancel();
                    };
                    foreach (var name in backendOf.Keys) processes.Start(name);
                    tokenFile = WriteToken(setup.OutDir, token);
                    Console.WriteLine($"[dev] watch it: DISTGPT_CLUSTER_TOKEN=$(cat {tokenFile}) distgpt status --coordinator {address}");
                    return Task.CompletedTask;
                }, failed.Token, page == null ? null : page.Record);
                page?.End("finished");
                return code;
            }
            catch (OperationCanceledException) when (failure != null)
            {
                throw new RunFailedException(failure);
            }
            finally
            {
                processes?.Dispose();
                if (tokenFile != null) File.Delete(tokenFile);
            }
        }));
        return command;
    }

    /// <summary>The run's random token, readable by this user only, for `distgpt status` while the run lasts.</summary>
    static string WriteToken(string outDir, string token)
    {
        string path = Path.Combine(outDir, "cluster-token");
        File.Delete(path);
        using (var f = new FileStream(path, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite }))
            f.Write(System.Text.Encoding.UTF8.GetBytes(token));
        return path;
    }

    /// <summary>A data-plane port whose two successors (the silo and gateway ports) are free too on 127.0.0.1.</summary>
    static int FreePortTriple()
    {
        for (int attempt = 0; ; attempt++)
        {
            int port = Fabric.FabricHosting.FreePort(System.Net.IPAddress.Loopback);
            if (port + 2 > 65535) continue;
            try
            {
                using var silo = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, port + 1);
                using var gateway = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, port + 2);
                silo.Start();
                gateway.Start();
                return port;
            }
            catch (System.Net.Sockets.SocketException) when (attempt < 50) { }
        }
    }
}
