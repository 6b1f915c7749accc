using System.Diagnostics;
using Xunit;
using Xunit.Abstractions;

namespace DistGpt.Tests.Hardening;

/// <summary>Corpus files a user can get wrong, for every command that reads one: one line, exit 2, nothing written.</summary>
public sealed class DataFileTests : IDisposable
{
    readonly TempDirectory temp = new("datafiles");
    readonly UserErrors cli;

    public DataFileTests(ITestOutputHelper output) => cli = new UserErrors(output, temp);

    public void Dispose() => temp.Dispose();

    /// <summary>Bad corpora: (path, what the error says).</summary>
    IEnumerable<(string Path, string Problem)> BadCorpora()
    {
        string empty = temp.Combine("empty.txt");
        File.WriteAllBytes(empty, []);
        yield return (empty, "empty");
        var random = new Random(7);
        var binary = new byte[4096];
        random.NextBytes(binary);
        string bin = temp.Combine("random.bin");
        File.WriteAllBytes(bin, binary);
        yield return (bin, "not valid UTF-8");
        yield return (temp.Subdirectory("a-directory"), "has no train.bin"); // a directory is read as token files
        string fifo = temp.Combine("a-fifo");
        Process.Start("mkfifo", fifo).WaitForExit();
        yield return (fifo, "not a regular file"); // reading it would block forever
        yield return ("/proc/self/mem", "not a regular file"); // unreadable by read(2) at offset 0
        string dangling = temp.Combine("dangling");
        File.CreateSymbolicLink(dangling, temp.Combine("nowhere"));
        yield return (dangling, "does not exist");
    }

    [Fact]
    public void BadCorporaAreRefusedWithOneLineByEveryCommandThatReadsOne()
    {
        string run = cli.TrainedRun();
        var before = UserErrors.Snapshot(run);
        // Each corpus through the next of the ways a corpus is read, so every way meets several kinds of bad file.
        Func<string, CliResult>[] readers =
        [
            path => cli.Distgpt(["train", "--resume", "--max-iters", "3", "--out", run, "--data", path, .. UserErrors.Tiny]),
            path => cli.Distgpt(["dev", "--workers", "1", "--max-iters", "3", "--resume", "--out", run, "--data", path, .. UserErrors.Tiny]),
            path => cli.Distgpt("bench", "--config", "tiny", "--steps", "1", "--data", path),
            path => cli.Distgpt(new() { [TestData.EnvVar] = path }, ["train", "--max-iters", "1", "--out", temp.Combine("fresh"), .. UserErrors.Tiny]),
        ];
        var clock = Stopwatch.StartNew();
        int k = 0;
        foreach (var (path, problem) in BadCorpora())
        {
            UserErrors.AssertBadInput(readers[k++ % readers.Length](path), path, problem);
            Assert.Equal(before, UserErrors.Snapshot(run));
        }
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"took {clock.Elapsed}");
    }
}
