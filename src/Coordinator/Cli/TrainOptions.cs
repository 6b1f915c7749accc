using System.CommandLine;
using System.Text.Json;
using DistGpt.Model;
using DistGpt.Model.Training;

namespace DistGpt.Coordinator.Cli;

/// <summary>The training flags shared by train, dev and coordinator: nanoGPT's names in kebab case. Precedence:
/// explicit flag, then --config file.json (nanoGPT's snake_case keys), then the CPU-recipe defaults.</summary>
public sealed class TrainOptions
{
    public readonly Option<int> BatchSize = new("--batch-size") { Description = "global batch size (sequences per step)" };
    public readonly Option<int> BlockSize = new("--block-size") { Description = "context length" };
    public readonly Option<int> NLayer = new("--n-layer") { Description = "transformer blocks" };
    public readonly Option<int> NHead = new("--n-head") { Description = "attention heads" };
    public readonly Option<int> NEmbd = new("--n-embd") { Description = "embedding width" };
    public readonly Option<int> VocabSize = new("--vocab-size") { Description = "model vocabulary (default: the data's tokenizer; GPT-2's 50257 padded to 50304)" };
    public readonly Option<float> Dropout = new("--dropout") { Description = "dropout probability" };
    public readonly Option<bool> Bias = new("--bias") { Description = "biases in Linear and LayerNorm layers" };
    public readonly Option<float> LearningRate = new("--learning-rate") { Description = "peak learning rate" };
    public readonly Option<float> MinLr = new("--min-lr") { Description = "learning rate at the end of the cosine decay" };
    public readonly Option<int> WarmupIters = new("--warmup-iters") { Description = "linear warmup steps" };
    public readonly Option<int> LrDecayIters = new("--lr-decay-iters") { Description = "step where the cosine decay reaches min-lr" };
    public readonly Option<bool> DecayLr = new("--decay-lr") { Description = "use the warmup + cosine schedule (default true)" };
    public readonly Option<int> MaxIters = new("--max-iters") { Description = "total training steps" };
    public readonly Option<int> EvalInterval = new("--eval-interval") { Description = "steps between evaluations" };
    public readonly Option<int> EvalIters = new("--eval-iters") { Description = "batches per split per evaluation" };
    public readonly Option<float> WeightDecay = new("--weight-decay") { Description = "AdamW weight decay (2-D weights only)" };
    public readonly Option<float> Beta1 = new("--beta1") { Description = "AdamW beta1" };
    public readonly Option<float> Beta2 = new("--beta2") { Description = "AdamW beta2" };
    public readonly Option<float> GradClip = new("--grad-clip") { Description = "clip the global gradient norm (0: off)" };
    public readonly Option<ulong> Seed = new("--seed") { Description = "seed for init, batches and dropout" };
    public readonly Option<int> CheckpointInterval = new("--checkpoint-interval") { Description = "steps between checkpoints (0: only the final one)" };
    public readonly Option<int> Threads = new("--threads") { Description = "compute threads (default: all cores)" };
    public readonly Option<string> Data = new("--data") { Description = $"a text file or a token directory (train.bin, val.bin; see `distgpt prepare`) (else ${DataLocator.EnvVar}, else {DataLocator.LocalPath}, else download)" };
    public readonly Option<string> Out = new("--out") { Description = "output directory for metrics.jsonl and checkpoints", DefaultValueFactory = _ => "out" };
    public readonly Option<bool> Resume = new("--resume") { Description = "continue from the checkpoint in --out" };
    public readonly Option<bool> Overwrite = new("--overwrite") { Description = "start afresh in an --out that holds a checkpoint, replacing it" };
    public readonly Option<string> ConfigFile = new("--config") { Description = "JSON file of settings with nanoGPT's names (n_layer, learning_rate, …)" };

    public IEnumerable<Option> All => [BatchSize, BlockSize, NLayer, NHead, NEmbd, VocabSize, Dropout, Bias, LearningRate, MinLr, WarmupIters,
        LrDecayIters, DecayLr, MaxIters, EvalInterval, EvalIters, WeightDecay, Beta1, Beta2, GradClip, Seed, CheckpointInterval,
        Threads, Data, Out, Resume, Overwrite, ConfigFile];

