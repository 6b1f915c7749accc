using System.Text.Json;
using DistGpt.Model.Data;
using DistGpt.Tests.Hardening;
using Xunit;
using Xunit.Abstractions;

namespace DistGpt.Tests.Data;

/// <summary>Token directories through the real `distgpt`: prepare, dev mode with two worker processes, sample, resume
/// checks, and a corpus larger than the process's memory limit.</summary>
[Collection(ProcessHeavy.Name)]
public sealed class TokenFilesCliTests(ITestOutputHelper output) : IDisposable
{
    readonly TempDirectory temp = new("tokens-cli");

    public void Dispose() => temp.Dispose();

    CliResult Distgpt(params string[] args)
    {
        var r = CliRunner.Run(args, new Dictionary<string, string> { [TestData.EnvVar] = "" }, TimeSpan.FromMinutes(3), temp.Path);
        output.WriteLine($"$ distgpt {string.Join(' ', args)}\n{r}\n");
        Assert.False(r.TimedOut, r.ToString());
        return r;
    }

    static readonly string[] Tiny = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "16", "--batch-size", "4", "--eval-iters", "1"];

    static JsonElement[] Metrics(string outDir) =>
        File.ReadAllLines(Path.Combine(outDir, "metrics.jsonl")).Select(l => JsonDocument.Parse(l).RootElement).ToArray();

    [Fact]
    public void DevWithTwoWorkersTrainsOnGpt2TokenFilesAndSamplePrintsDecodedText()
    {
        string data = temp.Combine("shakespeare"), outDir = temp.Combine("out");
        var prepared = Distgpt("prepare", "--input", TestData.CorpusPath(), "--tokenizer", "gpt2", "--out", data);
        Assert.True(prepared.ExitCode == 0, prepared.ToString());
        Assert.Contains("301,966 train and 36,059 val tokens", prepared.StdOut);

        var dev = Distgpt(["dev", "--workers", "2", "--data", data, "--out", outDir, "--max-iters", "4", "--eval-interval", "2", .. Tiny]);
        Assert.True(dev.ExitCode == 0, dev.ToString());
        var metrics = Metrics(outDir);
        Assert.Equal([1, 2, 3, 4], metrics.Select(m => m.GetProperty("step").GetInt32()));
        Assert.All(metrics, m => Assert.Equal(2, m.GetProperty("workers").GetInt32()));
        // An untrained model's loss is about ln(vocab): the padded GPT-2 vocabulary, not 65 characters.
        Assert.InRange(metrics[0].GetProperty("loss").GetDouble(), Math.Log(50304) - 0.3, Math.Log(50304) + 0.3);

        var state = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "ckpt", "checkpoint.json"))).RootElement;
        Assert.Equal("gpt2", state.GetProperty("tokenizer").GetString());
        Assert.Equal(50304, state.GetProperty("config").GetProperty("vocab_size").GetInt32());

        var sample = Distgpt("sample", "--checkpoint", outDir, "--prompt", "ROMEO:", "--max-new-tokens", "12");
        Assert.True(sample.ExitCode == 0, sample.ToString());
        Assert.StartsWith("ROMEO:", sample.StdOut);
        Assert.True(sample.StdOut.Trim().Length > "ROMEO:".Length, sample.ToString());

        // The checkpoint's tokenizer is the data's: a text file (characters) is refused, and nothing saved changes.
        var before = UserErrors.Snapshot(outDir);
        UserErrors.AssertBadInput(Distgpt(["train", "--resume", "--out", outDir, "--data", TestData.CorpusPath(), "--max-iters", "6", .. Tiny]),
            TestData.CorpusPath(), "gpt2 tokens");
        Assert.Equal(before, UserErrors.Snapshot(outDir));
    }

    [Fact]
    public void ClusterWorkersOnTokenFilesJoinByTheirHashAndAWorkerWithoutThemReceivesWindows()
    {
        string data = temp.Combine("shakespeare"), outDir = temp.Combine("out");
        Preparation.Prepare(TestData.CorpusPath(), Tokenizers.Gpt2, data, 0.1);
        int port = DistributedTests.FreePort();
        var env = DistributedTests.Env("token-files");
        env[TestData.EnvVar] = data;
        using var coordinator = CliRunner.Start(["coordinator", "--listen", $"http://127.0.0.1:{port}", "--min-workers", "2", "--out", outDir,
            "--max-iters", "6", "--eval-interval", "6", "--threads", "1", .. Tiny], env, temp.Path);
        string[] worker = ["worker", "--coordinator", $"http://127.0.0.1:{port}", "--threads", "1", "--connect-timeout", "30"];
        // The text corpus is other data: refused at the join by its SHA-256.
        var text = CliRunner.Run([.. worker, "--name", "text", "--data", TestData.CorpusPath()], env, TimeSpan.FromMinutes(2), temp.Path);
        Assert.True(text.ExitCode == 2 && text.StdErr.Contains("data mismatch"), text.ToString());
        using var withFiles = CliRunner.Start([.. worker, "--name", "alpha"], env, temp.Path);
        var noData = new Dictionary<string, string>(env) { [TestData.EnvVar] = "" };
        using var without = CliRunner.Start([.. worker, "--name", "beta"], noData, temp.Path);
        var rc = coordinator.WaitForExit(TimeSpan.FromMinutes(3));
        var r1 = withFiles.WaitForExit(TimeSpan.FromSeconds(30));
        var r2 = without.WaitForExit(TimeSpan.FromSeconds(30));
        output.WriteLine($"{rc}\n{r1}\n{r2}");
        Assert.True(rc.ExitCode == 0 && r1.ExitCode == 0 && r2.ExitCode == 0, $"{rc}\n{r1}\n{r2}");
        Assert.Contains("sent by the coordinator", r2.StdOut);
        Assert.Equal(6, Metrics(outDir).Length);
        Assert.All(Metrics(outDir), m => Assert.Equal(2, m.GetProperty("workers").GetInt32()));
    }

    [Fact]
    public void PrepareRefusesBadInputWithOneLine()
    {
        string data = temp.Combine("d");
        UserErrors.AssertBadInput(Distgpt("prepare", "--input", temp.Combine("missing.txt"), "--out", data), "missing.txt");
        UserErrors.AssertBadInput(Distgpt("prepare", "--input", TestData.CorpusPath(), "--out", data, "--val-fraction", "1.5"), "--val-fraction");
        UserErrors.AssertBadInput(Distgpt("prepare", "--input", TestData.CorpusPath(), "--out", data, "--tokenizer", "bpe"), "--tokenizer");
        Assert.Equal(0, Distgpt("prepare", "--input", TestData.CorpusPath(), "--out", data).ExitCode);
        UserErrors.AssertBadInput(Distgpt("prepare", "--input", TestData.CorpusPath(), "--out", data), "--overwrite");
        UserErrors.AssertBadInput(Distgpt("train", "--data", temp.Combine("nowhere"), "--out", temp.Combine("o")), "nowhere");
    }

    /// <summary>A 512 MiB train.bin under a 256 MiB memory limit: memory-mapped, the kernel pages the windows in and out;
    /// read whole, the process would be killed. The limit was really hit (the cgroup counts it), and nobody was killed.</summary>
    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "posix_fadvise")]
    static extern int PosixFadvise(Microsoft.Win32.SafeHandles.SafeFileHandle fd, long offset, long length, int advice);

    [MemoryCgroupFact]
    public void ACorpusLargerThanTheMemoryLimitTrains()
    {
        const long limit = 256L << 20, trainBytes = 512L << 20;
        string data = temp.Combine("big");
        Preparation.Prepare(TestData.CorpusPath(), Tokenizers.Char, data, 0.1);
        // train.bin: Tiny Shakespeare's train tokens over and over, to 512 MiB; meta.json's count follows.
        byte[] train = File.ReadAllBytes(Path.Combine(data, "train.bin"));
        using (var f = new FileStream(Path.Combine(data, "train.bin"), FileMode.Create))
        {
            for (long written = 0; written < trainBytes; written += train.Length) f.Write(train, 0, (int)Math.Min(train.Length, trainBytes - written));
            // Out of the page cache: pages cached now are charged to this process's cgroup, and the run would find them free.
            f.Flush(flushToDisk: true);
            Assert.Equal(0, PosixFadvise(f.SafeFileHandle, 0, 0, 4 /* POSIX_FADV_DONTNEED */));
        }
        string metaPath = Path.Combine(data, "meta.json");
        var meta = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(File.ReadAllText(metaPath))!;
        meta["train_tokens"] = JsonSerializer.SerializeToElement(trainBytes / 2);
        File.WriteAllText(metaPath, JsonSerializer.Serialize(meta));

        using var group = MemoryCgroup.TryCreate(limit, out string why) ?? throw new InvalidOperationException(why);
        string outDir = temp.Combine("out");
        using var run = CliRunner.Start(["train", "--data", data, "--out", outDir, "--max-iters", "20", "--eval-interval", "10", "--threads", "1", .. Tiny],
            new Dictionary<string, string> { [TestData.EnvVar] = "" }, temp.Path, prelude: $"echo $$ > {group.ProcsFile}");
        var r = run.WaitForExit(TimeSpan.FromMinutes(3));
        output.WriteLine($"{r}\nlimit hits {group.LimitHits}, OOM kills {group.OomKills}");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(20, Metrics(outDir).Length);
        Assert.Equal(0, group.OomKills);
        Assert.True(group.LimitHits > 0, "the run never reached its memory limit, so it proves nothing about data larger than memory");
    }
}
