using System.Diagnostics;
using System.Text.Json;
using Xunit;
using Xunit.Abstractions;

namespace DistGpt.Tests.MultiHost;

/// <summary>Cluster training across hosts with their own addresses: a coordinator host and two worker hosts, each a
/// Linux network namespace, joined by veth cables to a bridge in a "switch" namespace (<see cref="VirtualNetwork"/>).
/// Nothing runs on 127.0.0.1. Skipped, with the reason, where namespaces cannot be made (<see cref="NetnsFactAttribute"/>).</summary>
[Collection(ProcessHeavy.Name)]
public sealed class MultiHostTests(ITestOutputHelper output)
{
    const string Model = "--n-layer 2 --n-head 2 --n-embd 32 --block-size 32 --batch-size 8 --eval-iters 1 --threads 1";
    /// <summary>3.2M parameters: each step's weights frame (12.7 MB) is more than the socket buffers hold, so when a cable
    /// is cut the coordinator's send stalls rather than fails; the worker must still be dropped within the deadline.</summary>
    const string BigModel = "--n-layer 4 --n-head 4 --n-embd 256 --block-size 32 --batch-size 4 --eval-iters 1 --threads 1";
    const int Port = 7070; // each host has its own network stack: no port can clash with anything on this machine
    static readonly TimeSpan Timeout = TimeSpan.FromMinutes(3);

    readonly string token = "mh-" + Guid.NewGuid().ToString("n");

    Dictionary<string, string> Env(bool withData = true) => new()
    {
        ["DISTGPT_DATA"] = withData ? TestData.CorpusPath() : "", // "" removes it: that host has no corpus of its own
        ["DISTGPT_CLUSTER_TOKEN"] = token,
    };

    void Log(string line)
    {
        output.WriteLine(line);
        Console.WriteLine($"[multi-host] {line}");
    }

