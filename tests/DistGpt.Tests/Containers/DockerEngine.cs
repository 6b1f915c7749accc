using System.Diagnostics;
using System.Net.Sockets;
using System.Text.Json;
using Xunit;

namespace DistGpt.Tests.Containers;

/// <summary>The Docker engine the container tests run on: found once per test run (DOCKER_HOST, else
/// /var/run/docker.sock), asked its API version, and Testcontainers set up for it. Three settings Testcontainers 4.16 needs
/// against an engine like Debian's dockerd 20.10 on a machine without a registry are set here unless already set:
/// DOCKER_API_VERSION (the client's default, 1.44, is refused by an engine that speaks 1.41 at most),
/// TESTCONTAINERS_RYUK_DISABLED (its reaper image cannot be pulled; the tests remove what they create) and, where this
/// machine is itself a container (/.dockerenv), TESTCONTAINERS_HOST_OVERRIDE=localhost.</summary>
public static class DockerEngine
{
    static readonly Lazy<string?> unavailable = new(Probe);

    /// <summary>Why the container tests cannot run here, or null when an engine answered.</summary>
    public static string? Unavailable => unavailable.Value;

    /// <summary>The engine's API version, as it said at the probe.</summary>
    public static string ApiVersion { get; private set; } = "";

    static string? Probe()
    {
        string host = Environment.GetEnvironmentVariable("DOCKER_HOST") is { Length: > 0 } h ? h : "unix:///var/run/docker.sock";
        if (!host.StartsWith("unix://", StringComparison.Ordinal))
            return $"DOCKER_HOST={host}: these tests reach the engine through a unix socket only";
        string socket = host["unix://".Length..];
        if (!File.Exists(socket)) return $"no Docker engine: {socket} does not exist (bash .ci/docker-engine.sh installs and starts one)";
        try
        {
            using var http = new HttpClient(new SocketsHttpHandler
            {
                ConnectCallback = async (_, cancel) =>
                {
                    var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                    await s.ConnectAsync(new UnixDomainSocketEndPoint(socket), cancel);
                    return new NetworkStream(s, ownsSocket: true);
                },
            }) { Timeout = TimeSpan.FromSeconds(5) };
            using var version = JsonDocument.Parse(http.GetStringAsync("http://docker/version").GetAwaiter().GetResult());
            ApiVersion = version.RootElement.GetProperty("ApiVersion").GetString() ?? "";
        }
        catch (Exception e)
        {
            return $"no Docker engine answers at {socket} ({e.GetBaseException().Message})";
        }
        if (Version.TryParse(ApiVersion, out var api) && api < new Version(1, 44)) SetUnlessSet("DOCKER_API_VERSION", ApiVersion);
        SetUnlessSet("TESTCONTAINERS_RYUK_DISABLED", "true");
        if (File.Exists("/.dockerenv")) SetUnlessSet("TESTCONTAINERS_HOST_OVERRIDE", "localhost");
        try
        {
            if (Cli("version") is { ExitCode: not 0 } cli) return $"the docker CLI does not work here: {cli.Output.Trim()}";
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return $"no docker CLI on PATH ({e.Message})";
        }
        return null;
    }

    static void SetUnlessSet(string name, string value)
    {
        if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable(name))) Environment.SetEnvironmentVariable(name, value);
    }

    /// <summary>Runs the docker CLI (for what Testcontainers has no call for: SIGKILL, compose), speaking the engine's
    /// API version; returns the exit code and stdout+stderr.</summary>
    public static (int ExitCode, string Output) Cli(params string[] args) => Run("docker", args, TimeSpan.FromMinutes(3));

    public static (int ExitCode, string Output) Run(string program, IEnumerable<string> args, TimeSpan timeout, IDictionary<string, string>? env = null, string? workingDirectory = null)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = workingDirectory ?? "" };
        foreach (var a in args) start.ArgumentList.Add(a);
        if (!string.IsNullOrEmpty(ApiVersion)) start.Environment["DOCKER_API_VERSION"] = Environment.GetEnvironmentVariable("DOCKER_API_VERSION") ?? ApiVersion;
        if (env != null) foreach (var (k, v) in env) start.Environment[k] = v;
        using var p = Process.Start(start)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            return (-1, $"{program} {string.Join(' ', args)}: timed out after {timeout.TotalSeconds:F0} s\n{stdout.Result}{stderr.Result}");
        }
        return (p.ExitCode, stdout.Result + stderr.Result);
    }
}

/// <summary>A [Fact] that the runner reports as SKIPPED, with the reason, where no Docker engine answers: never a silent pass.</summary>
public sealed class DockerFactAttribute : FactAttribute
{
    public DockerFactAttribute()
    {
        if (DockerEngine.Unavailable is { } why) Skip = why;
    }
}
