using Xunit;
using Xunit.Abstractions;

namespace DistGpt.Tests.Hardening;

/// <summary>--out (finding 3): it must be a directory we can write, one run at a time holds it, and a new run never
/// silently replaces the checkpoint in it.</summary>
public sealed class OutputDirectoryTests : IDisposable
{
    readonly TempDirectory temp = new("outdir");
    readonly UserErrors cli;

    public OutputDirectoryTests(ITestOutputHelper output) => cli = new UserErrors(output, temp);

    public void Dispose() => temp.Dispose();

    [Theory]
    [InlineData("/proc/distgpt-out", "cannot create")]
    [InlineData("/sys/distgpt-out", "cannot create")]
    [InlineData("/dev/null", "is a file, not a directory")]
    [InlineData("/proc", "is not writable")]
    [InlineData("FILE", "is a file, not a directory")]
    public void AnOutThatIsNotAWritableDirectoryExitsTwoWithOneLine(string outDir, string problem)
    {
        if (outDir == "FILE") File.WriteAllText(outDir = temp.Combine("a-file"), "not a directory");
        UserErrors.AssertBadInput(cli.Distgpt(["train", "--max-iters", "1", "--out", outDir, .. UserErrors.Tiny]), outDir, problem);
    }

    [Fact]
    public void ASecondRunOnTheSameOutIsRefusedNamingTheHoldersPid()
    {
        string outDir = temp.Combine("busy");
        using var first = CliRunner.Start(["train", "--max-iters", "1000000", "--checkpoint-interval", "0", "--out", outDir, .. UserErrors.Tiny],
            new Dictionary<string, string> { [TestData.EnvVar] = TestData.CorpusPath() });
        Assert.True(first.WaitForOutput(o => o.Contains("step "), UserErrors.Timeout), first.StdOut + first.StdErr);

        foreach (string command in new[] { "train", "dev", "coordinator" })
            UserErrors.AssertBadInput(cli.Distgpt([command, "--max-iters", "1", "--out", outDir, .. UserErrors.Tiny]),
                outDir, "in use by another run", $"pid {first.Id}");
        Assert.False(first.HasExited, "the first run must keep going");
    }

    [Fact]
    public void NewRunRefusesToReplaceACheckpointWithoutResume()
    {
        string outDir = cli.TrainedRun();
        var before = UserErrors.Snapshot(outDir);
        foreach (string command in new[] { "train", "dev", "coordinator" })
        {
            UserErrors.AssertBadInput(cli.Distgpt([command, "--max-iters", "4", "--out", outDir, .. UserErrors.Tiny]),
                outDir, "already holds a checkpoint", "--resume", "--overwrite");
            Assert.Equal(before, UserErrors.Snapshot(outDir));
        }
    }

    [Fact]
    public void OverwriteStartsAfreshWhereResumeContinues()
    {
        string outDir = cli.TrainedRun(steps: 2);
        var resumed = cli.Distgpt(["train", "--resume", "--max-iters", "3", "--out", outDir, .. UserErrors.Tiny]);
        Assert.True(resumed.ExitCode == 0, resumed.ToString());
        Assert.Equal(3, File.ReadAllLines(Path.Combine(outDir, "metrics.jsonl")).Length);

        var fresh = cli.Distgpt(["train", "--overwrite", "--max-iters", "1", "--out", outDir, .. UserErrors.Tiny]);
        Assert.True(fresh.ExitCode == 0, fresh.ToString());
        Assert.Single(File.ReadAllLines(Path.Combine(outDir, "metrics.jsonl")));
        Assert.Contains("\"step\": 1,", File.ReadAllText(Path.Combine(outDir, "ckpt", "checkpoint.json")));

        UserErrors.AssertBadInput(cli.Distgpt(["train", "--overwrite", "--resume", "--max-iters", "2", "--out", outDir, .. UserErrors.Tiny]),
            "--resume and --overwrite");
    }
}