    [NetnsFact]
    public void ThreeHostsTrainThenACutLinkIsDroppedAndTheRestoredWorkerRejoins()
    {
        using var net = new VirtualNetwork("coord", "w1", "w2");
        using var tmp = new TempDirectory("multihost");
        var coord = net["coord"];
        string url = $"http://{coord.Address}:{Port}";
        Log($"network {net.Subnet}.0/24: coordinator {coord.Address} ({coord.Namespace}), w1 {net["w1"].Address}, w2 {net["w2"].Address} (no corpus: the coordinator sends its windows)");

        // 1. The workers start first: the coordinator is unreachable, so they retry with backoff until it is up.
        string run1 = tmp.Subdirectory("run1");
        var w1 = net["w1"].Start($"worker --coordinator {url} --name w1 --threads 1 --connect-timeout 60", Env());
        var w2 = net["w2"].Start($"worker --coordinator {url} --name w2 --threads 1 --connect-timeout 60", Env(withData: false));
        // A worker pointed at an address where no host answers gives up after --connect-timeout with a clear message.
        string nobody = $"http://{net.Subnet}.250:{Port}";
        var lonely = net["w1"].Start($"worker --coordinator {nobody} --name lonely --threads 1 --connect-timeout 3", Env());
        Assert.True(w1.WaitForOutput(o => o.Contains("not reachable"), TimeSpan.FromSeconds(60)), w1.StdOut + w1.StdErr);
        var c1 = coord.Start($"coordinator --listen {url} --min-workers 2 {BigModel} --max-iters 30 --eval-interval 30 --heartbeat-timeout 3 --out {run1}", Env());
        var rc1 = c1.WaitForExit(Timeout);
        var rw1 = w1.WaitForExit(TimeSpan.FromSeconds(30));
        var rw2 = w2.WaitForExit(TimeSpan.FromSeconds(30));
        Assert.True(rc1.ExitCode == 0, rc1.ToString());
        Assert.True(rw1.ExitCode == 0, rw1.ToString());
        Assert.True(rw2.ExitCode == 0, rw2.ToString());
        Assert.Contains($"coordinator listening on {url}/", rc1.StdOut);
        Assert.Contains("worker 'w1' joined", rc1.StdOut);
        Assert.Contains("worker 'w2' joined", rc1.StdOut);
        Assert.Contains("sent by the coordinator", rw2.StdOut);
        var m1 = DistributedTests.Metrics(run1);
        Assert.Equal(Enumerable.Range(1, 30), m1.Select(m => m.GetProperty("step").GetInt32()));
        Assert.All(m1, m => Assert.Equal(2, m.GetProperty("workers").GetInt32()));
        var rl = lonely.WaitForExit(TimeSpan.FromSeconds(60));
        Assert.True(rl.ExitCode == 1, rl.ToString());
        Assert.Contains($"cannot reach the coordinator at {nobody}", rl.StdErr);
        Assert.DoesNotContain("   at ", rl.StdErr);
        Log($"run 1: 30 steps on 2 worker hosts, all exit 0; w1 first saw: {FirstLine(rw1.StdOut, "not reachable")}");
        Log($"unreachable coordinator: {FirstLine(rl.StdErr, "cannot reach")}");

        // 2. A longer run; mid-run w2's cable is pulled at the switch. The run is sized from run 1's step time to last
        // well past the cut, the drop (--heartbeat-timeout 3) and the rejoin.
        double stepMs = Median(m1.Skip(1).Select(m => m.GetProperty("step_ms").GetDouble()));
        int maxIters = Math.Clamp(30 + (int)Math.Ceiling(15_000 / Math.Max(stepMs, 0.5)), 150, 12_000);
        Log($"run 1 median step {stepMs:F1} ms: run 2 trains {maxIters} steps");
        string run2 = tmp.Subdirectory("run2");
        var c2 = coord.Start($"coordinator --listen {url} --min-workers 2 {BigModel} --max-iters {maxIters} --eval-interval {maxIters} --checkpoint-interval 0 --heartbeat-timeout 3 --out {run2}", Env());
        w1 = net["w1"].Start($"worker --coordinator {url} --name w1 --threads 1 --connect-timeout 60", Env());
        w2 = net["w2"].Start($"worker --coordinator {url} --name w2 --threads 1 --connect-timeout 60", Env(withData: false));
        Assert.True(WaitFor(() => MetricLines(run2) >= 30 || c2.HasExited, Timeout), c2.StdOut + c2.StdErr);
        Assert.False(c2.HasExited, "run 2 ended before the link was cut: " + c2.StdOut + c2.StdErr);

        // Cut just as a step ends, so the next step's weights (12.7 MB) are on the wire: the send stalls rather than fails.
        string metricsPath = Path.Combine(run2, "metrics.jsonl");
        long size = new FileInfo(metricsPath).Length;
        Assert.True(WaitFor(() => new FileInfo(metricsPath).Length != size, TimeSpan.FromSeconds(30), pollMs: 1), "no step finished");
        int cutAt = MetricLines(run2);
        net["w2"].SetLink(up: false);
        var sinceCut = Stopwatch.StartNew();
        Log($"cut w2's link at step ~{cutAt}: ip -n {net.SwitchNamespace} link set {net["w2"].SwitchPort} down");
        Assert.True(c2.WaitForOutput(o => o.Contains("worker 'w2' lost"), TimeSpan.FromSeconds(20)), c2.StdOut + c2.StdErr);
        double dropSeconds = sinceCut.Elapsed.TotalSeconds;
        Log($"coordinator after {dropSeconds:F1} s: {FirstLine(c2.StdOut, "worker 'w2' lost")}");
        Assert.True(dropSeconds < 10, $"the coordinator took {dropSeconds:F1} s to drop the cut worker (--heartbeat-timeout 3)");
        // Let at least one step run on w1 alone before the cable goes back in (else w2 may rejoin before the next step).
        Assert.True(WaitFor(() => File.ReadAllLines(metricsPath).Skip(cutAt + 1).Any(l => System.Text.RegularExpressions.Regex.IsMatch(l, "\"workers\":1[,}]")),
            TimeSpan.FromSeconds(30)), "no step ran on w1 alone after the cut");
        net["w2"].SetLink(up: true);
        Log("restored w2's link");
        Assert.True(w2.WaitForOutput(o => o.Contains("rejoined run"), TimeSpan.FromSeconds(60)), w2.StdOut + w2.StdErr);
        Log($"w2: {FirstLine(w2.StdOut, "rejoined run")}");

        var rc2 = c2.WaitForExit(Timeout);
        rw1 = w1.WaitForExit(TimeSpan.FromSeconds(30));
        rw2 = w2.WaitForExit(TimeSpan.FromSeconds(30));
        Assert.True(rc2.ExitCode == 0, rc2.ToString());
        Assert.True(rw1.ExitCode == 0, rw1.ToString());
        Assert.True(rw2.ExitCode == 0, rw2.ToString());
        var m2 = DistributedTests.Metrics(run2);
        Assert.Equal(Enumerable.Range(1, maxIters), m2.Select(m => m.GetProperty("step").GetInt32()));
        int lost = m2.FindIndex(m => m.TryGetProperty("lost_workers", out var l) && l.EnumerateArray().Any(n => n.GetString() == "w2"));
        Assert.True(lost >= 0, "no step names w2 in lost_workers");
        Assert.True(m2[lost].GetProperty("step_ms").GetDouble() < 10_000, $"the step that lost w2 took {m2[lost].GetProperty("step_ms")} ms");
        int alone = m2.FindIndex(lost + 1, m => m.GetProperty("workers").GetInt32() == 1);
        Assert.True(alone > lost, "no step ran on the remaining worker alone after w2 was lost");
        int back = m2.FindIndex(alone, m => m.GetProperty("workers").GetInt32() == 2);
        Assert.True(back > alone, $"w2 rejoined but no step after {m2[alone].GetProperty("step")} ran on 2 workers (the run ended at {maxIters})");
        Log($"run 2 metrics: step {m2[lost].GetProperty("step")} lost w2 ({m2[lost].GetProperty("step_ms").GetDouble():F0} ms), " +
            $"steps {m2[alone].GetProperty("step")}..{m2[back - 1].GetProperty("step")} on 1 worker, 2 workers again from step {m2[back].GetProperty("step")} to {maxIters}; all exit 0");

        net.Dispose();
        Assert.True(net.CleanupProblems.Count == 0, string.Join("; ", net.CleanupProblems));
        Assert.True(net.IsGone, "namespaces left behind");
    }

