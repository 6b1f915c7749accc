using System.Diagnostics;
using Xunit;
using Xunit.Abstractions;

namespace DistGpt.Tests.Hardening;

/// <summary>Numeric flags (finding 5): every one is checked where its option set is read, finite and in range, and a
/// shape that cannot fit in memory is refused up front with the estimate.</summary>
public sealed class FlagValidationTests : IDisposable
{
    readonly TempDirectory temp = new("flags");
    readonly ITestOutputHelper output;
    readonly UserErrors cli;

    public FlagValidationTests(ITestOutputHelper output) => (this.output, cli) = (output, new UserErrors(output, temp));

    public void Dispose() => temp.Dispose();

    CliResult Train(params string[] flags) =>
        cli.Distgpt(["train", "--max-iters", "1", "--out", temp.Combine("out"), .. Without(UserErrors.Tiny, flags), .. flags]);

    /// <summary>The tiny flags minus the ones a test sets itself (an option may be given once).</summary>
    static string[] Without(string[] baseline, string[] flags)
    {
        var result = new List<string>();
        for (int i = 0; i < baseline.Length; i += 2)
            if (!flags.Contains(baseline[i])) result.AddRange([baseline[i], baseline[i + 1]]);
        return result.ToArray();
    }

    [Fact]
    public void AHugeBatchSizeIsRefusedNotOverflowed() =>
        UserErrors.AssertBadInput(Train("--batch-size", "2147483647"), "--batch-size", "2147483647");

    [Theory]
    [InlineData("--n-embd", "1000000")]
    [InlineData("--block-size", "100000")]
    public void AModelThatCannotFitInMemoryIsRefusedWithTheEstimate(string flag, string value) =>
        UserErrors.AssertBadInput(Train(flag, value), "GiB of memory", "available", "parameters");

    [Theory]
    [InlineData("--dropout")]
    [InlineData("--weight-decay")]
    [InlineData("--learning-rate")]
    [InlineData("--grad-clip")]
    public void NaNIsRefusedNamingTheFlag(string flag) => UserErrors.AssertBadInput(Train(flag, "nan"), flag, "NaN");

    [Fact]
    public void SampleRefusesANaNTemperature()
    {
        string run = cli.TrainedRun();
        UserErrors.AssertBadInput(cli.Distgpt("sample", "--checkpoint", run, "--temperature", "nan"), "--temperature", "NaN");
    }

    [Fact]
    public void ADataPathThatIsADirectoryWithoutTokenFilesSaysSo()
    {
        string dir = temp.Subdirectory("corpus-dir");
        UserErrors.AssertBadInput(Train("--data", dir), dir, "has no train.bin");
    }

    /// <summary>Each command's numeric flags (with flags that make an accepted value quick to notice).</summary>
    static readonly (string Command, string[] Flags, string[] Numeric)[] Surfaces =
    [
        ("train", [], ["--batch-size", "--block-size", "--n-layer", "--n-head", "--n-embd", "--dropout", "--learning-rate", "--min-lr",
            "--warmup-iters", "--lr-decay-iters", "--max-iters", "--eval-interval", "--eval-iters", "--weight-decay", "--beta1", "--beta2",
            "--grad-clip", "--seed", "--checkpoint-interval", "--threads"]),
        ("dev", ["--workers", "1"], ["--worker-threads", "--max-restarts", "--heartbeat-timeout", "--join-timeout", "--straggler-timeout",
            "--bucket-cap-mb", "--max-rejections", "--shards"]),
        ("coordinator", ["--listen", "http://127.0.0.1:1"], ["--min-workers", "--heartbeat-timeout", "--join-timeout", "--straggler-timeout",
            "--bucket-cap-mb", "--max-rejections", "--shards"]),
        ("sample", [], ["--max-new-tokens", "--temperature", "--top-k", "--seed", "--threads"]),
        ("bench", ["--config", "tiny"], ["--steps", "--warmup", "--threads"]),
        ("worker", ["--coordinator", "http://127.0.0.1:1"], ["--connect-timeout", "--threads", "--silo-port", "--peer-port"]),
        ("bench-exchange", ["--config", "tiny"], ["--rounds"]),
        ("bench-gemm", [], ["--threads"]),
    ];

    /// <summary>Bad for every numeric flag: not a number, not finite, negative, past float or int range, absurdly large.</summary>
    static readonly string[] BadValues = ["nan", "NaN", "inf", "-Infinity", "-1", "-0.5", "1e39", "1e308", "99999999999999999999", "abc", "0x10", ""];

    [Fact]
    public void GeneratedBadNumericValuesAreRefusedWithOneLineAndTheCheckpointUntouched()
    {
        string run = cli.TrainedRun();
        var before = UserErrors.Snapshot(run);
        var random = new Random(20261202);
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < 16 && clock.Elapsed < TimeSpan.FromSeconds(12); i++)
        {
            var (command, fixedFlags, numeric) = Surfaces[i % Surfaces.Length];
            string flag = numeric[random.Next(numeric.Length)], value = BadValues[random.Next(BadValues.Length)];
            string[] target = command switch
            {
                "sample" => ["--checkpoint", run],
                "bench" or "worker" or "bench-exchange" or "bench-gemm" => [],
                _ => ["--resume", "--out", run, .. Without(UserErrors.Tiny, [flag])],
            };
            var r = cli.Distgpt([command, .. fixedFlags, .. target, flag, value]);
            UserErrors.AssertBadInput(r, flag);
            Assert.Equal(before, UserErrors.Snapshot(run));
        }
        output.WriteLine($"{clock.Elapsed.TotalSeconds:F1} s");
    }

    [Theory]
    [InlineData("{\"dropout\": \"NaN\"}", "dropout")]
    [InlineData("{\"learning_rate\": 1e39}", "learning-rate")]
    [InlineData("{\"warmup_iters\": 1e10}", "warmup_iters")]
    [InlineData("{\"min_lr\": null}", "min_lr")]
    [InlineData("[1, 2]", "not a JSON object")]
    [InlineData("DIR", "is a directory")]
    public void ABadConfigFileIsOneLineNamingTheSetting(string content, string mention) // (keys the tiny flags do not override)
    {
        string path = temp.Combine("config.json");
        if (content == "DIR") Directory.CreateDirectory(path);
        else File.WriteAllText(path, content);
        UserErrors.AssertBadInput(Train("--config", path), mention);
    }
}
