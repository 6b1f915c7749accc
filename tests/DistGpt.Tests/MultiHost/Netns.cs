using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using Xunit;

namespace DistGpt.Tests.MultiHost;

/// <summary>Runs `ip` / `tc` (iproute2) and tells whether Linux network namespaces can be used here: Linux, root,
/// iproute2 installed, and `ip netns add` permitted (checked by adding and deleting a probe namespace).</summary>
public static class Netns
{
    public sealed record Result(int ExitCode, string Output)
    {
        public bool Ok => ExitCode == 0;
    }

    static readonly Lazy<string?> unavailable = new(Probe);
    static readonly Lazy<string?> shaping = new(ProbeShaping);

    /// <summary>True when the multi-host tests can run; otherwise <paramref name="why"/> says what is missing.</summary>
    public static bool Available(out string why)
    {
        why = unavailable.Value ?? "";
        return unavailable.Value == null;
    }

    /// <summary>The traffic-delay qdisc that works here: "netem" (delay), "tbf" (rate limit: the fallback where the kernel
    /// lacks sch_netem), or null with <paramref name="why"/> saying why neither does.</summary>
    public static string? DelayQdisc(out string why)
    {
        string? probe = shaping.Value;
        why = probe is "netem" or "tbf" ? "" : probe ?? "no traffic shaping";
        return probe is "netem" or "tbf" ? probe : null;
    }

    [DllImport("libc", EntryPoint = "geteuid")]
    static extern uint GetEuid();

    static string? Probe()
    {
        if (!OperatingSystem.IsLinux()) return "multi-host tests need Linux network namespaces (not Linux)";
        try
        {
            if (GetEuid() != 0) return "multi-host tests need root for `ip netns add` (running as a normal user)";
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return $"cannot tell the user id: {e.Message}"; }
        var version = Run("ip", ["-V"]);
        if (!version.Ok) return $"iproute2 is missing (`ip -V`: {version.Output.Trim()}); install it (apt-get install iproute2)";
        string probe = $"dgprobe{Environment.ProcessId}";
        var add = Run("ip", ["netns", "add", probe]);
        Run("ip", ["netns", "del", probe]);
        return add.Ok ? null : $"`ip netns add` is not permitted here: {add.Output.Trim()}";
    }

    static string? ProbeShaping()
    {
        if (!Available(out string why)) return why;
        if (!Run("tc", ["-V"]).Ok) return "tc (iproute2) is missing";
        string probe = $"dgprobeq{Environment.ProcessId}";
        if (!Run("ip", ["netns", "add", probe]).Ok) return "`ip netns add` failed";
        try
        {
            Run("ip", ["-n", probe, "link", "set", "lo", "up"]);
            var netem = Run("ip", ["netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "10ms"]);
            if (netem.Ok) return "netem";
            Run("modprobe", ["sch_netem"]);
            netem = Run("ip", ["netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "10ms"]);
            if (netem.Ok) return "netem";
            var tbf = Run("ip", ["netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "1mbit", "burst", "16kb", "latency", "1s"]);
            return tbf.Ok ? "tbf" : $"neither netem ({netem.Output.Trim()}) nor tbf ({tbf.Output.Trim()}) qdiscs are available";
        }
        finally { Run("ip", ["netns", "del", probe]); }
    }

    /// <summary>Runs a command to completion (20 s at most), stdout and stderr together.</summary>
    public static Result Run(string file, IReadOnlyList<string> args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        Process p;
        try { p = Process.Start(psi)!; }
        catch (System.ComponentModel.Win32Exception e) { return new Result(127, $"{file}: {e.Message}"); }
        using (p)
        {
            var output = new StringBuilder();
            var err = p.StandardError.ReadToEndAsync();
            output.Append(p.StandardOutput.ReadToEnd());
            if (!p.WaitForExit(20_000))
            {
                p.Kill(entireProcessTree: true);
                return new Result(-1, $"{file} {string.Join(' ', args)}: timed out");
            }
            output.Append(err.Result);
            return new Result(p.ExitCode, output.ToString());
        }
    }

    /// <summary>Runs `ip args…` and fails the test, naming the command, when it fails.</summary>
    public static string Ip(params string[] args)
    {
        var r = Run("ip", args);
        if (!r.Ok) Assert.Fail($"`ip {string.Join(' ', args)}` failed ({r.ExitCode}): {r.Output.Trim()}");
        return r.Output;
    }

    /// <summary>The names of the existing network namespaces (`ip netns list`, first word of each line).</summary>
    public static HashSet<string> List() =>
        Run("ip", ["netns", "list"]).Output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(l => l.Split(' ')[0]).ToHashSet();
}

/// <summary>A [Fact] that the runner reports as SKIPPED, with the reason, where network namespaces cannot be used (not
/// Linux, not root, no iproute2, `ip netns add` refused): never a silent pass. With <see cref="NeedsTrafficShaping"/> it
/// also needs a `tc` qdisc that can delay a host's traffic (netem, else tbf).</summary>
public sealed class NetnsFactAttribute : FactAttribute
{
    bool needsShaping;

    public NetnsFactAttribute()
    {
        if (!Netns.Available(out string why)) Skip = why;
    }

    public bool NeedsTrafficShaping
    {
        get => needsShaping;
        set
        {
            needsShaping = value;
            if (value && Skip == null && Netns.DelayQdisc(out string why) == null) Skip = why;
        }
    }
}
