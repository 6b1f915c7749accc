using DistGpt.Contracts;
using DistGpt.Coordinator.Cli;
using DistGpt.Coordinator.Grains;
using DistGpt.Coordinator.Hosting;
using DistGpt.Model;
using DistGpt.Model.IO;
using DistGpt.Model.Training;

namespace DistGpt.Coordinator.Training;

/// <summary>Coordinator settings beyond the training recipe.</summary>
public sealed record CoordinatorSettings
{
    /// <summary>The data plane's address (the one workers are given).</summary>
    public required Uri Listen { get; init; }
    /// <summary>The coordinator's Orleans silo and gateway ports, and the address the silo advertises (null: --listen's).</summary>
    public required int SiloPort { get; init; }
    public required int GatewayPort { get; init; }
    public System.Net.IPAddress? Advertise { get; init; }
    public int MinWorkers { get; init; } = 1;
    public string? ClusterToken { get; init; }
    public TimeSpan HeartbeatTimeout { get; init; } = TimeSpan.FromSeconds(10);
    public TimeSpan JoinTimeout { get; init; } = TimeSpan.FromMinutes(10);
    public bool TolerateFailures { get; init; }
    public TimeSpan? StragglerTimeout { get; init; }
    public int MaxRejections { get; init; } = 3;
    /// <summary>Element type of the workers' gradient payloads (--wire-dtype).</summary>
    public WireDType GradientDType { get; init; } = WireDType.Fp32;
    /// <summary>Bucket size for streaming gradient sums during the backward (--bucket-cap-mb); 0 sends them whole after it.</summary>
    public long GradientBucketBytes { get; init; } = ClusterOptions.DefaultBucketBytes;
    /// <summary>Graphs every worker cuts a share into (--replicas-per-share; dev: --worker-threads), whatever its own
    /// --threads: a share's gradient sum then has the same bits whoever computes it. A resumed run keeps its checkpoint's.</summary>
    public int ReplicasPerShare { get; init; }
    public string? TlsCert { get; init; }
    /// <summary>TLS between the silos and at the gateway (with https://): this node's certificate and the cluster's CA.</summary>
    public Fabric.FabricTls? SiloTls { get; init; }
    public string? TlsKey { get; init; }
    /// <summary>Offer /dev/shm payload regions to workers that run on this host (dev mode's children).</summary>
    public bool OfferSharedMemory { get; init; }
    /// <summary>--shards: 1 the coordinator holds the weights and optimizer; K (0: one per worker) the worker silos hold them in K ranges.</summary>
    public int ParameterShards { get; init; } = 1;
    /// <summary>The region the model's weights live in (<see cref="Hosting.SharedWeights"/>), mapped by those workers.</summary>
    public Contracts.Wire.SharedMemoryRegion? SharedWeights { get; init; }
}

