using System.Runtime.InteropServices;
using System.Text;
using DistGpt.Model;
using DistGpt.Model.Data;
using DistGpt.Model.IO;
using DistGpt.Model.Training;
using Xunit;
using Xunit.Abstractions;

namespace DistGpt.Tests;

/// <summary>In-process training on the real corpus (Tiny Shakespeare, see <see cref="TestData"/>): the loss falls,
/// checkpoints round-trip bit for bit, a resumed run replays the uninterrupted one exactly, corrupted checkpoints and
/// bad corpora are refused with messages naming the file.</summary>
public sealed class TrainingTests(ITestOutputHelper output) : IDisposable
{
    readonly TempDirectory temp = new("training");

    public void Dispose() => temp.Dispose();

    /// <summary>A model, optimizer, gradient worker and loop wired as `distgpt train` wires them.</summary>
    sealed class Run : IDisposable
    {
        public required Gpt Model { get; init; }
        public required AdamW Optimizer { get; init; }
        public required GradientWorker Worker { get; init; }
        public required TrainingLoop Loop { get; init; }

        public void Dispose()
        {
            Worker.Dispose();
            Optimizer.Dispose();
            Model.Dispose();
        }
    }

    static Run NewRun(GptConfig config, TrainSettings settings, string outDir, LoadedCheckpoint? resumeFrom = null, Action<StepMetrics>? onStep = null)
    {
        var corpus = TestData.Corpus;
        var model = new Gpt(config);
        var optimizer = new AdamW(model.Parameters, settings.Beta1, settings.Beta2, settings.WeightDecay);
        if (resumeFrom != null)
        {
            resumeFrom.LoadWeights(model);
            resumeFrom.LoadOptimizer(model, optimizer);
        }
        else model.Initialize(settings.Seed);
        var worker = new GradientWorker(model, corpus.Train, settings.Seed, settings.BatchSize);
        var loop = new TrainingLoop(model, optimizer, corpus, settings, new LocalGradientSource(worker),
            new Evaluator(worker.Graph, settings.BatchSize, corpus, settings.Seed, settings.EvalIters), outDir,
            resumeFrom?.State.RunId ?? "test-run", resumeFrom?.State.Step ?? 0)
        {
            OnStep = onStep,
        };
        return new Run { Model = model, Optimizer = optimizer, Worker = worker, Loop = loop };
    }

    static GptConfig Config(int layers, int embd, int heads, int block, float dropout = 0f, bool bias = false) =>
        new(TestData.Corpus.Tokenizer.VocabSize, block, layers, heads, embd, dropout, bias);

    static List<StepMetrics> Metrics(string outDir) => MetricsLog.Read(Path.Combine(outDir, "metrics.jsonl")).ToList();

    // ---------------------------------------------------------------- (a) learning

    [Fact]
    public void HundredStepsOfASmallModelClearlyLowerTheLoss()
    {
        var settings = new TrainSettings
        {
            BatchSize = 8, MaxIters = 100, LearningRate = 1e-3f, MinLr = 1e-4f, WarmupIters = 10, LrDecayIters = 100,
            EvalInterval = 50, EvalIters = 2, CheckpointInterval = 0, Seed = 1337,
        };
        string dir = temp.Subdirectory("learn");
        using var run = NewRun(Config(layers: 2, embd: 64, heads: 4, block: 32), settings, dir);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        run.Loop.Run();
        output.WriteLine($"100 steps in {clock.Elapsed.TotalSeconds:F1} s");

        var m = Metrics(dir);
        Assert.Equal(Enumerable.Range(1, 100).Select(i => (long)i), m.Select(x => x.Step));
        float first = m[0].Loss;
        double lastTen = m.TakeLast(10).Average(x => x.Loss);
        output.WriteLine($"first loss {first:F4}, mean of the last 10 {lastTen:F4}, val loss {m[^1].ValLoss:F4}");
        Assert.InRange(first, 3.5f, 5f); // ≈ ln(65) at init
        Assert.True(lastTen < first - 0.8, $"mean of the last 10 losses {lastTen:F4} is not below the first {first:F4} - 0.8");
        Assert.All(m, x => Assert.True(float.IsFinite(x.Loss) && x.GradNorm > 0 && x.Lr > 0));
        Assert.NotNull(m[49].ValLoss);
        Assert.NotNull(m[99].ValLoss);
        Assert.True(m[99].ValLoss < first - 0.5, $"val loss {m[99].ValLoss} did not fall from {first}");
        Assert.Equal(100, run.Optimizer.StepCount);
    }

