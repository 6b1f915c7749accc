using Xunit;
using Xunit.Abstractions;

namespace DistGpt.Tests.Hardening;

/// <summary>What every failure a user can cause must look like, and the real CLI to provoke them with: exit code 2 (bad
/// input) or 1 (the run failed), exactly one stderr line starting "error: ", no stack frame anywhere.</summary>
public sealed class UserErrors(ITestOutputHelper output, TempDirectory temp)
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    /// <summary>A tiny, quick training run's flags (a few ms per step).</summary>
    public static readonly string[] Tiny =
        ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "16", "--batch-size", "2", "--eval-iters", "1", "--threads", "1"];

    /// <summary>A coordinator of a tiny run on 127.0.0.1:<paramref name="port"/> for one worker, returned once it waits for it.</summary>
    public static CliProcess WaitingCoordinator(int port, IDictionary<string, string> env, string outDir, string[] flags, int? openFileLimit = null)
    {
        var coordinator = CliRunner.Start(["coordinator", "--listen", $"http://127.0.0.1:{port}", "--min-workers", "1", "--out", outDir, .. flags, .. Tiny],
            env, openFileLimit: openFileLimit);
        Assert.True(coordinator.WaitForOutput(o => o.Contains("waiting for 1 worker"), Timeout), coordinator.StdOut + coordinator.StdErr);
        return coordinator;
    }

    public CliResult Distgpt(params string[] args) => Distgpt(new Dictionary<string, string>(), args);

    public CliResult Distgpt(Dictionary<string, string> extraEnv, params string[] args)
    {
        var env = new Dictionary<string, string>(extraEnv);
        env.TryAdd(TestData.EnvVar, TestData.CorpusPath());
        env.TryAdd("DISTGPT_CLUSTER_TOKEN", "user-errors-token"); // a coordinator on 0.0.0.0 refuses to start without one
        var r = CliRunner.Run(args, env, Timeout, workingDirectory: temp.Path);
        output.WriteLine($"$ distgpt {string.Join(' ', args)}\n{r}\n");
        Assert.False(r.TimedOut, $"distgpt {string.Join(' ', args)} timed out\n{r}");
        return r;
    }

    /// <summary>A finished 2-step tiny training run in a new directory: its --out, holding a checkpoint.</summary>
    public string TrainedRun(string name = "run", int steps = 2)
    {
        string outDir = temp.Combine(name);
        var r = Distgpt(["train", "--max-iters", steps.ToString(), "--out", outDir, .. Tiny]);
        Assert.True(r.ExitCode == 0, r.ToString());
        return outDir;
    }

    public static void AssertOneLineError(CliResult r, int exitCode, params string[] mentions)
    {
        Assert.True(r.ExitCode == exitCode, $"expected exit code {exitCode}\n{r}");
        Assert.DoesNotContain("   at ", r.StdErr);
        Assert.DoesNotContain("   at ", r.StdOut);
        Assert.DoesNotContain("Unhandled exception", r.StdErr);
        var lines = r.StdErrLines;
        Assert.True(lines.Length == 1, $"expected one line on stderr, got {lines.Length}\n{r}");
        Assert.StartsWith("error: ", lines[0]);
        foreach (string m in mentions) Assert.Contains(m, lines[0]);
    }

    public static void AssertBadInput(CliResult r, params string[] mentions) => AssertOneLineError(r, 2, mentions);

    /// <summary>SHA-256 of every file under <paramref name="dir"/> but the run lock (which each run rewrites with its pid).</summary>
    public static SortedDictionary<string, string> Snapshot(string dir) => new(
        Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories)
            .Where(f => Path.GetFileName(f) != DistGpt.Coordinator.Cli.OutputDirectory.LockFileName)
            .ToDictionary(f => Path.GetRelativePath(dir, f),
                f => Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(f)))),
        StringComparer.Ordinal);
}
