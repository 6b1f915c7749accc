using System.Diagnostics;
using System.Text.Json;
using Xunit;

namespace DistGpt.Tests;

/// <summary>Worker and coordinator failures with real processes killed by PID, and tampered payloads.</summary>
[Collection(ProcessHeavy.Name)]
public sealed class FaultToleranceTests
{
    const string Model = "--n-layer 2 --n-head 2 --n-embd 32 --block-size 32 --batch-size 8 --eval-iters 1 --threads 1";
    static readonly TimeSpan Timeout = TimeSpan.FromMinutes(3);

    static Dictionary<string, string> Env(string token, string? fault = null)
    {
        var env = new Dictionary<string, string> { ["DISTGPT_DATA"] = TestData.CorpusPath(), ["DISTGPT_CLUSTER_TOKEN"] = token };
        if (fault != null) env["DISTGPT_TEST_FAULT"] = fault;
        return env;
    }

    sealed class Cluster : IDisposable
    {
        public readonly int Port = DistributedTests.FreePort();
        public readonly string Token = "tok-" + Guid.NewGuid().ToString("n");
        public readonly TempDirectory Dir = new("ft");
        public CliProcess? Coordinator;
        public readonly List<CliProcess> Workers = new();

        public CliProcess StartCoordinator(string flags) =>
            Coordinator = CliRunner.Start(CliRunner.Split($"coordinator --listen http://127.0.0.1:{Port} {Model} --out {Dir.Path} {flags}"), Env(Token));

        public CliProcess StartWorker(string name, string? fault = null, string flags = "")
        {
            var w = CliRunner.Start(CliRunner.Split($"worker --coordinator http://127.0.0.1:{Port} --name {name} --threads 1 {flags}"), Env(Token, fault));
            Workers.Add(w);
            return w;
        }

        public List<JsonElement> Metrics => DistributedTests.Metrics(Dir.Path);

        public void Dispose()
        {
            Coordinator?.Dispose();
            foreach (var w in Workers) w.Dispose();
            Dir.Dispose();
        }
    }

    static void AssertContiguous(List<JsonElement> metrics, int steps) =>
        Assert.Equal(Enumerable.Range(1, steps), metrics.Select(m => m.GetProperty("step").GetInt32()));

    static double[] Losses(List<JsonElement> metrics) => metrics.Select(m => m.GetProperty("loss").GetDouble()).ToArray();

    [Theory]
    [InlineData("stall-compute", "stalled before computing")]
    [InlineData("stall-upload", "stalled mid-upload")]
    public void WorkerKilledMidStepIsDetectedAndTheRunCompletesWithContiguousSteps(string fault, string marker)
    {
        using var c = new Cluster();
        var coordinator = c.StartCoordinator("--min-workers 2 --max-iters 20 --eval-interval 20");
        c.StartWorker("alpha");
        var victim = c.StartWorker("beta", $"{fault}:8");
        Assert.True(victim.WaitForOutput(o => o.Contains(marker), Timeout), victim.StdOut + victim.StdErr);
        Process.GetProcessById(victim.Id).Kill(); // SIGKILL
        var r = coordinator.WaitForExit(Timeout);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("worker 'beta' lost", r.StdOut);
        var metrics = c.Metrics;
        AssertContiguous(metrics, 20);
        Assert.Contains(8, StepsNaming(metrics, "lost_workers", "beta"));
        Assert.True(metrics[7].GetProperty("step_ms").GetDouble() < 10_000, $"step 8 took {metrics[7].GetProperty("step_ms")} ms");
        Assert.Equal(1, metrics[^1].GetProperty("workers").GetInt32());
    }