    [Fact]
    public void TheLastStepAlsoMeasuresTheWholeValidationSplitWindowByWindow()
    {
        var settings = new TrainSettings
        {
            BatchSize = 8, MaxIters = 20, LearningRate = 1e-3f, MinLr = 1e-4f, WarmupIters = 5, LrDecayIters = 20,
            EvalInterval = 10, EvalIters = 2, CheckpointInterval = 0, Seed = 7,
        };
        string dir = temp.Subdirectory("whole-split");
        var config = Config(layers: 1, embd: 32, heads: 2, block: 16);
        using var run = NewRun(config, settings, dir);
        run.Loop.Run();
        var m = Metrics(dir);
        Assert.Null(m[9].ValLossFull);
        Assert.NotNull(m[9].ValLoss);
        float full = Assert.NotNull(m[19].ValLossFull);
        Assert.Equal(full, run.Loop.FinalValLossFull);

        // Independently: every non-overlapping window of the val split, one at a time, through a batch-1 graph.
        var val = TestData.Corpus.Val;
        int t = config.BlockSize;
        long windows = (val.Length - 1) / t;
        using var single = run.Model.Build(1, t, withGrad: false);
        double sum = 0;
        for (long w = 0; w < windows; w++)
        {
            for (int i = 0; i < t; i++)
            {
                single.Tokens[i] = val[w * t + i];
                single.Targets[i] = val[w * t + i + 1];
            }
            sum += single.Forward() * t;
        }
        double expected = sum / (windows * t);
        output.WriteLine($"whole val split {full:F6} (window by window {expected:F6}), sampled val loss {m[19].ValLoss:F6}");
        Assert.Equal(expected, full, 4e-5);
        Assert.NotEqual(m[19].ValLoss, full); // the sampled estimate is a different number
    }

    // ---------------------------------------------------------------- (b) checkpoint round trip

    [Fact]
    public void ACheckpointHoldsTheModelsWeightsBitForBitAndALoadedModelSamplesTheSameTokens()
    {
        var settings = new TrainSettings
        {
            BatchSize = 4, MaxIters = 8, LearningRate = 3e-3f, WarmupIters = 2, LrDecayIters = 8, EvalInterval = 8, EvalIters = 1,
            CheckpointInterval = 0,
        };
        string dir = temp.Subdirectory("roundtrip");
        using var run = NewRun(Config(layers: 2, embd: 32, heads: 2, block: 32, bias: true), settings, dir);
        run.Loop.Run();
        var p = run.Model.Parameters;

        var ckpt = Checkpoint.Open(dir);
        Assert.Equal(8, ckpt.State.Step);
        Assert.Equal(8, ckpt.State.OptimizerSteps);
        Assert.Equal(run.Model.Config, ckpt.State.Config);
        Assert.Equal(settings, ckpt.State.Settings);
        Assert.Equal(TestData.Corpus.Tokenizer.Vocabulary, ckpt.State.Vocabulary);
        Assert.Equal("char", ckpt.State.Tokenizer);
        Assert.Equal(TestData.Corpus.Sha256, ckpt.State.DataSha256);
        foreach (var slot in p.Slots)
            AssertBitEqual(p.ValuesOf(slot), ckpt.Weights[slot.Name].Floats, slot.Name);
        AssertBitEqual(p.ValuesOf(p.Slot("transformer.wte.weight")), ckpt.Weights["lm_head.weight"].Floats, "lm_head.weight (tied to wte)");
        unsafe
        {
            foreach (var slot in p.Slots)
            {
                AssertBitEqual(new ReadOnlySpan<float>(run.Optimizer.ExpAvg.Pointer + slot.Offset, (int)slot.Length), ckpt.Moments["exp_avg." + slot.Name].Floats, "exp_avg." + slot.Name);
                AssertBitEqual(new ReadOnlySpan<float>(run.Optimizer.ExpAvgSq.Pointer + slot.Offset, (int)slot.Length), ckpt.Moments["exp_avg_sq." + slot.Name].Floats, "exp_avg_sq." + slot.Name);
            }
        }

        using var loaded = new Gpt(ckpt.State.Config);
        ckpt.LoadWeights(loaded);
        AssertBitEqual(p.Values.Span, loaded.Parameters.Values.Span, "flat parameters after LoadWeights");

        var tokenizer = CharTokenizer.FromCharacters(ckpt.State.Vocabulary);
        int[] prompt = tokenizer.Encode("ROMEO:");
        int[] Sample(Gpt model, ulong seed, int topK)
        {
            using var gen = new Generator(model);
            return gen.Generate(prompt, maxNewTokens: 40, temperature: 1f, topK: topK, seed: seed);
        }
        foreach (int topK in new[] { 0, 10 })
        {
            var original = Sample(run.Model, 42, topK);
            var reloaded = Sample(loaded, 42, topK);
            output.WriteLine($"top-k {topK}: {tokenizer.Decode(original)}");
            Assert.Equal(prompt.Length + 40, original.Length);
            Assert.Equal(original, reloaded);
            Assert.NotEqual(original, Sample(loaded, 43, topK)); // the seed matters, so the equality above is not vacuous
        }
    }