    [NetnsFact(NeedsTrafficShaping = true)]
    public void AHostWithDelayedTrafficShowsUpAsTheStraggler()
    {
        using var net = new VirtualNetwork("coord", "w1", "w2");
        using var tmp = new TempDirectory("multihost-straggler");
        string qdisc = Netns.DelayQdisc(out _)!;
        string applied = net["w2"].DelayTraffic(qdisc);
        Log(qdisc == "netem" ? $"w2's traffic delayed: tc qdisc add dev eth0 root {applied}"
            : $"netem is not available in this kernel; w2's traffic delayed with a rate limit instead: tc qdisc add dev eth0 root {applied}");
        string url = $"http://{net["coord"].Address}:{Port}";
        const int steps = 60;
        var c = net["coord"].Start($"coordinator --listen {url} --min-workers 2 {Model} --max-iters {steps} --eval-interval {steps} --heartbeat-timeout 5 --straggler-policy drop --straggler-timeout 0.3 --out {tmp.Path}", Env());
        var w1 = net["w1"].Start($"worker --coordinator {url} --name w1 --threads 1 --connect-timeout 20", Env());
        var w2 = net["w2"].Start($"worker --coordinator {url} --name w2 --threads 1 --connect-timeout 20", Env());
        Assert.True(WaitFor(() => StragglerSteps(tmp.Path, "w2") >= 3 || c.HasExited, Timeout), c.StdOut + c.StdErr);
        net["w2"].RemoveDelay(); // the rest of the run is quick, and w2 is in step again when the run ends
        Log("removed w2's delay after 3 straggler steps");

        var rc = c.WaitForExit(Timeout);
        var rw1 = w1.WaitForExit(TimeSpan.FromSeconds(30));
        var rw2 = w2.WaitForExit(TimeSpan.FromSeconds(30));
        Assert.True(rc.ExitCode == 0, rc.ToString());
        Assert.True(rw1.ExitCode == 0, rw1.ToString());
        Assert.True(rw2.ExitCode == 0, rw2.ToString());
        Assert.Contains("worker 'w2' is a straggler", rc.StdOut);
        var metrics = DistributedTests.Metrics(tmp.Path);
        Assert.Equal(Enumerable.Range(1, steps), metrics.Select(m => m.GetProperty("step").GetInt32()));
        var named = metrics.Where(m => Stragglers(m).Contains("w2")).ToList();
        Assert.True(named.Count >= 3, $"only {named.Count} steps name w2 as a straggler");
        Assert.All(named, m => Assert.Equal(2, m.GetProperty("workers").GetInt32()));
        Log($"coordinator: {FirstLine(rc.StdOut, "is a straggler")}");
        Log($"metrics: {named.Count} of {steps} steps have \"stragglers\": [\"w2\"], e.g. {named[0].GetRawText()}");

        net.Dispose();
        Assert.True(net.CleanupProblems.Count == 0, string.Join("; ", net.CleanupProblems));
        Assert.True(net.IsGone, "namespaces left behind");
    }

    static IEnumerable<string?> Stragglers(JsonElement m) =>
        m.TryGetProperty("stragglers", out var s) ? s.EnumerateArray().Select(n => n.GetString()) : [];

    static int StragglerSteps(string outDir, string worker)
    {
        try
        {
            return File.ReadAllLines(Path.Combine(outDir, "metrics.jsonl")).Count(l =>
            {
                try { return Stragglers(JsonDocument.Parse(l).RootElement).Contains(worker); }
                catch (JsonException) { return false; } // a line being written
            });
        }
        catch (IOException) { return 0; }
    }

    static int MetricLines(string outDir)
    {
        try { return File.ReadAllLines(Path.Combine(outDir, "metrics.jsonl")).Length; }
        catch (IOException) { return 0; }
    }

    static bool WaitFor(Func<bool> condition, TimeSpan timeout, int pollMs = 50)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > timeout) return false;
            Thread.Sleep(pollMs);
        }
        return true;
    }

    static double Median(IEnumerable<double> values)
    {
        var v = values.Order().ToArray();
        return v.Length == 0 ? 5 : v[v.Length / 2];
    }

    static string FirstLine(string text, string containing) =>
        text.Split('\n').FirstOrDefault(l => l.Contains(containing))?.Trim() ?? $"(no line with '{containing}')";
}
