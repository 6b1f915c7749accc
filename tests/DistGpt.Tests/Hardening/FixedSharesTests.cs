using System.Diagnostics;
using Xunit;

namespace DistGpt.Tests.Hardening;

/// <summary>Fixed shares (finding 12): the global batch stays cut into the starting world size's shares whoever is left
/// to compute them, and a share's sum has the same bits on a worker of any --threads (the coordinator fixes the replicas
/// per share), so a run that loses a worker ends with the very weights of a fault-free run.</summary>
[Collection(ProcessHeavy.Name)]
public sealed class FixedSharesTests
{
    const string Run = "--n-layer 2 --n-head 2 --n-embd 32 --block-size 32 --batch-size 8 --eval-iters 1 --threads 1 " +
                       "--min-workers 2 --max-iters 20 --eval-interval 20 --replicas-per-share 2";
    static readonly TimeSpan Timeout = TimeSpan.FromMinutes(2);

    /// <summary>A coordinator and workers alpha and beta; with <paramref name="killBetaAtStep"/>, beta stalls before
    /// computing that step and is SIGKILLed there, so alpha computes both shares of every later step.</summary>
    static byte[] FinalWeights(TempDirectory dir, int? killBetaAtStep, int alphaThreads = 1)
    {
        int port = DistributedTests.FreePort();
        string token = "tok-" + Guid.NewGuid().ToString("n");
        Dictionary<string, string> Env(string? fault = null)
        {
            var env = new Dictionary<string, string> { [TestData.EnvVar] = TestData.CorpusPath(), ["DISTGPT_CLUSTER_TOKEN"] = token };
            if (fault != null) env["DISTGPT_TEST_FAULT"] = fault;
            return env;
        }
        using var coordinator = CliRunner.Start(CliRunner.Split($"coordinator --listen http://127.0.0.1:{port} {Run} --out {dir.Path}"), Env());
        string worker = $"worker --coordinator http://127.0.0.1:{port} --name";
        using var alpha = CliRunner.Start(CliRunner.Split($"{worker} alpha --threads {alphaThreads}"), Env());
        using var beta = CliRunner.Start(CliRunner.Split($"{worker} beta --threads 1"), Env(killBetaAtStep is { } s ? $"stall-compute:{s}" : null));
        if (killBetaAtStep != null)
        {
            Assert.True(beta.WaitForOutput(o => o.Contains("stalled before computing"), Timeout), beta.StdOut + beta.StdErr);
            Process.GetProcessById(beta.Id).Kill();
        }
        var r = coordinator.WaitForExit(Timeout);
        Assert.True(r.ExitCode == 0, r.ToString());
        if (killBetaAtStep != null) Assert.Contains("worker 'beta' lost", r.StdOut);
        var metrics = DistributedTests.Metrics(dir.Path);
        Assert.Equal(killBetaAtStep == null ? 2 : 1, metrics[^1].GetProperty("workers").GetInt32());
        return File.ReadAllBytes(Path.Combine(dir.Path, "ckpt", "model.safetensors"));
    }

    [Fact]
    public void ARunThatLosesAWorkerEndsWithTheFaultFreeRunsWeightsBitForBitEvenOnAWorkerWithMoreThreads()
    {
        using var clean = new TempDirectory("shares-clean");
        using var faulty = new TempDirectory("shares-faulty");
        byte[] expected = FinalWeights(clean, killBetaAtStep: null);
        byte[] actual = FinalWeights(faulty, killBetaAtStep: 5, alphaThreads: 2); // beta's share then computed on 2 cores, not 1
        Assert.True(expected.AsSpan().SequenceEqual(actual), "model.safetensors differs from the fault-free run's");
        var losses = (string d) => DistributedTests.Metrics(d).Select(m => m.GetProperty("loss").GetDouble()).ToArray();
        Assert.Equal(losses(clean.Path), losses(faulty.Path));
    }

    [Fact]
    public void AResumeWithAnotherWorldSizeKeepsTheRunsSharesAndItsBits()
    {
        const string Model = "--n-layer 2 --n-head 2 --n-embd 32 --block-size 32 --batch-size 8 --eval-iters 1 --threads 1 --eval-interval 10 --checkpoint-interval 5";
        var env = new Dictionary<string, string> { [TestData.EnvVar] = TestData.CorpusPath() };
        void Dev(string flags)
        {
            var r = CliRunner.Run($"dev {Model} {flags}", env, Timeout);
            Assert.True(r.ExitCode == 0, r.ToString());
        }
        using var whole = new TempDirectory("shares-whole");
        using var resumed = new TempDirectory("shares-resumed");
        Dev($"--workers 2 --worker-threads 1 --max-iters 10 --out {whole.Path}");
        Dev($"--workers 2 --worker-threads 1 --max-iters 5 --out {resumed.Path}");
        Dev($"--workers 1 --worker-threads 3 --max-iters 10 --resume --out {resumed.Path}"); // one worker, other threads
        Assert.Equal(1, DistributedTests.Metrics(resumed.Path)[^1].GetProperty("workers").GetInt32());
        Assert.True(File.ReadAllBytes(Path.Combine(whole.Path, "ckpt", "model.safetensors")).AsSpan()
            .SequenceEqual(File.ReadAllBytes(Path.Combine(resumed.Path, "ckpt", "model.safetensors"))), "the resumed run's weights differ");
    }
}