    [Fact]
    public void SilentWorkerIsDroppedAfterTheHeartbeatTimeoutAndARestartedWorkerRejoins()
    {
        // Long enough that alpha alone is still training when the restarted beta has started and joined (steps of this
        // model take about a millisecond: a 400-step run could end first).
        const int steps = 4000;
        using var c = new Cluster();
        var coordinator = c.StartCoordinator($"--min-workers 2 --max-iters {steps} --eval-interval {steps} --heartbeat-timeout 2");
        c.StartWorker("alpha");
        var hung = c.StartWorker("beta", "hang:6");
        Assert.True(coordinator.WaitForOutput(o => o.Contains("worker 'beta' lost"), Timeout), coordinator.StdOut);
        Assert.Contains("no heartbeat", coordinator.StdOut);
        hung.Kill();
        c.StartWorker("beta"); // the same node comes back
        Assert.True(coordinator.WaitForOutput(o => o.Split("worker 'beta' joined").Length == 3, Timeout), coordinator.StdOut);
        var r = coordinator.WaitForExit(Timeout);
        Assert.True(r.ExitCode == 0, r.ToString());
        var metrics = c.Metrics;
        AssertContiguous(metrics, steps);
        // The membership the training page draws: beta joins at step 1, is lost at step 6, and joins again later.
        Assert.Equal([1L, 6L], StepsNaming(metrics, "joined_workers", "beta").Take(1).Concat(StepsNaming(metrics, "lost_workers", "beta")));
        Assert.Single(StepsNaming(metrics, "joined_workers", "beta").Where(s => s > 6));
        double slow = metrics[5].GetProperty("step_ms").GetDouble();
        Assert.InRange(slow, 1_500, 10_000);
        Assert.Equal(2, metrics[^1].GetProperty("workers").GetInt32());
        Assert.True(c.Workers[^1].WaitForExit(TimeSpan.FromSeconds(30)).ExitCode == 0);
    }

    [Theory]
    [InlineData("")]
    [InlineData("--wire-dtype bf16")] // a NaN survives the narrowing to bf16
    [InlineData("--bucket-cap-mb 0.01")] // the sum streamed in ~10 buckets: the first is poisoned, the last is short
    [InlineData("--bucket-cap-mb 0.01 --wire-dtype bf16")]
    public void TamperedGradientPayloadsAreRejectedAndTheSharesRecomputedExactly(string flags)
    {
        using var c = new Cluster();
        var coordinator = c.StartCoordinator($"--min-workers 2 --max-iters 8 --eval-interval 8 {flags}");
        c.StartWorker("alpha");
        c.StartWorker("beta", "nan:3,short:6");
        var r = coordinator.WaitForExit(Timeout);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("NaN or Inf", r.StdOut);
        Assert.Contains("gradient payload of", r.StdOut);
        Assert.Contains("worker 'beta' sent invalid gradients", r.StdOut);
        AssertContiguous(c.Metrics, 8);
        Assert.Equal([3L, 6L], StepsNaming(c.Metrics, "rejected_payloads", "beta"));
        // The rejected shares were recomputed by the other worker from the same sequences: nothing of a bad payload applied.
        Assert.Equal(FaultFreeLosses(flags.Contains("bf16") ? "--wire-dtype bf16" : ""), Losses(c.Metrics));
    }

    /// <summary>Dev mode reads each worker's fp32 sum in place from its shared-memory region and checks it only as the
    /// coordinator adds the shares up: a NaN there is still caught, pinned on the worker that sent it, and its share
    /// recomputed by the other worker, so the run keeps the fault-free losses.</summary>
    [Fact]
    public void DevModeCatchesANaNInAWorkersRegionAsItSumsAndRecomputesTheShare()
    {
        using var clean = new TempDirectory("dev-nan-clean");
        using var faulty = new TempDirectory("dev-nan");
        CliResult Run(string dir, string? fault) => CliRunner.Run(CliRunner.Split(
            $"dev --workers 2 --worker-threads 1 {Model} --max-iters 6 --eval-interval 6 --out {dir}"), Env("dev-nan", fault), Timeout);
        var reference = Run(clean.Path, null);
        Assert.True(reference.ExitCode == 0, reference.ToString());
        var r = Run(faulty.Path, "nan:3@worker-1");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("worker 'worker-1' sent invalid gradients: NaN or Inf in the gradients", r.StdOut);
        Assert.DoesNotContain("worker 'worker-0' sent invalid gradients", r.StdOut);
        var metrics = DistributedTests.Metrics(faulty.Path);
        AssertContiguous(metrics, 6);
        Assert.Equal([3L], StepsNaming(metrics, "rejected_payloads", "worker-1"));
        Assert.Equal(Losses(DistributedTests.Metrics(clean.Path)), Losses(metrics));
    }

    /// <summary>The steps whose metrics line lists <paramref name="worker"/> in the array <paramref name="field"/>.</summary>
    static List<long> StepsNaming(List<JsonElement> metrics, string field, string worker) =>
        metrics.Where(m => m.TryGetProperty(field, out var names) && names.EnumerateArray().Any(n => n.GetString() == worker))
            .Select(m => m.GetProperty("step").GetInt64()).ToList();

    static readonly Dictionary<string, double[]> faultFree = new();

