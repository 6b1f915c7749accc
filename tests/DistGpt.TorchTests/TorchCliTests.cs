using System.Text.Json;
using DistGpt.Tests;
using Xunit;

namespace DistGpt.TorchTests;

/// <summary>`distgpt` with --backend torch, as real processes (the CLI built with -p:DistGptTorch=true, beside these tests).</summary>
public sealed class TorchCliTests
{
    const string Model = "--n-layer 2 --n-head 2 --n-embd 32 --block-size 32 --batch-size 8 --eval-iters 1";
    static readonly TimeSpan Timeout = TimeSpan.FromMinutes(4);

    static Dictionary<string, string> Env() => new() { ["DISTGPT_DATA"] = TestData.CorpusPath() };

    static double[] Losses(string outDir) => File.ReadAllLines(Path.Combine(outDir, "metrics.jsonl"))
        .Select(l => JsonDocument.Parse(l).RootElement).Where(m => m.TryGetProperty("loss", out _))
        .Select(m => m.GetProperty("loss").GetDouble()).ToArray();

    static void SameLosses(double[] expected, double[] actual, int steps, string what)
    {
        Assert.Equal(steps, expected.Length);
        Assert.Equal(steps, actual.Length);
        for (int i = 0; i < steps; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-4, $"step {i + 1}: {what}: {expected[i]} vs {actual[i]}");
    }

    [Fact]
    public void TrainWithTheTorchBackendFollowsTheEnginesLosses()
    {
        using var tmp = new TempDirectory("torch-train");
        string engine = tmp.Subdirectory("engine"), torch = tmp.Subdirectory("torch");
        var a = CliRunner.Run($"train {Model} --threads 1 --dropout 0.1 --max-iters 20 --eval-interval 20 --out {engine}", Env(), Timeout);
        Assert.True(a.ExitCode == 0, a.ToString());
        var b = CliRunner.Run($"train {Model} --threads 1 --dropout 0.1 --max-iters 20 --eval-interval 20 --backend torch --out {torch}", Env(), Timeout);
        Assert.True(b.ExitCode == 0, b.ToString());
        Assert.Contains("backend torch/cpu", b.StdOut);
        SameLosses(Losses(engine), Losses(torch), 20, "engine vs torch");
        Assert.True(Directory.Exists(Path.Combine(torch, "ckpt")), "the run wrote its checkpoint");
    }

    /// <summary>shm: the torch worker's flat buffers are the /dev/shm regions the coordinator writes and reads; tcp: its sum
    /// goes out over the socket as one bucket after the backward.</summary>
    [Theory]
    [InlineData("shm")]
    [InlineData("tcp")]
    public void DevRunWithOneEngineAndOneTorchWorkerMatchesAnAllEngineRunOver50Steps(string transport)
    {
        using var tmp = new TempDirectory("torch-mixed");
        string engine = tmp.Subdirectory("engine"), mixed = tmp.Subdirectory("mixed");
        string run = $"dev --workers 2 --worker-threads 1 --threads 1 --transport {transport} {Model} --max-iters 50 --eval-interval 50";
        var a = CliRunner.Run($"{run} --out {engine}", Env(), Timeout);
        Assert.True(a.ExitCode == 0, a.ToString());
        var b = CliRunner.Run($"{run} --worker-backends engine,torch --out {mixed}", Env(), Timeout);
        Assert.True(b.ExitCode == 0, b.ToString());
        Assert.Contains("backends engine,torch", b.StdOut);
        Assert.Contains("backend torch/cpu", b.StdOut); // worker-1's join line
        SameLosses(Losses(engine), Losses(mixed), 50, "all-engine vs engine+torch");
    }

    [Theory]
    [InlineData("train --backend torch --device cuda", "--device cuda: CUDA is not available here")]
    [InlineData("train --device cuda", "--device cuda needs --backend torch")]
    [InlineData("train --backend jax", "--backend must be engine or torch")]
    [InlineData("dev --workers 2 --worker-backends engine,gpu", "--worker-backends: each entry must be engine or torch")]
    public void BadBackendOrDeviceIsOneLineAndExitCode2(string args, string message)
    {
        using var tmp = new TempDirectory("torch-bad");
        var r = CliRunner.Run($"{args} {Model} --max-iters 1 --out {tmp.Path}", Env(), Timeout);
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.Single(r.StdErrLines);
        Assert.Contains(message, r.StdErr);
    }
}
