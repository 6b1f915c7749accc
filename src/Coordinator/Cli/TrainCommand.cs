using System.CommandLine;
using DistGpt.Model;
using DistGpt.Model.Training;

namespace DistGpt.Coordinator.Cli;

/// <summary>`distgpt train`: single-process training, nanoGPT's train.py.</summary>
public static class TrainCommand
{
    public static Command Create()
    {
        var options = new TrainOptions();
        var dashboard = new DashboardOptions();
        var backends = new BackendOptions();
        var command = new Command("train", "Train a GPT in this process (nanoGPT's train.py).");
        options.AddTo(command);
        backends.AddTo(command);
        dashboard.AddTo(command);
        command.SetAction((r, cancel) => ExitCodes.Guard(() =>
        {
            dashboard.Check(r);
            using var telemetry = Telemetry.TelemetryProviders.Start(Telemetry.TelemetryProviders.CoordinatorService, null);
            Compute.Threads = options.ReadThreads(r);
            var backend = backends.Load(r);
            using var run = RunSetup.Create(options, r);
            var cfg = run.Model.Config;
            Console.WriteLine($"model: {cfg.NLayer} layers, {cfg.NHead} heads, n_embd {cfg.NEmbd}, block {cfg.BlockSize}, vocab {cfg.VocabSize}, {run.Model.Parameters.Count:N0} parameters; {Compute.Threads} threads{(backend is EngineBackend ? "" : $"; backend {backend.Name}")}; data {run.Corpus.Path}");
            if (run.StartStep > 0) Console.WriteLine($"resuming from step {run.StartStep} in {run.OutDir}");
            using var page = dashboard.Start(r, run, "train", worldSize: 1, wireDType: null);
            using var worker = backend.Create(run.Model, run.Corpus.Train, run.Settings.Seed, run.Settings.BatchSize);
            // Evaluation runs on the engine whatever the backend: the same weights, and no gradients to keep.
            using var evalGraph = worker is GradientWorker ? null : run.Model.Build(run.Settings.BatchSize, cfg.BlockSize, withGrad: false);
            var view = new ProgressView(run.Settings.MaxIters);
            var loop = new TrainingLoop(run.Model, run.Optimizer, run.Corpus, run.Settings, new LocalGradientSource(worker),
                new Evaluator(evalGraph ?? ((GradientWorker)worker).Graph, run.Settings.BatchSize, run.Corpus, run.Settings.Seed, run.Settings.EvalIters), run.OutDir, run.RunId, run.StartStep)
            {
                OnStep = m =>
                {
                    view.Report(m);
                    page?.Record(m);
                },
            };
            view.Run(run.StartStep, () => loop.Run(cancel));
            page?.End("finished");
            Console.WriteLine($"done: step {loop.Step}, val loss {loop.LastValLoss:F4}{ProgressView.WholeSplit(loop.FinalValLossFull)}; checkpoint and metrics.jsonl in {run.OutDir}");
            return 0;
        }));
        return command;
    }
}
