using System.Security.Cryptography;
using System.Text.Json;
using DistGpt.Model.Data;
using DistGpt.Model.Engine;
using DistGpt.Model.Training;

namespace DistGpt.Model.IO;

/// <summary>What checkpoint.json records beside the two safetensors files. <see cref="StateSha256"/> is the SHA-256 of
/// the rest (<see cref="Digest"/>), so an edit of the file itself is caught as a corrupted tensor file is.</summary>
public sealed record CheckpointState(
    int Format, string RunId, long Step, GptConfig Config, string Vocabulary, TrainSettings Settings,
    long OptimizerSteps, string DataSha256, IReadOnlyDictionary<string, string> FileSha256, string? StateSha256 = null,
    string? Tokenizer = null)
{
    /// <summary>The tokenizer the model was trained with; checkpoints from before token files have no field and are "char".</summary>
    public ITokenizer CreateTokenizer() => Tokenizers.Create(Tokenizer ?? Tokenizers.Char, Vocabulary);

    /// <summary>SHA-256 of the canonical JSON of every field but <see cref="StateSha256"/> (our serializer's compact form,
    /// fields in declaration order), so whitespace does not matter but any value does.</summary>
    public string Digest() =>
        Convert.ToHexString(SHA256.HashData(JsonSerializer.SerializeToUtf8Bytes(this with { StateSha256 = null }, Json.Options))).ToLowerInvariant();

    /// <summary>Every field in range and consistent with the others; throws <see cref="CheckpointException"/> naming
    /// <paramref name="path"/> and the field.</summary>
    public void Validate(string path)
    {
        void Require(bool ok, string problem)
        {
            if (!ok) throw new CheckpointException($"'{path}' is invalid: {problem}");
        }
        Require(RunId.Length > 0, "run_id is empty");
        try
        {
            Config.Validate();
            Settings.Validate();
        }
        catch (ConfigException e) { Require(false, e.Message); }
        Require(Step >= 1 && Step <= Settings.MaxIters, $"step {Step} is not in [1, max_iters {Settings.MaxIters}]");
        Require(OptimizerSteps >= 0 && OptimizerSteps <= Step, $"optimizer_steps {OptimizerSteps} is not in [0, step {Step}]");
        ITokenizer tokenizer;
        try { tokenizer = CreateTokenizer(); }
        catch (ConfigException e) { throw new CheckpointException($"'{path}' is invalid: {e.Message}"); }
        Require(tokenizer.Vocabulary == Vocabulary, $"the vocabulary is not distinct characters in order");
        Require(tokenizer.VocabSize <= Config.VocabSize, $"its {tokenizer.Name} tokenizer has {tokenizer.VocabSize} ids, more than vocab_size {Config.VocabSize}");
        Require(IsSha256(DataSha256), "data_sha256 is not a SHA-256");
        Require(FileSha256.Count == 2 && FileSha256.Values.All(IsSha256), "file_sha256 must hold the SHA-256 of the two tensor files");
    }

    static bool IsSha256(string? s) => s is { Length: 64 } && s.All(char.IsAsciiHexDigitLower);
}

/// <summary>A checkpoint directory: model.safetensors (nanoGPT state_dict names, loadable by PyTorch),
/// optimizer.safetensors (AdamW moments) and checkpoint.json (config, vocabulary, step, sampler seed, checksums).
/// Saving writes a fresh directory and swaps it in by rename, so a crash never leaves a half-written checkpoint.</summary>
public static class Checkpoint
{
    public const string DirectoryName = "ckpt";
    const string ModelFile = "model.safetensors", OptimizerFile = "optimizer.safetensors", StateFile = "checkpoint.json";
    /// <summary>2: checkpoint.json carries its own digest. Format 1 files cannot be verified and are refused.</summary>
    const int Format = 2;

    public static string PathIn(string outDir) => System.IO.Path.Combine(outDir, DirectoryName);

    /// <summary>Accepts either a run's --out directory or the checkpoint directory itself.</summary>
    public static string Resolve(string dir)
    {
        if (File.Exists(System.IO.Path.Combine(dir, StateFile))) return dir;
        string inner = PathIn(dir);
        if (File.Exists(System.IO.Path.Combine(inner, StateFile))) return inner;
        string old = inner + ".old"; // a crash between the two renames of Save leaves only this one
        if (File.Exists(System.IO.Path.Combine(old, StateFile))) return old;
        throw new CheckpointException($"no checkpoint found in '{dir}' (expected {System.IO.Path.Combine(inner, StateFile)})");
    }