    // ---------------------------------------------------------------- (c) resume

    [Fact]
    public void ResumingFromACheckpointReplaysTheUninterruptedRunBitForBit()
    {
        var config = Config(layers: 2, embd: 32, heads: 2, block: 32, dropout: 0.1f); // dropout: masks must replay too
        var settings = new TrainSettings
        {
            BatchSize = 4, MaxIters = 20, LearningRate = 2e-3f, MinLr = 2e-4f, WarmupIters = 4, LrDecayIters = 16,
            EvalInterval = 5, EvalIters = 1, CheckpointInterval = 10, Seed = 7,
        };
        string a = temp.Subdirectory("uninterrupted"), b = temp.Subdirectory("resumed");

        using (var runA = NewRun(config, settings, a)) runA.Loop.Run();

        // B: "crash" at step 13, three steps after the checkpoint at step 10 (metrics lines 11..13 already written)
        using var cancel = new CancellationTokenSource();
        using (var runB = NewRun(config, settings, b, onStep: m => { if (m.Step == 13) cancel.Cancel(); }))
        {
            Assert.ThrowsAny<OperationCanceledException>(() => runB.Loop.Run(cancel.Token));
            Assert.Equal(13, runB.Loop.Step);
        }
        Assert.Equal(Enumerable.Range(1, 13).Select(i => (long)i), Metrics(b).Select(m => m.Step));

        var ckpt = Checkpoint.Open(b);
        Assert.Equal(10, ckpt.State.Step);
        Assert.Equal(10, ckpt.State.OptimizerSteps);
        Assert.Equal(settings, ckpt.State.Settings);
        using (var resumed = NewRun(ckpt.State.Config, ckpt.State.Settings, b, resumeFrom: ckpt))
        {
            Assert.Equal(10, resumed.Loop.Step);
            resumed.Loop.Run();
            Assert.Equal(20, resumed.Optimizer.StepCount);
        }

        var ma = Metrics(a);
        var mb = Metrics(b);
        Assert.Equal(Enumerable.Range(1, 20).Select(i => (long)i), mb.Select(m => m.Step)); // 1..20, each exactly once
        Assert.Equal(Enumerable.Range(1, 20).Select(i => (long)i), ma.Select(m => m.Step));
        for (int i = 0; i < 20; i++)
        {
            string step = $"step {i + 1}";
            Assert.True(BitConverter.SingleToInt32Bits(ma[i].Loss) == BitConverter.SingleToInt32Bits(mb[i].Loss),
                $"{step}: loss {ma[i].Loss:R} uninterrupted vs {mb[i].Loss:R} resumed");
            Assert.True(ma[i].Lr == mb[i].Lr, $"{step}: lr {ma[i].Lr:R} vs {mb[i].Lr:R}");
            Assert.True(ma[i].GradNorm == mb[i].GradNorm, $"{step}: grad norm {ma[i].GradNorm:R} vs {mb[i].GradNorm:R}");
            Assert.True(Nullable.Equals(ma[i].ValLoss, mb[i].ValLoss), $"{step}: val loss {ma[i].ValLoss} vs {mb[i].ValLoss}");
        }
        Assert.NotEqual(ma[10].Loss, ma[19].Loss); // the runs did move

        var finalA = Checkpoint.Open(a);
        var finalB = Checkpoint.Open(b);
        Assert.Equal(20, finalB.State.Step);
        Assert.Equal("test-run", finalB.State.RunId);
        Assert.Equal(finalA.State.FileSha256, finalB.State.FileSha256); // same weights and moments, byte for byte
    }

    // ---------------------------------------------------------------- (d) corrupted checkpoints

