using System.Text;
using System.Text.Json;
using Xunit;
using Xunit.Abstractions;

namespace DistGpt.Tests;

/// <summary>The real `distgpt` executable as a user runs it: exit codes, one-line errors without stack traces,
/// metrics.jsonl, reproducible sampling and the bench's JSON line. Every child gets DISTGPT_DATA explicitly and runs in
/// its own temp directory (so nothing is ever downloaded or written into the repository).</summary>
public sealed class CliTests(ITestOutputHelper output) : IDisposable
{
    static readonly TimeSpan Timeout = TimeSpan.FromSeconds(120);
    readonly TempDirectory temp = new("cli");

    public void Dispose() => temp.Dispose();

    CliResult Distgpt(params string[] args) => Distgpt(new Dictionary<string, string>(), args);

    CliResult Distgpt(Dictionary<string, string> extraEnv, params string[] args)
    {
        var env = new Dictionary<string, string>(extraEnv) { [TestData.EnvVar] = TestData.CorpusPath() };
        var r = CliRunner.Run(args, env, Timeout, workingDirectory: temp.Path);
        output.WriteLine($"$ distgpt {string.Join(' ', args)}\n{r}\n");
        Assert.False(r.TimedOut, $"distgpt {string.Join(' ', args)} timed out\n{r}");
        return r;
    }

    /// <summary>A tiny, quick training run's flags.</summary>
    static string[] Tiny(int layers = 1) =>
        ["--n-layer", layers.ToString(), "--n-embd", "16", "--n-head", "2", "--block-size", "16", "--batch-size", "2", "--eval-iters", "1"];

    /// <summary>Exit code 2, and stderr is exactly one line "error: …" mentioning every given fragment; no stack trace anywhere.</summary>
    static void AssertBadInput(CliResult r, params string[] mentions)
    {
        Assert.True(r.ExitCode == 2, $"expected exit code 2\n{r}");
        AssertNoStackTrace(r);
        var lines = r.StdErrLines;
        Assert.True(lines.Length == 1, $"expected one line on stderr, got {lines.Length}\n{r}");
        Assert.StartsWith("error: ", lines[0]);
        foreach (string m in mentions) Assert.Contains(m, lines[0]);
    }

    static void AssertNoStackTrace(CliResult r)
    {
        Assert.DoesNotContain("   at ", r.StdErr);
        Assert.DoesNotContain("   at ", r.StdOut);
        Assert.DoesNotContain("Unhandled exception", r.StdErr);
    }

    // ---------------------------------------------------------------- bad input: exit 2, one line

    [Fact]
    public void TheTorchBackendOfABuildWithoutItIsRefusedNamingTheBuildProperty()
    {
        // The suite's CLI is the default build: DistGpt.TorchBackend is not beside it (tests/run-torch.sh tests the other).
        Assert.False(File.Exists(Path.Combine(AppContext.BaseDirectory, "DistGpt.TorchBackend.dll")));
        AssertBadInput(Distgpt(["train", "--backend", "torch", .. Tiny(), "--max-iters", "1"]), "this build has no torch backend", "-p:DistGptTorch=true");
        AssertBadInput(Distgpt(["worker", "--coordinator", "http://127.0.0.1:1", "--backend", "torch"]), "this build has no torch backend");
        AssertBadInput(Distgpt(["dev", "--workers", "2", "--worker-backends", "engine,torch", .. Tiny(), "--max-iters", "1"]), "this build has no torch backend");
        AssertBadInput(Distgpt(["train", "--device", "cuda", .. Tiny(), "--max-iters", "1"]), "--device cuda needs --backend torch");
    }