    public static bool Exists(string outDir)
    {
        try { Resolve(outDir); return true; }
        catch (CheckpointException) { return false; }
    }

    /// <summary>Removes the checkpoint of <paramref name="outDir"/> and any leftovers of an interrupted save.</summary>
    public static void Delete(string outDir)
    {
        string final = PathIn(outDir);
        foreach (string dir in new[] { final + ".tmp", final + ".old", final })
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
    }

    /// <summary>A checkpoint holds every parameter's moments: one shard's optimizer alone cannot be saved or loaded.</summary>
    internal static void RequireWhole(AdamW optimizer, FlatParameters parameters)
    {
        if (optimizer.Range.Offset != 0 || optimizer.Range.Length != parameters.Count)
            throw new InvalidOperationException($"the optimizer holds parameters [{optimizer.Range.Offset}, {optimizer.Range.End}) of {parameters.Count}: gather the shards' moments first");
    }

    public static void Save(string outDir, Gpt model, AdamW optimizer, ITokenizer tokenizer, TrainSettings settings,
        long step, string runId, string dataSha256)
    {
        string final = PathIn(outDir), tmp = final + ".tmp", old = final + ".old";
        string writing = tmp;
        try
        {
            Directory.CreateDirectory(outDir);
            if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
            Directory.CreateDirectory(tmp);
            WriteFiles(tmp, model, optimizer, tokenizer, settings, step, runId, dataSha256, path => writing = path);
            // The swap: until the first rename the old checkpoint is whole in `final`; between the two, in `old`
            // (which Resolve falls back to); after the second the new one is.
            writing = final;
            if (Directory.Exists(old)) Directory.Delete(old, true);
            if (Directory.Exists(final)) Directory.Move(final, old);
            Directory.Move(tmp, final);
            if (Directory.Exists(old)) Directory.Delete(old, true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            try { if (Directory.Exists(tmp)) Directory.Delete(tmp, true); }
            catch (Exception) { } // the error below names the problem; a leftover tmp is removed by the next save
            throw OutputWriteException.Writing(writing, e);
        }
    }

    static unsafe void WriteFiles(string tmp, Gpt model, AdamW optimizer, ITokenizer tokenizer, TrainSettings settings,
        long step, string runId, string dataSha256, Action<string> writing)
    {
        var p = model.Parameters;

        var weights = p.Slots.Select(s => (s.Name, s.Shape, (ReadOnlyMemory<float>)p.ValuesOf(s).ToArray())).ToList();
        var wte = p.Slot("transformer.wte.weight");
        weights.Add(("lm_head.weight", wte.Shape, p.ValuesOf(wte).ToArray())); // tied: stored twice so load_state_dict(strict=True) works
        var meta = new Dictionary<string, string> { ["format"] = "pt", ["step"] = step.ToString() };
        string modelSha = WriteDurably(System.IO.Path.Combine(tmp, ModelFile), s => SafeTensors.Write(s, weights, meta), writing);

        RequireWhole(optimizer, p);
        var moments = new List<(string, int[], ReadOnlyMemory<float>)>();
        foreach (var s in p.Slots)
            moments.Add(("exp_avg." + s.Name, s.Shape, new Span<float>(optimizer.ExpAvg.Pointer + s.Offset, (int)s.Length).ToArray()));
        foreach (var s in p.Slots)
            moments.Add(("exp_avg_sq." + s.Name, s.Shape, new Span<float>(optimizer.ExpAvgSq.Pointer + s.Offset, (int)s.Length).ToArray()));
        string optSha = WriteDurably(System.IO.Path.Combine(tmp, OptimizerFile), s => SafeTensors.Write(s, moments), writing);

        var state = new CheckpointState(Format, runId, step, model.Config, tokenizer.Vocabulary, settings, optimizer.StepCount, dataSha256,
            new Dictionary<string, string> { [ModelFile] = modelSha, [OptimizerFile] = optSha }, Tokenizer: tokenizer.Name);
        state = state with { StateSha256 = state.Digest() };
        WriteDurably(System.IO.Path.Combine(tmp, StateFile), s => JsonSerializer.Serialize(s, state, Json.Indented), writing);
    }

    static string WriteDurably(string path, Action<Stream> write, Action<string> writing)
    {
        writing(path);
        using (var f = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
        {
            write(f);
            f.Flush(flushToDisk: true);
        }
        using var r = File.OpenRead(path);
        return Convert.ToHexString(SHA256.HashData(r)).ToLowerInvariant();
    }

    /// <summary>Reads and verifies checkpoint.json and the checksums of both tensor files; loads nothing into a model.</summary>
    public static LoadedCheckpoint Open(string dir)
    {
        dir = Resolve(dir);
        string statePath = System.IO.Path.Combine(dir, StateFile);
        CheckpointState state;
        try { state = JsonSerializer.Deserialize<CheckpointState>(File.ReadAllBytes(statePath), Json.Strict) ?? throw new JsonException("empty"); }
        catch (JsonException e) { throw new CheckpointException($"'{statePath}' is corrupted: {e.Message}"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new CheckpointException($"cannot read '{statePath}': {e.Message}"); }
        if (state.Format != Format)
            throw new CheckpointException($"'{statePath}' has format {state.Format}; this build reads format {Format} only (older checkpoints carry no digest of {StateFile}, so they cannot be verified)");
        if (state.StateSha256 != state.Digest())
            throw new CheckpointException($"'{statePath}' has been edited or corrupted (its content does not match the SHA-256 recorded in it)");
        state.Validate(statePath);
        SafeTensors.File Verified(string name)
        {
            string path = System.IO.Path.Combine(dir, name);
            if (!File.Exists(path)) throw new CheckpointException($"checkpoint file '{path}' is missing");
            string sha;
            try
            {
                using var f = File.OpenRead(path);
                sha = Convert.ToHexString(SHA256.HashData(f)).ToLowerInvariant();
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new CheckpointException($"cannot read '{path}': {e.Message}"); }
            if (!state.FileSha256.TryGetValue(name, out var expected) || expected != sha)
                throw new CheckpointException($"checkpoint file '{path}' is corrupted or truncated (SHA-256 {sha[..12]}… does not match the one recorded in {StateFile})");
            return SafeTensors.Read(path);
        }
        return new LoadedCheckpoint(dir, state, Verified(ModelFile), Verified(OptimizerFile));
    }
}

public sealed record LoadedCheckpoint(string Directory, CheckpointState State, SafeTensors.File Weights, SafeTensors.File Moments)
{
    /// <summary>Copies the weights into a model of the same config, checking every name and shape first.</summary>
    public void LoadWeights(Gpt model)
    {
        RequireConfig(model.Config);
        var p = model.Parameters;
        foreach (var s in p.Slots) Check(Weights[s.Name], s);
        foreach (var s in p.Slots) Weights[s.Name].Floats.CopyTo(p.ValuesOf(s));
    }

    public unsafe void LoadOptimizer(Gpt model, AdamW optimizer)
    {
        var p = model.Parameters;
        Checkpoint.RequireWhole(optimizer, p);
        foreach (var s in p.Slots) { Check(Moments["exp_avg." + s.Name], s); Check(Moments["exp_avg_sq." + s.Name], s); }
        foreach (var s in p.Slots)
        {
            Moments["exp_avg." + s.Name].Floats.CopyTo(new Span<float>(optimizer.ExpAvg.Pointer + s.Offset, (int)s.Length));
            Moments["exp_avg_sq." + s.Name].Floats.CopyTo(new Span<float>(optimizer.ExpAvgSq.Pointer + s.Offset, (int)s.Length));
        }
        optimizer.StepCount = State.OptimizerSteps;
    }

    public void RequireConfig(GptConfig config)
    {
        var saved = State.Config;
        if (saved with { Dropout = config.Dropout } != config)
            throw new CheckpointException($"checkpoint '{Directory}' was trained with a different model config ({Describe(saved)}) than requested ({Describe(config)})");
    }

    static string Describe(GptConfig c) => $"n_layer {c.NLayer}, n_head {c.NHead}, n_embd {c.NEmbd}, block_size {c.BlockSize}, vocab_size {c.VocabSize}, bias {c.Bias}";

    void Check(SafeTensors.Entry e, Engine.ParameterSlot s)
    {
        if (e.DType != "F32" || !e.Shape.SequenceEqual(s.Shape))
            throw new CheckpointException($"checkpoint '{Directory}': tensor '{e.Name}' has shape [{string.Join(",", e.Shape)}], the model needs [{string.Join(",", s.Shape)}]");
    }
}
