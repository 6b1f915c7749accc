using DistGpt.Coordinator.Cli;
using Xunit;

namespace DistGpt.Tests.Hardening;

/// <summary>No exception type escapes as a stack trace: one we did not expect is one line naming the crash log that
/// holds its trace, exit 1. (Console.Error is process-wide: these run alone.)</summary>
[Collection(nameof(GemmTests))]
public sealed class ExitCodesTests
{
    static (int Code, string[] Lines) Run(Func<int> body)
    {
        var saved = Console.Error;
        var capture = new StringWriter();
        Console.SetError(capture);
        try { return (ExitCodes.Run(body), capture.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries)); }
        finally { Console.SetError(saved); }
    }

    [Fact]
    public void AnUnexpectedExceptionIsOneLineNamingTheCrashLogInOut()
    {
        using var temp = new TempDirectory("crash");
        CrashLog.OutDir = temp.Path;
        try
        {
            var (code, lines) = Run(() => throw new InvalidOperationException("the impossible happened"));
            Assert.Equal(ExitCodes.Failure, code);
            string line = Assert.Single(lines);
            string log = Path.Combine(temp.Path, "crash.log");
            Assert.Equal($"error: unexpected InvalidOperationException: the impossible happened (details in {log})", line);
            Assert.Contains("   at ", File.ReadAllText(log)); // the trace is kept, just not on the terminal
        }
        finally { CrashLog.OutDir = null; }
    }

    [Fact]
    public void WithoutAUsableOutTheCrashLogGoesToTheTempDirectory()
    {
        CrashLog.OutDir = "/proc/no-such-dir";
        try
        {
            var (code, lines) = Run(() => throw new AggregateException(new NotSupportedException("inner")));
            Assert.Equal(ExitCodes.Failure, code);
            string line = Assert.Single(lines);
            Assert.StartsWith("error: unexpected NotSupportedException: inner (details in " + Path.GetTempPath(), line);
            File.Delete(line[(line.IndexOf("details in ") + "details in ".Length)..^1]);
        }
        finally { CrashLog.OutDir = null; }
    }

    [Fact]
    public void OutOfMemoryIsOneLineSuggestingASmallerModel()
    {
        var (code, lines) = Run(() => throw new OutOfMemoryException());
        Assert.Equal(ExitCodes.Failure, code);
        Assert.StartsWith("error: out of memory", Assert.Single(lines));
    }
}
