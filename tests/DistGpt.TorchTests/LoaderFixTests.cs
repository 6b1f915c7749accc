using System.Diagnostics;
using DistGpt.Tests;
using Xunit;

namespace DistGpt.TorchTests;

/// <summary>src/TorchBackend/weak-glibcxx.py on a fresh copy of TorchSharp's libLibTorchSharp.so from the NuGet cache: it marks
/// the one version requirement weak (one bit of one byte), says so, then loads; a second run changes nothing; the cache's
/// file is never written. Where libstdc++ has GLIBCXX_3.4.32 it leaves the file as is.</summary>
public sealed class LoaderFixTests
{
    static string Script => Path.Combine(TestData.RepoRoot, "src", "TorchBackend", "weak-glibcxx.py");
    static string NativeDir => Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native");

    static string CachedLibrary()
    {
        string packages = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } p ? p
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        string path = Path.Combine(packages, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        Assert.True(File.Exists(path), $"TorchSharp's native library is not in the NuGet cache at {path}");
        return path;
    }

    static (int Code, string Output) Fix(string path)
    {
        var info = new ProcessStartInfo("python3", [Script, path]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(info)!;
        string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output);
    }

    [Fact]
    public void MarksTheVersionWeakOnceLoadsAndLeavesTheCacheAlone()
    {
        string cached = CachedLibrary();
        byte[] original = File.ReadAllBytes(cached);
        // Beside libtorch in the test output, so the load check finds its dependencies.
        string copy = Path.Combine(NativeDir, $"libLibTorchSharp.test-{Guid.NewGuid():n}.so");
        File.Copy(cached, copy);
        try
        {
            var first = Fix(copy);
            Assert.True(first.Code == 0, first.Output);
            byte[] patched = File.ReadAllBytes(copy);
            if (first.Output.Contains("left as is"))
                Assert.Equal(original, patched); // this libstdc++ has the version: nothing to do
            else
            {
                Assert.Contains("marked GLIBCXX_3.4.32 weak", first.Output);
                Assert.Equal(original.Length, patched.Length);
                var changed = Enumerable.Range(0, original.Length).Where(i => original[i] != patched[i]).ToArray();
                Assert.Single(changed);
                Assert.Equal(0x2, original[changed[0]] ^ patched[changed[0]]); // VER_FLG_WEAK
                var second = Fix(copy);
                Assert.True(second.Code == 0, second.Output);
                Assert.Contains("already weak", second.Output);
                Assert.Equal(patched, File.ReadAllBytes(copy));
            }
            Assert.Equal(original, File.ReadAllBytes(cached));
        }
        finally
        {
            File.Delete(copy);
        }
    }

    [Fact]
    public void TheBuildOutputsCopyIsAlreadyFixed()
    {
        var r = Fix(Path.Combine(NativeDir, "libLibTorchSharp.so"));
        Assert.True(r.Code == 0, r.Output);
        Assert.True(r.Output.Contains("already weak") || r.Output.Contains("left as is"), r.Output);
    }

    [Fact]
    public void AMissingFileIsNamedAndFails()
    {
        var r = Fix(Path.Combine(NativeDir, "no-such-library.so"));
        Assert.Equal(1, r.Code);
        Assert.Contains("no-such-library.so: no such file", r.Output);
    }
}