    [Fact]
    public void AnUnknownOrUnsupportedMatmulKernelExitsTwoWithAOneLineError()
    {
        AssertBadInput(Distgpt(new() { ["DISTGPT_GEMM"] = "sse" }, ["bench", "--config", "tiny", "--steps", "1"]), "DISTGPT_GEMM", "unknown matmul kernel 'sse'");
        // With the runtime's AVX-512 switched off, the CPU "lacks" it, as an AVX2-only machine does.
        AssertBadInput(Distgpt(new() { ["DISTGPT_GEMM"] = "avx512", ["DOTNET_EnableAVX512"] = "0" }, ["bench", "--config", "tiny", "--steps", "1"]),
            "cannot run the avx512 matmul kernel");
        var ok = Distgpt(new() { ["DISTGPT_GEMM"] = "avx2" }, ["bench", "--config", "tiny", "--steps", "2", "--warmup", "1"]);
        Assert.True(ok.ExitCode == 0, ok.ToString());
    }

    [Fact]
    public void TrainWithAMissingDataFileExitsTwoWithAOneLineError()
    {
        string missing = "/nonexistent/tinyshakespeare.txt";
        AssertBadInput(Distgpt(["train", "--data", missing, "--out", temp.Combine("out"), .. Tiny()]), missing);
        Assert.False(File.Exists(temp.Combine("out", "metrics.jsonl")));
    }

    [Fact]
    public void TrainWithAnEmptyDataFileExitsTwoWithAOneLineError()
    {
        string path = temp.Combine("empty.txt");
        File.WriteAllBytes(path, []);
        AssertBadInput(Distgpt(["train", "--data", path, "--out", temp.Combine("out"), .. Tiny()]), path, "empty");
    }

    [Fact]
    public void TrainWithACorpusShorterThanTheBlockSizeExitsTwoWithAOneLineError()
    {
        string path = temp.Combine("short.txt");
        File.WriteAllText(path, "First Citizen:\nBefore we proceed any further, hear me speak.\n"); // ~60 chars; block 32 needs 33 per split
        AssertBadInput(Distgpt(["train", "--data", path, "--out", temp.Combine("out"), "--block-size", "32", "--max-iters", "2"]), path, "block_size 32");
    }

    [Fact]
    public void TrainWithAnInvalidUtf8DataFileExitsTwoWithAOneLineError()
    {
        string path = temp.Combine("binary.txt");
        var bytes = Encoding.UTF8.GetBytes(new string('a', 500)).ToList();
        bytes.InsertRange(100, new byte[] { 0xFF, 0xFE, 0xC3 });
        File.WriteAllBytes(path, bytes.ToArray());
        AssertBadInput(Distgpt(["train", "--data", path, "--out", temp.Combine("out"), .. Tiny()]), path, "UTF-8");
    }

    [Fact]
    public void TrainWithAnEmbeddingWidthNotDivisibleByTheHeadsExitsTwoWithAOneLineError() =>
        AssertBadInput(Distgpt("train", "--n-embd", "100", "--n-head", "3", "--out", temp.Combine("out")), "--n-embd", "--n-head");

    [Fact]
    public void BenchWithAnUnknownConfigExitsTwoWithAOneLineError() =>
        AssertBadInput(Distgpt("bench", "--config", "bogus"), "bogus");

    [Fact]
    public void SampleFromADirectoryWithoutACheckpointExitsTwoWithAOneLineError()
    {
        string dir = temp.Subdirectory("no-checkpoint");
        AssertBadInput(Distgpt("sample", "--checkpoint", dir, "--prompt", "ROMEO:"), dir);
    }

    [Fact]
    public void ResumingACheckpointWithADifferentModelConfigExitsTwoWithAOneLineError()
    {
        string outDir = temp.Combine("run");
        var first = Distgpt(["train", "--max-iters", "2", "--out", outDir, .. Tiny()]);
        Assert.True(first.ExitCode == 0, first.ToString());
        string sha = Sha(Path.Combine(outDir, "ckpt", "model.safetensors"));

        var r = Distgpt(["train", "--resume", "--max-iters", "4", "--out", outDir, .. Tiny(layers: 2)]);
        AssertBadInput(r, "different model config", "n_layer 1", "n_layer 2");
        Assert.Equal(sha, Sha(Path.Combine(outDir, "ckpt", "model.safetensors"))); // the refused resume touched nothing
        Assert.Equal(2, File.ReadAllLines(Path.Combine(outDir, "metrics.jsonl")).Length);
    }

