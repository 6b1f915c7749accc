using System.ComponentModel;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;

namespace DistGpt.Tests;

/// <summary>What a finished (or killed) CLI process left behind.</summary>
public sealed record CliResult(int ExitCode, string StdOut, string StdErr, TimeSpan Elapsed, bool TimedOut)
{
    /// <summary>stdout split into lines (no trailing empty line).</summary>
    public string[] StdOutLines => Lines(StdOut);

    /// <summary>stderr split into non-blank lines.</summary>
    public string[] StdErrLines => Lines(StdErr).Where(l => l.Trim().Length > 0).ToArray();

    static string[] Lines(string text)
    {
        string t = text.Replace("\r\n", "\n").TrimEnd('\n');
        return t.Length == 0 ? [] : t.Split('\n');
    }

    public override string ToString() =>
        $"exit code {ExitCode}{(TimedOut ? " (TIMED OUT, process tree killed)" : "")} after {Elapsed.TotalSeconds:F1} s\n" +
        $"--- stdout ---\n{StdOut}\n--- stderr ---\n{StdErr}--- end ---";
}

/// <summary>Runs the real `distgpt` CLI (distgpt.dll, copied next to the test assembly through the project reference)
/// as a child process: `dotnet distgpt.dll args…`. Both streams are drained asynchronously from the start (a chatty
/// child can never block on a full pipe); on timeout the whole process tree is killed. <see cref="Start(string[], IDictionary{string, string}?, string?)"/>
/// returns a handle for long-running processes (a coordinator and its workers), <see cref="Run(string[], IDictionary{string, string}?, TimeSpan?, string?)"/>
/// waits for the exit.</summary>
public static class CliRunner
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromMinutes(2);

    /// <summary>$DISTGPT_TEST_CLI (tests/run.sh points it at the ReadyToRun CLI ./distgpt publishes from the same sources),
    /// else distgpt.dll beside the test assembly.</summary>
    public static string DllPath
    {
        get
        {
            string path = Environment.GetEnvironmentVariable("DISTGPT_TEST_CLI") is { Length: > 0 } cli ? cli : Path.Combine(AppContext.BaseDirectory, "distgpt.dll");
            if (!File.Exists(path)) throw new FileNotFoundException($"the CLI is not built next to the tests: {path} is missing", path);
            return path;
        }
    }

    /// <summary>The dotnet host running the tests (DOTNET_HOST_PATH as set by the SDK, else this process if it is dotnet, else PATH).</summary>
    public static string DotnetHost
    {
        get
        {
            string? host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
            if (!string.IsNullOrEmpty(host) && File.Exists(host)) return host;
            string? self = Environment.ProcessPath;
            if (self != null && Path.GetFileNameWithoutExtension(self) == "dotnet") return self;
            return "dotnet";
        }
    }

    /// <summary>Runs `distgpt args…` to completion (or until <paramref name="timeout"/>, default 2 minutes, then kills the tree).
    /// <paramref name="env"/> adds to (or overrides) the inherited environment; an empty value removes the variable.</summary>
    public static CliResult Run(string[] args, IDictionary<string, string>? env = null, TimeSpan? timeout = null, string? workingDirectory = null)
    {
        using var p = Start(args, env, workingDirectory);
        return p.WaitForExit(timeout ?? DefaultTimeout);
    }

    /// <summary>As <see cref="Run(string[], IDictionary{string, string}?, TimeSpan?, string?)"/> with a command line split like a shell
    /// would (whitespace separates, double quotes group, backslash escapes a quote).</summary>
    public static CliResult Run(string args, IDictionary<string, string>? env = null, TimeSpan? timeout = null, string? workingDirectory = null) =>
        Run(Split(args), env, timeout, workingDirectory);

    public static Task<CliResult> RunAsync(string[] args, IDictionary<string, string>? env = null, TimeSpan? timeout = null, string? workingDirectory = null) =>
        Task.Run(() => Run(args, env, timeout, workingDirectory));

    /// <summary>Starts `distgpt args…` and returns at once; dispose the handle to kill the process tree if it is still running.
    /// <paramref name="openFileLimit"/>: the child's RLIMIT_NOFILE (soft and hard), set by bash's ulimit before it execs dotnet.
    /// <paramref name="prelude"/>: other bash commands run first in the process that becomes dotnet (its pid is $$).</summary>
    public static CliProcess Start(string[] args, IDictionary<string, string>? env = null, string? workingDirectory = null, int? openFileLimit = null,
        string? prelude = null)
    {
        if (openFileLimit is { } limit) prelude = prelude == null ? $"ulimit -n {limit}" : $"{prelude} && ulimit -n {limit}";
        var psi = new ProcessStartInfo(prelude == null ? DotnetHost : "bash")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            CreateNoWindow = true,
            StandardOutputEncoding = new UTF8Encoding(false),
            StandardErrorEncoding = new UTF8Encoding(false),
            WorkingDirectory = workingDirectory ?? Environment.CurrentDirectory,
        };
        if (prelude != null)
            foreach (string a in (string[])["-c", $"{prelude} && exec \"$0\" \"$@\"", DotnetHost]) psi.ArgumentList.Add(a);
        psi.ArgumentList.Add(DllPath);
        foreach (string a in args) psi.ArgumentList.Add(a);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        if (env != null)
            foreach (var (key, value) in env)
            {
                if (string.IsNullOrEmpty(value)) psi.Environment.Remove(key);
                else psi.Environment[key] = value;
            }
        return new CliProcess(psi, args);
    }

    public static string[] Split(string commandLine)
    {
        var args = new List<string>();
        var current = new StringBuilder();
        bool inQuotes = false, any = false;
        for (int i = 0; i < commandLine.Length; i++)
        {
            char ch = commandLine[i];
            if (ch == '\\' && i + 1 < commandLine.Length && commandLine[i + 1] == '"') { current.Append('"'); i++; any = true; }
            else if (ch == '"') { inQuotes = !inQuotes; any = true; }
            else if (char.IsWhiteSpace(ch) && !inQuotes)
            {
                if (any) args.Add(current.ToString());
                current.Clear();
                any = false;
            }
            else { current.Append(ch); any = true; }
        }
        if (inQuotes) throw new ArgumentException($"unbalanced quotes in '{commandLine}'", nameof(commandLine));
        if (any) args.Add(current.ToString());
        return args.ToArray();
    }
}