    public static IEnumerable<object[]> Corruptions =>
    [
        ["model.safetensors", "flip"],
        ["model.safetensors", "truncate"],
        ["optimizer.safetensors", "flip"],
        ["optimizer.safetensors", "truncate"],
        ["checkpoint.json", "truncate"],
    ];

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void ACorruptedCheckpointIsRefusedNamingTheFileAndLeftUntouched(string file, string corruption)
    {
        var config = Config(layers: 1, embd: 16, heads: 2, block: 8);
        string outDir = temp.Subdirectory("corrupt");
        using (var model = new Gpt(config))
        using (var adam = new AdamW(model.Parameters, 0.9f, 0.99f, 0.1f))
        {
            model.Initialize(3);
            Checkpoint.Save(outDir, model, adam, TestData.Corpus.Tokenizer, new TrainSettings(), 5, "corrupt-run", TestData.Corpus.Sha256);
        }
        string ckptDir = Checkpoint.PathIn(outDir);
        Checkpoint.Open(outDir); // intact: fine

        string path = Path.Combine(ckptDir, file);
        byte[] bytes = File.ReadAllBytes(path);
        if (corruption == "flip") bytes[bytes.Length - 3] ^= 0x40; // in the tensor data: the safetensors header still parses
        else bytes = bytes[..(bytes.Length * 2 / 3)];
        File.WriteAllBytes(path, bytes);
        var before = Snapshot(outDir);

        var e = Assert.Throws<CheckpointException>(() => Checkpoint.Open(outDir));
        output.WriteLine(e.Message);
        Assert.Contains(path, e.Message);
        Assert.Equal(before, Snapshot(outDir)); // nothing repaired, renamed or deleted
    }

    static SortedDictionary<string, string> Snapshot(string dir) => new(
        Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories).ToDictionary(
            f => Path.GetRelativePath(dir, f),
            f => Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(f)))),
        StringComparer.Ordinal);

    // ---------------------------------------------------------------- (e) corpus errors

    [Fact]
    public void AMissingCorpusFileIsADataExceptionNamingIt()
    {
        string path = temp.Combine("no-such-corpus.txt");
        var e = Assert.Throws<DataException>(() => Corpus.Load(path));
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void AnEmptyCorpusFileIsADataExceptionNamingIt()
    {
        string path = temp.Combine("empty.txt");
        File.WriteAllBytes(path, []);
        var e = Assert.Throws<DataException>(() => Corpus.Load(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("empty", e.Message);
    }

    [Fact]
    public void AnInvalidUtf8CorpusFileIsADataExceptionNamingIt()
    {
        string path = temp.Combine("latin1.txt");
        var bytes = Encoding.UTF8.GetBytes("First Citizen:\nBefore we proceed any further, hear me speak.\n").ToList();
        bytes.InsertRange(20, new byte[] { 0xC3, 0x28, 0xFF }); // a broken two-byte sequence and a byte UTF-8 never uses
        File.WriteAllBytes(path, bytes.ToArray());
        var e = Assert.Throws<DataException>(() => Corpus.Load(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("UTF-8", e.Message);
    }

    [Fact]
    public void ACorpusTooShortForTheBlockSizeIsADataExceptionNamingIt()
    {
        string path = temp.Combine("short.txt");
        File.WriteAllText(path, "First Citizen:\nBefore we proceed any further, hear me speak.\n");
        var corpus = Corpus.Load(path); // loading is fine; the splits are what is short
        int val = (int)corpus.Val.Length;
        Assert.InRange(val, 2, 10);
        corpus.RequireBlock(val - 1); // val tokens hold exactly one (val - 1) + 1 window
        var e = Assert.Throws<DataException>(() => corpus.RequireBlock(val));
        Assert.Contains(path, e.Message);
        e = Assert.Throws<DataException>(() => corpus.RequireBlock(256));
        Assert.Contains(path, e.Message);
    }

    static void AssertBitEqual(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what)
    {
        Assert.True(expected.Length == actual.Length, $"{what}: {actual.Length} values, expected {expected.Length}");
        var e = MemoryMarshal.Cast<float, int>(expected);
        var a = MemoryMarshal.Cast<float, int>(actual);
        for (int i = 0; i < e.Length; i++)
            if (e[i] != a[i])
                Assert.Fail($"{what}[{i}]: {BitConverter.Int32BitsToSingle(a[i]):R}, expected {BitConverter.Int32BitsToSingle(e[i]):R} (bits differ)");
    }
}
