using DistGpt.Model.Data;
using Xunit;

namespace DistGpt.Tests;

/// <summary>Where the tests find the repository and the real corpus. The corpus is DISTGPT_DATA, else
/// ../shared/data/tinyshakespeare.txt next to the repository root; when neither exists the asking test FAILS
/// (a missing corpus must never turn into a silently passing test).</summary>
public static class TestData
{
    public const string EnvVar = "DISTGPT_DATA";

    static readonly Lazy<string> repoRoot = new(FindRepoRoot);
    static readonly Lazy<Corpus> corpus = new(() => Corpus.Load(CorpusPath()));

    /// <summary>The folder holding DistGpt.sln, found by walking up from the test assembly.</summary>
    public static string RepoRoot => repoRoot.Value;

    /// <summary>The Tiny Shakespeare corpus, loaded once per test run.</summary>
    public static Corpus Corpus => corpus.Value;

    public static string CorpusPath()
    {
        string? env = Environment.GetEnvironmentVariable(EnvVar);
        if (!string.IsNullOrEmpty(env))
        {
            if (!File.Exists(env)) Assert.Fail($"{EnvVar} is set to '{env}', which does not exist");
            return Path.GetFullPath(env);
        }
        string fallback = Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared", "data", "tinyshakespeare.txt"));
        if (!File.Exists(fallback))
            Assert.Fail($"no training corpus: set {EnvVar} to Tiny Shakespeare's path, or put it at {fallback}");
        return fallback;
    }

    static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "DistGpt.sln"))) return dir.FullName;
        throw new InvalidOperationException($"no DistGpt.sln above {AppContext.BaseDirectory}");
    }
}