/// <summary>A running `distgpt` child process with its output captured so far.</summary>
public sealed class CliProcess : IDisposable
{
    readonly Process process;
    readonly StringBuilder stdout = new(), stderr = new();
    readonly Task stdoutPump, stderrPump;
    readonly Stopwatch clock;
    bool timedOut;

    internal CliProcess(ProcessStartInfo psi, string[] args)
    {
        Arguments = args;
        process = new Process { StartInfo = psi };
        clock = Stopwatch.StartNew();
        if (!process.Start()) throw new InvalidOperationException($"could not start {psi.FileName}");
        process.StandardInput.Close(); // the CLI never reads stdin; EOF rather than a pipe left open
        stdoutPump = Pump(process.StandardOutput, stdout);
        stderrPump = Pump(process.StandardError, stderr);
    }

    public IReadOnlyList<string> Arguments { get; }
    public int Id => process.Id;
    public bool HasExited => process.HasExited;
    public string StdOut { get { lock (stdout) return stdout.ToString(); } }
    public string StdErr { get { lock (stderr) return stderr.ToString(); } }

    static Task Pump(StreamReader reader, StringBuilder sink) => Task.Run(async () =>
    {
        var buffer = new char[8192];
        int n;
        try
        {
            while ((n = await reader.ReadAsync(buffer, 0, buffer.Length).ConfigureAwait(false)) > 0)
                lock (sink) sink.Append(buffer, 0, n);
        }
        catch (ObjectDisposedException) { }
        catch (IOException) { }
    });

    /// <summary>Polls the captured stdout (and stderr) until <paramref name="condition"/> holds; false when the process
    /// exits first or the timeout passes.</summary>
    public bool WaitForOutput(Func<string, bool> condition, TimeSpan timeout, bool includeStdErr = false)
    {
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < timeout)
        {
            if (condition(includeStdErr ? StdOut + StdErr : StdOut)) return true;
            if (process.HasExited)
            {
                Task.WaitAll([stdoutPump, stderrPump], TimeSpan.FromSeconds(5));
                return condition(includeStdErr ? StdOut + StdErr : StdOut);
            }
            Thread.Sleep(50);
        }
        return false;
    }

    /// <summary>Waits for the exit; after <paramref name="timeout"/> kills the whole process tree and reports TimedOut.</summary>
    public CliResult WaitForExit(TimeSpan timeout)
    {
        if (!process.WaitForExit(timeout))
        {
            timedOut = true;
            Kill();
            process.WaitForExit(TimeSpan.FromSeconds(10));
        }
        return Result();
    }

    public Task<CliResult> WaitForExitAsync(TimeSpan timeout) => Task.Run(() => WaitForExit(timeout));

    /// <summary>Sends a POSIX signal (e.g. 2 = SIGINT for a graceful Ctrl+C, 15 = SIGTERM). Returns false where unsupported.</summary>
    public bool Signal(int signal)
    {
        if (OperatingSystem.IsWindows() || process.HasExited) return false;
        return SysKill(process.Id, signal) == 0;
    }

    [DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    static extern int SysKill(int pid, int sig);

    /// <summary>Kills the process and all its descendants (no-op once exited).</summary>
    public void Kill()
    {
        try
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException) { }
        catch (Win32Exception) { }
        catch (NotSupportedException) { }
    }

    CliResult Result()
    {
        int exitCode = process.HasExited ? process.ExitCode : -1;
        // The child is gone; its pipes close unless a grandchild still holds them, so don't wait forever.
        Task.WaitAll([stdoutPump, stderrPump], TimeSpan.FromSeconds(10));
        return new CliResult(exitCode, StdOut, StdErr, clock.Elapsed, timedOut);
    }

    public void Dispose()
    {
        Kill();
        try { process.WaitForExit(TimeSpan.FromSeconds(10)); } catch (InvalidOperationException) { }
        process.Dispose();
    }
}
