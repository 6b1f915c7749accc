using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using DistGpt.Model;
using DistGpt.Model.Data;
using DistGpt.Model.IO;
using DistGpt.Model.Training;

namespace DistGpt.Coordinator.Cli;

/// <summary>`distgpt bench`: times full training steps (forward, backward, clip, AdamW) on the real corpus.
/// The last line printed is one JSON object, for scripts.</summary>
public static class BenchCommand
{
    public sealed record Preset(string Name, GptConfig Model, int BatchSize);

    public static readonly Preset[] Presets =
    [
        new("tiny", new GptConfig(0, 32, 4, 4, 64, 0f, false), 16),
        new("cpu", new GptConfig(0, 64, 4, 4, 128, 0f, false), 12),
        new("shakespeare", new GptConfig(0, 256, 6, 6, 384, 0.2f, false), 64),
    ];

    public static Preset Find(string name) => Presets.FirstOrDefault(p => p.Name == name)
        ?? throw new ConfigException($"unknown --config '{name}' (choose {string.Join(", ", Presets.Select(p => p.Name))})");

    /// <summary>`distgpt bench-gemm`: the matmul kernel on every Linear shape of the presets, against this core's peak.</summary>
    public static Command CreateGemm()
    {
        var threads = ThreadsOption.Create();
        var portable = new Option<bool>("--portable") { Description = "also time the portable (non-SIMD) path" };
        var command = new Command("bench-gemm", "Time the matmul kernel on the models' Linear shapes, as GFLOPS and % of the measured peak.") { threads, portable };
        command.SetAction((r, _) => ExitCodes.Guard(() =>
        {
            Console.Write(GemmBenchmark.Run(ThreadsOption.Read(r, threads), r.GetValue(portable)));
            return 0;
        }));
        return command;
    }

    public static Command Create()
    {
        var config = new Option<string>("--config") { Description = "tiny | cpu | shakespeare", DefaultValueFactory = _ => "cpu" };
        var steps = new Option<int>("--steps") { Description = "timed steps", DefaultValueFactory = _ => 20 };
        var warmup = new Option<int>("--warmup") { Description = "untimed steps first", DefaultValueFactory = _ => 3 };
        var threads = ThreadsOption.Create();
        var data = new Option<string>("--data") { Description = "corpus file or token directory (a GPT-2 one benches vocab 50304)" };
        var command = new Command("bench", "Time training steps of a preset config on the real corpus.") { config, steps, warmup, threads, data };
        command.SetAction((r, _) => ExitCodes.Guard(() =>
        {
            var preset = Find(r.GetValue(config)!);
            Check.InRange(r.GetValue(steps), 1, 1 << 20, "--steps");
            Check.InRange(r.GetValue(warmup), 0, 1 << 20, "--warmup");
            Compute.Threads = ThreadsOption.Read(r, threads);
            var corpus = Corpus.Load(DataLocator.Resolve(r.GetValue(data)));
            var result = Run(preset, corpus, r.GetValue(steps), r.GetValue(warmup));
            Console.WriteLine(JsonSerializer.Serialize(result, Json.Options));
            return 0;
        }));
        return command;
    }

    public sealed record Result(string Config, long Params, int TokensPerStep, double MsPerStep, double TokensPerS, int Threads, int Gen0Collections);

    public static Result Run(Preset preset, Corpus corpus, int steps, int warmup)
    {
        var cfg = preset.Model with { VocabSize = corpus.DefaultVocabSize };
        using var model = new Gpt(cfg);
        model.Initialize(1337);
        var settings = new TrainSettings { BatchSize = preset.BatchSize };
        using var adam = new AdamW(model.Parameters, settings.Beta1, settings.Beta2, settings.WeightDecay);
        using var worker = new GradientWorker(model, corpus.Train, settings.Seed, preset.BatchSize);
        var times = new List<double>();
        int gen0 = 0;
        for (int s = 1; s <= warmup + steps; s++)
        {
            if (s == warmup + 1) gen0 = GC.CollectionCount(0);
            var clock = Stopwatch.StartNew();
            var sum = worker.Compute(s, 0);
            var (_, gradScale) = GradientOps.MeanClipScale(model.Parameters.Grads, sum.Tokens, settings.GradClip);
            adam.Step(settings.Schedule.At(s - 1), gradScale);
            if (s > warmup) times.Add(clock.Elapsed.TotalMilliseconds);
            Console.WriteLine($"step {s}{(s <= warmup ? " (warm-up)" : "")}: loss {sum.MeanLoss:F4}, {clock.Elapsed.TotalMilliseconds:F1} ms");
        }
        gen0 = GC.CollectionCount(0) - gen0;
        times.Sort();
        double median = times.Count % 2 == 1 ? times[times.Count / 2] : (times[times.Count / 2 - 1] + times[times.Count / 2]) / 2;
        int tokens = preset.BatchSize * cfg.BlockSize;
        return new Result(preset.Name, model.Parameters.Count, tokens, Math.Round(median, 2), Math.Round(tokens / (median / 1000), 1), Compute.Threads, gen0);
    }
}