    [Fact]
    public void AnUnknownFlagExitsTwoWithAnErrorAndNoStackTrace()
    {
        var r = Distgpt("train", "--no-such-flag", "--out", temp.Combine("out"));
        Assert.True(r.ExitCode == 2, r.ToString());
        AssertNoStackTrace(r);
        Assert.StartsWith("error: ", r.StdErrLines.FirstOrDefault() ?? "");
        Assert.Contains("--no-such-flag", r.StdErr);
        Assert.False(Directory.Exists(temp.Combine("out")));
    }

    // ---------------------------------------------------------------- success paths

    [Fact]
    public void AShortTrainingRunWritesOneMetricsLinePerStepAndItsCheckpointSamplesReproducibly()
    {
        string outDir = temp.Combine("run");
        var train = Distgpt("train", "--max-iters", "30", "--eval-interval", "15", "--eval-iters", "2", "--n-layer", "2", "--n-embd", "32",
            "--n-head", "2", "--block-size", "32", "--batch-size", "4", "--out", outDir);
        Assert.True(train.ExitCode == 0, train.ToString());
        Assert.Equal("", train.StdErr.Trim());

        var lines = File.ReadAllLines(Path.Combine(outDir, "metrics.jsonl"));
        Assert.Equal(30, lines.Length);
        for (int i = 0; i < 30; i++)
        {
            using var doc = JsonDocument.Parse(lines[i]);
            var o = doc.RootElement;
            long step = i + 1;
            Assert.Equal(step, o.GetProperty("step").GetInt64());
            Assert.True(float.IsFinite(o.GetProperty("loss").GetSingle()), lines[i]);
            Assert.True(o.GetProperty("lr").GetDouble() > 0, lines[i]);
            Assert.True(o.GetProperty("step_ms").GetDouble() > 0, lines[i]);
            Assert.True(o.GetProperty("tokens_per_s").GetDouble() > 0, lines[i]);
            bool eval = step is 15 or 30;
            Assert.True(eval == o.TryGetProperty("train_loss", out var tl), $"train_loss on step {step}: {lines[i]}");
            Assert.True(eval == o.TryGetProperty("val_loss", out var vl), $"val_loss on step {step}: {lines[i]}");
            if (eval) Assert.True(float.IsFinite(tl.GetSingle()) && float.IsFinite(vl.GetSingle()), lines[i]);
        }

        string[] sample = ["sample", "--checkpoint", outDir, "--prompt", "ROMEO:", "--max-new-tokens", "50", "--seed", "1"];
        var s1 = Distgpt(sample);
        Assert.True(s1.ExitCode == 0, s1.ToString());
        Assert.StartsWith("ROMEO:", s1.StdOut);
        Assert.True(s1.StdOut.TrimEnd('\n').Length >= "ROMEO:".Length + 40, s1.ToString()); // 50 new characters (some may be newlines)
        var s2 = Distgpt(sample);
        Assert.True(s2.ExitCode == 0, s2.ToString());
        Assert.Equal(s1.StdOut, s2.StdOut);
    }

    [Fact]
    public void BenchPrintsAJsonSummaryAsItsLastLine()
    {
        var r = Distgpt("bench", "--config", "tiny", "--steps", "2", "--warmup", "1");
        Assert.True(r.ExitCode == 0, r.ToString());
        string last = r.StdOutLines.Last();
        using var doc = JsonDocument.Parse(last);
        var o = doc.RootElement;
        Assert.Equal("tiny", o.GetProperty("config").GetString());
        Assert.True(o.GetProperty("params").GetInt64() > 0, last);
        var preset = DistGpt.Coordinator.Cli.BenchCommand.Find("tiny");
        Assert.Equal(preset.BatchSize * preset.Model.BlockSize, o.GetProperty("tokens_per_step").GetInt32());
        Assert.True(o.GetProperty("ms_per_step").GetDouble() > 0, last);
        Assert.True(o.GetProperty("tokens_per_s").GetDouble() > 0, last);
    }

    static string Sha(string path) => Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(path)));
}