/// <summary>The coordinator's run: host the silo (coordinator grain) and the data plane, wait for the workers, train with their
/// gradients, tell them to stop.</summary>
public static class DistributedTraining
{
    public static async Task<int> RunAsync(RunSetup setup, CoordinatorSettings settings, ProgressView view,
        Func<Uri, Task>? onListening, CancellationToken cancel, Action<StepMetrics>? observe = null)
    {
        // How the batch is cut is fixed by the run's first coordinator, for good: a resumed run keeps its checkpoint's.
        var train = setup.Settings.Shares > 0 ? setup.Settings
            : setup.Settings with { Shares = settings.MinWorkers, ReplicasPerShare = settings.ReplicasPerShare };
        if (train.BatchSize % train.Shares != 0)
            throw new ConfigException(train.Shares == settings.MinWorkers
                ? $"--batch-size {train.BatchSize} does not divide among {settings.MinWorkers} workers; use a multiple of {settings.MinWorkers}"
                : $"--batch-size {train.BatchSize} does not divide into the {train.Shares} shares this run started with; use a multiple of {train.Shares}");
        Action<string> log = msg => Telemetry.TraceLog.Write("coordinator", msg);
        var model = setup.Model;
        var run = new RunDescription(setup.RunId, model.Config, setup.Corpus.Tokenizer.Vocabulary, train.Seed, model.Parameters.Count,
            setup.Corpus.Sha256, settings.ClusterToken, settings.HeartbeatTimeout, settings.GradientDType, settings.GradientBucketBytes,
            train.ReplicasPerShare, settings.ParameterShards == 1 ? null : Convert.ToHexString(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32)));
        var grain = new RunMembership(run, log);
        var progress = new RunProgress(run.RunId, train.MaxIters);
        Telemetry.CoordinatorTelemetry.Watch(grain);
        var endpoints = CoordinatorSilo.EndpointsFor(CoordinatorHost.ListenAddress(settings.Listen), settings.Advertise, settings.SiloPort, settings.GatewayPort);
        await using var silo = await CoordinatorSilo.StartAsync(endpoints, settings.ClusterToken, settings.HeartbeatTimeout, grain, progress, log, settings.SiloTls, cancel);
        await using var host = await CoordinatorHost.StartAsync(settings.Listen, grain, name => silo.Grains.GetGrain<IWorkerGrain>(name), log,
            settings.TlsCert, settings.TlsKey, settings.OfferSharedMemory, settings.SharedWeights);
        TrainingLoop? loop = null;
        try
        {
            if (onListening != null) await onListening(host.Address);
            log($"run {run.RunId}: waiting for {settings.MinWorkers} worker(s); gradients on the wire as {run.GradientDType.Name()}");
            await grain.WaitForAsync(settings.MinWorkers, settings.JoinTimeout, cancel);

            var sharded = run.PeerSecret == null ? null
                : new ShardedParameters(grain, model, setup.Optimizer, run, settings.ParameterShards, train.Shares, log);
            grain.ShardFrames = sharded == null ? null : sharded.OnFrameAsync;
            sharded?.Watch();
            using var source = new DistributedGradientSource(grain, model, setup.Corpus, train, run,
                new DistributedOptions
                {
                    Shares = train.Shares, TolerateFailures = settings.TolerateFailures, StragglerTimeout = settings.StragglerTimeout, MaxRejections = settings.MaxRejections,
                }, log)
            {
                ParameterShards = sharded,
                OnWorkerDropped = (worker, reason) =>
                {
                    grain.Leave(worker, reason);
                    (worker as RemoteWorker)?.Abort();
                },
            };
            using var evalGraph = model.Build(train.BatchSize, model.Config.BlockSize, withGrad: false);
            loop = new TrainingLoop(model, setup.Optimizer, setup.Corpus, train, source,
                new Evaluator(evalGraph, train.BatchSize, setup.Corpus, train.Seed, train.EvalIters), setup.OutDir, setup.RunId, setup.StartStep)
            {
                Remote = sharded,
                OnStep = m =>
                {
                    progress.Report(m);
                    view.Report(m, WorkerSummary(m));
                    observe?.Invoke(m);
                },
            };
            await Task.Run(() => view.Run(setup.StartStep, () => loop.Run(cancel)), cancel);
            log($"done: step {loop.Step}, val loss {loop.LastValLoss:F4}{ProgressView.WholeSplit(loop.FinalValLossFull)}; checkpoint and metrics.jsonl in {setup.OutDir}");
            silo.RunOver = true;
            await Task.WhenAll(grain.Members().Select(w => w.ShutdownAsync($"training finished at step {loop.Step}")));
            return ExitCodes.Ok;
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
            // Stopped (SIGTERM from `docker stop` or Kubernetes, or Ctrl-C): keep the last whole step for --resume, then
            // tell the workers, within the couple of seconds a container runtime allows.
            log(StoppedAt(loop, setup));
            silo.RunOver = true;
            await Task.WhenAll(grain.Members().Select(w => w.ShutdownAsync("the coordinator stopped")));
            throw;
        }
        catch
        {
            silo.RunOver = true;
            await Task.WhenAll(grain.Members().Select(w => w.ShutdownAsync("the coordinator stopped")));
            throw;
        }
    }

    static string StoppedAt(TrainingLoop? loop, RunSetup setup)
    {
        if (loop == null || loop.Step == setup.StartStep)
            return $"stopped before a step was trained: {(setup.StartStep > 0 ? $"the checkpoint of step {setup.StartStep} stands" : "no checkpoint written")}";
        try
        {
            return loop.CheckpointOnStop()
                ? $"stopped at step {loop.Step}: checkpoint saved in {setup.OutDir} (continue with --resume)"
                : $"stopped at step {loop.Step}: its checkpoint is already in {setup.OutDir}";
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or OutputWriteException or RunFailedException)
        {
            return $"stopped at step {loop.Step}: no checkpoint written ({e.Message}); the last one is of step {loop.CheckpointStep}";
        }
    }

    static string? WorkerSummary(StepMetrics m)
    {
        if (m.Extra?.GetValueOrDefault("worker_compute_ms") is not Dictionary<string, double> perWorker) return null;
        return $"{m.Workers} workers, compute " + string.Join(" ", perWorker.Select(kv => $"{kv.Key} {kv.Value:F0}ms"));
    }
}
