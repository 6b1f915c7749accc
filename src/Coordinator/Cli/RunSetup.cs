using System.CommandLine;
using DistGpt.Model;
using DistGpt.Model.Data;
using DistGpt.Model.IO;
using DistGpt.Model.Training;

namespace DistGpt.Coordinator.Cli;

/// <summary>Everything a training run starts from: corpus, model (fresh or from the checkpoint in --out), optimizer, step.</summary>
public sealed class RunSetup : IDisposable
{
    public required Corpus Corpus { get; init; }
    public required Gpt Model { get; init; }
    public required AdamW Optimizer { get; init; }
    public required TrainSettings Settings { get; init; }
    public required long StartStep { get; init; }
    public required string RunId { get; init; }
    public required string OutDir { get; init; }
    /// <summary>Held (locked) until the run is disposed.</summary>
    public required OutputDirectory Output { get; init; }

    /// <param name="parameterMemory">where the model's weights live (dev mode: <see cref="Hosting.SharedWeights"/>); default their own buffer</param>
    public static RunSetup Create(TrainOptions options, ParseResult r, Func<long, Model.Engine.NativeBuffer>? parameterMemory = null)
    {
        var output = OutputDirectory.Claim(r.GetValue(options.Out)!, r.GetValue(options.Resume), r.GetValue(options.Overwrite));
        try { return Create(options, r, output, parameterMemory); }
        catch
        {
            output.Dispose();
            throw;
        }
    }

    static RunSetup Create(TrainOptions options, ParseResult r, OutputDirectory output, Func<long, Model.Engine.NativeBuffer>? parameterMemory)
    {
        string outDir = output.Path;
        var ckpt = r.GetValue(options.Resume) ? Checkpoint.Open(outDir) : null;
        var (modelConfig, settings) = options.Read(r, ckpt?.State.Config, ckpt?.State.Settings);
        string dataPath = DataLocator.Resolve(r.GetValue(options.Data));
        var corpus = Corpus.Load(dataPath, ckpt?.State.CreateTokenizer());
        if (modelConfig.VocabSize == 0) modelConfig = modelConfig with { VocabSize = corpus.DefaultVocabSize };
        corpus.RequireVocab(modelConfig.VocabSize);
        MemoryEstimate.ForTraining(modelConfig, settings.BatchSize, Compute.Threads)
            .RequireAtMost(MemoryEstimate.AvailableBytes(), settings.BatchSize, modelConfig.BlockSize);
        corpus.RequireBlock(modelConfig.BlockSize);
        if (ckpt != null && ckpt.State.Step >= settings.MaxIters)
            throw new ConfigException($"--resume: the checkpoint in '{outDir}' is at step {ckpt.State.Step}; pass a --max-iters above it to train further");

        var model = new Gpt(modelConfig, values: parameterMemory);
        var optimizer = new AdamW(model.Parameters, settings.Beta1, settings.Beta2, settings.WeightDecay);
        if (ckpt != null)
        {
            ckpt.LoadWeights(model);
            ckpt.LoadOptimizer(model, optimizer);
        }
        else model.Initialize(settings.Seed);
        return new RunSetup
        {
            Corpus = corpus, Model = model, Optimizer = optimizer, Settings = settings, OutDir = outDir, Output = output,
            StartStep = ckpt?.State.Step ?? 0, RunId = ckpt?.State.RunId ?? Guid.NewGuid().ToString("n")[..12],
        };
    }

    public void Dispose()
    {
        Optimizer.Dispose();
        Model.Dispose();
        Output.Dispose();
    }
}