    /// <summary>The losses of the same 8-step run without a fault, once per gradient dtype (streamed buckets give the whole
    /// sums' bits: StreamedGradientBucketsGiveTheSameLossesAsWholePayloads).</summary>
    static double[] FaultFreeLosses(string flags)
    {
        lock (faultFree)
        {
            if (faultFree.TryGetValue(flags, out var losses)) return losses;
            using var clean = new Cluster();
            clean.StartCoordinator($"--min-workers 2 --max-iters 8 --eval-interval 8 {flags}");
            clean.StartWorker("alpha");
            clean.StartWorker("beta");
            var r = clean.Coordinator!.WaitForExit(Timeout);
            Assert.True(r.ExitCode == 0, r.ToString());
            return faultFree[flags] = Losses(clean.Metrics);
        }
    }

    [Fact]
    public void CoordinatorKilledAndResumedGivesTheUninterruptedLossesAndWorkersReconnectByThemselves()
    {
        const string Run = "--min-workers 2 --max-iters 300 --eval-interval 300 --checkpoint-interval 8";
        using var reference = new Cluster();
        reference.StartCoordinator(Run);
        reference.StartWorker("alpha");
        reference.StartWorker("beta");
        var rref = reference.Coordinator!.WaitForExit(Timeout);
        Assert.True(rref.ExitCode == 0, rref.ToString());

        using var c = new Cluster();
        var first = c.StartCoordinator(Run);
        // Generous reconnect window: on a loaded 2-core machine the resumed coordinator can take a while to start.
        var alpha = c.StartWorker("alpha", flags: "--connect-timeout 150");
        var beta = c.StartWorker("beta", flags: "--connect-timeout 150");
        string metricsPath = Path.Combine(c.Dir.Path, "metrics.jsonl");
        WaitFor(() => File.Exists(metricsPath) && File.ReadAllLines(metricsPath).Length >= 20);
        Process.GetProcessById(first.Id).Kill(); // SIGKILL: no final checkpoint, no goodbye to the workers
        first.WaitForExit(TimeSpan.FromSeconds(10));
        int killedAfter = File.ReadAllLines(metricsPath).Length;
        Assert.True(killedAfter < 300, "the first coordinator finished before it could be killed; lengthen the run");

        var resumed = c.StartCoordinator(Run + " --resume --join-timeout 120");
        var r = resumed.WaitForExit(Timeout);
        Assert.True(r.ExitCode == 0, $"{r}\n--- alpha ---\n{alpha.StdOut}{alpha.StdErr}\n--- beta ---\n{beta.StdOut}{beta.StdErr}");
        var match = System.Text.RegularExpressions.Regex.Match(r.StdOut, @"resuming from step (\d+)");
        Assert.True(match.Success, r.StdOut);
        int from = int.Parse(match.Groups[1].Value);
        Assert.True(from >= 16 && from % 8 == 0 && from <= killedAfter, $"resumed from step {from}, killed after {killedAfter}");
        Assert.Equal(0, alpha.WaitForExit(TimeSpan.FromSeconds(30)).ExitCode);
        Assert.Equal(0, beta.WaitForExit(TimeSpan.FromSeconds(30)).ExitCode);
        Assert.Contains("rejoined", alpha.StdOut);
        var metrics = c.Metrics;
        AssertContiguous(metrics, 300);
        var expected = Losses(reference.Metrics);
        var actual = Losses(metrics);
        for (int i = from; i < 300; i++) Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-6, $"step {i + 1}: {expected[i]} vs {actual[i]}");
    }

    [Fact]
    public void DevModeRestartsAKilledWorkerAndFinishes()
    {
        using var tmp = new TempDirectory("devrestart");
        // 2000 steps: long enough (several seconds) that the workers are still running when step 10 has been read
        using var dev = CliRunner.Start(CliRunner.Split($"dev --workers 2 --worker-threads 1 {Model} --max-iters 2000 --eval-interval 2000 --out {tmp.Path}"),
            new Dictionary<string, string> { ["DISTGPT_DATA"] = TestData.CorpusPath() });
        Assert.True(dev.WaitForOutput(o => o.Contains("step 10:"), Timeout), dev.StdOut + dev.StdErr);
        Process.GetProcessById(DistributedTests.WorkerPids(dev.Id).First()).Kill();
        var r = dev.WaitForExit(Timeout);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("restarting it", r.StdOut);
        AssertContiguous(DistributedTests.Metrics(tmp.Path), 2000);
    }

    static void WaitFor(Func<bool> condition)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > Timeout) Assert.Fail("condition not reached in time");
            Thread.Sleep(50);
        }
    }
}