    public void AddTo(Command command)
    {
        foreach (var o in All) command.Options.Add(o);
    }

    /// <summary>The model shape (vocab size 0 unless given: <see cref="RunSetup"/> fills it in from the data) and the recipe.</summary>
    public (GptConfig Model, TrainSettings Train) Read(ParseResult r, GptConfig? baseModel = null, TrainSettings? baseTrain = null)
    {
        var file = LoadConfigFile(r.GetValue(ConfigFile));
        T Get<T>(Option<T> o, T fallback)
        {
            if (r.GetResult(o) is { Implicit: false }) return r.GetValue(o)!;
            string key = o.Name.TrimStart('-').Replace('-', '_');
            if (file.TryGetValue(key, out var v))
            {
                try { return v.Deserialize<T>() ?? throw new JsonException("null"); }
                catch (Exception e) when (e is JsonException or FormatException or InvalidOperationException or OverflowException)
                {
                    throw new ConfigException($"--config: '{key}' must be a {typeof(T).Name} (got {v})");
                }
            }
            return fallback;
        }
        var defaults = baseTrain ?? new TrainSettings();
        var m = baseModel ?? new GptConfig(0, 64, 4, 4, 128, 0f, false);
        var model = new GptConfig(Get(VocabSize, m.VocabSize), Get(BlockSize, m.BlockSize), Get(NLayer, m.NLayer), Get(NHead, m.NHead), Get(NEmbd, m.NEmbd), Get(Dropout, m.Dropout), Get(Bias, m.Bias));
        var train = new TrainSettings
        {
            BatchSize = Get(BatchSize, defaults.BatchSize), MaxIters = Get(MaxIters, defaults.MaxIters),
            LearningRate = Get(LearningRate, defaults.LearningRate), MinLr = Get(MinLr, defaults.MinLr),
            WarmupIters = Get(WarmupIters, defaults.WarmupIters), LrDecayIters = Get(LrDecayIters, defaults.LrDecayIters),
            DecayLr = Get(DecayLr, defaults.DecayLr), EvalInterval = Get(EvalInterval, defaults.EvalInterval),
            EvalIters = Get(EvalIters, defaults.EvalIters), WeightDecay = Get(WeightDecay, defaults.WeightDecay),
            Beta1 = Get(Beta1, defaults.Beta1), Beta2 = Get(Beta2, defaults.Beta2), GradClip = Get(GradClip, defaults.GradClip),
            Seed = Get(Seed, defaults.Seed), CheckpointInterval = Get(CheckpointInterval, defaults.CheckpointInterval),
            // Not flags: fixed by the run's first coordinator, carried by its checkpoints.
            Shares = defaults.Shares, ReplicasPerShare = defaults.ReplicasPerShare,
        };
        var known = All.Select(o => o.Name.TrimStart('-').Replace('-', '_')).ToHashSet();
        foreach (var key in file.Keys)
            if (!known.Contains(key)) throw new ConfigException($"--config: unknown setting '{key}'");
        (model with { VocabSize = Math.Max(1, model.VocabSize) }).Validate();
        train.Validate();
        return (model, train);
    }

    /// <summary>--threads, or every core.</summary>
    public int ReadThreads(ParseResult r)
    {
        int threads = r.GetResult(Threads) is { Implicit: false } ? r.GetValue(Threads) : Environment.ProcessorCount;
        return ThreadsOption.Check(threads);
    }

    static Dictionary<string, JsonElement> LoadConfigFile(string? path)
    {
        if (string.IsNullOrEmpty(path)) return new();
        if (!File.Exists(path))
            throw new ConfigException($"--config file '{path}' {(Directory.Exists(path) ? "is a directory, not a file" : "does not exist")}");
        try { return JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(File.ReadAllText(path)) ?? new(); }
        catch (JsonException e) { throw new ConfigException($"--config file '{path}' is not a JSON object of settings: {e.Message}"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new ConfigException($"--config file '{path}' cannot be read: {e.Message}"); }
    }
}
