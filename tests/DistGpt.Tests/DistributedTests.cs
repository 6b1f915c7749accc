using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using System.Diagnostics;
using Xunit;

namespace DistGpt.Tests;

/// <summary>Dev and cluster mode with real `distgpt` processes on 127.0.0.1.</summary>
[Collection(ProcessHeavy.Name)]
public sealed class DistributedTests
{
    const string Model = "--n-layer 2 --n-head 2 --n-embd 32 --block-size 32 --batch-size 8 --eval-iters 1 --threads 1";
    static readonly TimeSpan Timeout = TimeSpan.FromMinutes(3);

    public static Dictionary<string, string> Env(string? token = null)
    {
        var env = new Dictionary<string, string> { ["DISTGPT_DATA"] = TestData.CorpusPath() };
        if (token != null) env["DISTGPT_CLUSTER_TOKEN"] = token;
        return env;
    }

    /// <summary>A coordinator port P whose silo and gateway ports (P + 1, P + 2) are free too, below Linux's ephemeral range
    /// (32768 and up), so that no worker silo or client socket the kernel numbers can take one of them meanwhile.</summary>
    public static int FreePort()
    {
        for (int attempt = 0; ; attempt++)
        {
            int port = Random.Shared.Next(20_000, 32_000);
            var listeners = new List<TcpListener>();
            try
            {
                for (int p = port; p < port + 3; p++)
                {
                    var l = new TcpListener(IPAddress.Loopback, p);
                    l.Start();
                    listeners.Add(l);
                }
                return port;
            }
            catch (SocketException) when (attempt < 100) { }
            finally
            {
                foreach (var l in listeners) l.Stop();
            }
        }
    }

    public static List<JsonElement> Metrics(string outDir) =>
        File.ReadAllLines(Path.Combine(outDir, "metrics.jsonl")).Select(l => JsonDocument.Parse(l).RootElement).ToList();

    [Fact]
    public void TwoWorkerDevModeMatchesSingleProcessLossesOver20Steps()
    {
        using var tmp = new TempDirectory("equiv");
        string single = tmp.Subdirectory("single"), dev = tmp.Subdirectory("dev");
        var a = CliRunner.Run($"train {Model} --max-iters 20 --eval-interval 20 --out {single}", Env(), Timeout);
        Assert.True(a.ExitCode == 0, a.ToString());
        var b = CliRunner.Run($"dev --workers 2 --worker-threads 1 {Model} --max-iters 20 --eval-interval 20 --out {dev}", Env(), Timeout);
        Assert.True(b.ExitCode == 0, b.ToString());
        var ma = Metrics(single);
        var mb = Metrics(dev);
        Assert.Equal(Enumerable.Range(1, 20), mb.Select(m => m.GetProperty("step").GetInt32()));
        for (int i = 0; i < 20; i++)
        {
            double la = ma[i].GetProperty("loss").GetDouble(), lb = mb[i].GetProperty("loss").GetDouble();
            Assert.True(Math.Abs(la - lb) <= 1e-4, $"step {i + 1}: single-process loss {la}, 2-worker loss {lb}");
            Assert.Equal(2, mb[i].GetProperty("workers").GetInt32());
            Assert.True(mb[i].TryGetProperty("comm_ms", out _), "dev metrics carry comm_ms");
        }
        Assert.Contains("worker-0", b.StdOut);
        Assert.Contains("worker-1", b.StdOut);
    }

    [Fact]
    public void DevModeMovesTensorsThroughSharedMemoryWithTheSameLossesAsTcpAndCleansUp()
    {
        using var tmp = new TempDirectory("shm");
        string run = $"dev --workers 2 --worker-threads 1 {Model} --max-iters 10 --eval-interval 10";
        string shm = tmp.Subdirectory("shm"), tcp = tmp.Subdirectory("tcp");
        var a = CliRunner.Run($"{run} --out {shm}", Env(), Timeout); // shm is dev mode's default
        Assert.True(a.ExitCode == 0, a.ToString());
        Assert.Contains("payloads through shared memory", a.StdOut);
        // Over the socket the sums stream in ~10 buckets a worker (~2,600 values each) during the backward, while shared
        // memory carries each whole: the same losses also say the buckets assemble exactly the whole sum.
        var b = CliRunner.Run($"{run} --out {tcp} --transport tcp --bucket-cap-mb 0.01", Env(), Timeout);
        Assert.True(b.ExitCode == 0, b.ToString());
        Assert.DoesNotContain("payloads through shared memory", b.StdOut);
        Assert.Equal(Metrics(tcp).Select(m => m.GetProperty("loss").GetDouble()), Metrics(shm).Select(m => m.GetProperty("loss").GetDouble()));
        // The metrics say which way the tensors went: over the socket (wire_bytes) or through the regions (shm_bytes),
        // and node by node (node_bytes) how much each sent and received.
        foreach (var m in Metrics(shm))
        {
            Assert.True(m.GetProperty("wire_bytes").GetProperty("received").GetInt64() < 10_000, m.ToString());
            Assert.True(m.GetProperty("shm_bytes").GetProperty("received").GetInt64() > 100_000, m.ToString());
            AssertNodeBytesMirrorTheCoordinators(m, "shm");
        }
        foreach (var m in Metrics(tcp))
        {
            Assert.True(m.GetProperty("wire_bytes").GetProperty("received").GetInt64() > 100_000, m.ToString());
            Assert.False(m.TryGetProperty("shm_bytes", out _), m.ToString());
            AssertNodeBytesMirrorTheCoordinators(m, "socket");
        }
        string runId = JsonDocument.Parse(File.ReadAllText(Path.Combine(shm, "ckpt", "checkpoint.json"))).RootElement.GetProperty("run_id").GetString()!;
        Assert.Empty(Directory.GetFiles("/dev/shm", $"distgpt-{runId}-*"));
        var bad = CliRunner.Run($"{run} --out {tmp.Subdirectory("bad")} --transport carrier-pigeon", Env(), Timeout);
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("--transport", bad.StdErr);
    }

    /// <summary>node_bytes: the coordinator's bytes are wire_bytes / shm_bytes, and what the workers sent and received
    /// adds up to what it received and sent; each worker moved a gradient sum's worth (&gt; 100 kB, the model has ~30K
    /// parameters) one way and the weights the other, through <paramref name="payloadPath"/>.</summary>
    static void AssertNodeBytesMirrorTheCoordinators(JsonElement m, string payloadPath)
    {
        var nodes = m.GetProperty("node_bytes");
        long Get(JsonElement node, string path, string direction) =>
            node.TryGetProperty(path, out var p) ? p.GetProperty(direction).GetInt64() : 0;
        var coordinator = nodes.GetProperty("coordinator");
        Assert.Equal(m.GetProperty("wire_bytes").GetProperty("sent").GetInt64(), Get(coordinator, "socket", "sent"));
        Assert.Equal(m.GetProperty("wire_bytes").GetProperty("received").GetInt64(), Get(coordinator, "socket", "received"));
        var workers = nodes.EnumerateObject().Where(n => n.Name != "coordinator").Select(n => n.Value).ToList();
        Assert.True(workers.Count == 2, m.ToString());
        foreach (string path in new[] { "socket", "shm" })
        {
            Assert.Equal(Get(coordinator, path, "received"), workers.Sum(w => Get(w, path, "sent")));
            Assert.Equal(Get(coordinator, path, "sent"), workers.Sum(w => Get(w, path, "received")));
        }
        Assert.All(workers, w => Assert.True(Get(w, payloadPath, "sent") > 100_000 && Get(w, payloadPath, "received") > 100_000, m.ToString()));
    }

    /// <summary>Over a socket, workers stream their sums in buckets during the backward (--bucket-cap-mb, as DDP's
    /// bucket_cap_mb): the coordinator assembles exactly the sum a whole payload carries, here in bf16 (fp32: the shared
    /// memory test above, whose socket run streams).</summary>
    [Fact]
    public void StreamedGradientBucketsGiveTheSameLossesAsWholePayloads()
    {
        using var tmp = new TempDirectory("buckets");
        string run = $"dev --workers 2 --worker-threads 1 {Model} --max-iters 10 --eval-interval 10 --transport tcp";
        var bad = CliRunner.Run($"{run} --out {tmp.Subdirectory("bad")} --bucket-cap-mb -1", Env(), Timeout);
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("--bucket-cap-mb", bad.StdErr);
        string whole = tmp.Subdirectory("whole"), streamed = tmp.Subdirectory("streamed");
        var a = CliRunner.Run($"{run} --wire-dtype bf16 --bucket-cap-mb 0 --out {whole}", Env(), Timeout);
        Assert.True(a.ExitCode == 0, a.ToString());
        var b = CliRunner.Run($"{run} --wire-dtype bf16 --bucket-cap-mb 0.01 --out {streamed}", Env(), Timeout); // ~2,600 values a bucket
        Assert.True(b.ExitCode == 0, b.ToString());
        var ma = Metrics(whole);
        var mb = Metrics(streamed);
        Assert.Equal(ma.Select(m => m.GetProperty("loss").GetDouble()), mb.Select(m => m.GetProperty("loss").GetDouble()));
        for (int i = 0; i < ma.Count; i++)
        {
            long got = ma[i].GetProperty("wire_bytes").GetProperty("received").GetInt64();
            long gotStreamed = mb[i].GetProperty("wire_bytes").GetProperty("received").GetInt64();
            // the same payload bytes, plus a header per bucket (several buckets per worker)
            Assert.InRange(gotStreamed - got, 2 * 4 * 100, 2 * 30 * 400);
        }
    }

    [Fact]
    public void DevModeWithBf16GradientsTrainsCloseToFp32AndReceivesHalfTheGradientBytes()
    {
        using var tmp = new TempDirectory("bf16");
        const int steps = 30;
        string run = $"dev --workers 2 --worker-threads 1 {Model} --max-iters {steps} --warmup-iters 2 --eval-interval {steps}";
        var bad = CliRunner.Run($"{run} --out {tmp.Subdirectory("bad")} --wire-dtype fp16", Env(), Timeout);
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("--wire-dtype", bad.StdErr);

        string fp32 = tmp.Subdirectory("fp32"), bf16 = tmp.Subdirectory("bf16");
        var a = CliRunner.Run($"{run} --out {fp32}", Env(), Timeout); // fp32 is the default
        Assert.True(a.ExitCode == 0, a.ToString());
        var b = CliRunner.Run($"{run} --out {bf16} --wire-dtype bf16", Env(), Timeout);
        Assert.True(b.ExitCode == 0, b.ToString());
        Assert.Contains("gradients on the wire as bf16", b.StdOut);
        Assert.Contains("gradients as bf16", b.StdOut); // the workers' join lines: told by the coordinator, no worker flag

        var ma = Metrics(fp32);
        var mb = Metrics(bf16);
        Assert.Equal(Enumerable.Range(1, steps), mb.Select(m => m.GetProperty("step").GetInt32()));
        double[] la = ma.Select(m => m.GetProperty("loss").GetDouble()).ToArray(), lb = mb.Select(m => m.GetProperty("loss").GetDouble()).ToArray();
        Assert.All(lb, l => Assert.True(double.IsFinite(l)));
        Assert.True(lb[^5..].Average() < lb[0] - 0.3, $"bf16 run does not train: {string.Join(", ", lb)}");
        for (int i = 0; i < steps; i++)
            Assert.True(Math.Abs(la[i] - lb[i]) <= 0.02, $"step {i + 1}: fp32 loss {la[i]}, bf16 loss {lb[i]}");
        // Step 1 is computed at the same initial weights; after that bf16-rounded gradients change the updates.
        Assert.Equal(la[0], lb[0]);
        int differing = Enumerable.Range(0, steps).Count(i => la[i] != lb[i]);
        Assert.True(differing >= steps / 2, $"only {differing} of {steps} losses differ from the fp32 run: were the gradients really sent as bf16?");
        Assert.True(double.IsFinite(mb[^1].GetProperty("val_loss").GetDouble()));

        // Dev mode's payloads cross shared memory (shm_bytes); only prefixes and headers the socket (wire_bytes).
        static long Moved(JsonElement m, string direction) =>
            m.GetProperty("wire_bytes").GetProperty(direction).GetInt64() + m.GetProperty("shm_bytes").GetProperty(direction).GetInt64();
        for (int i = 0; i < steps; i++)
        {
            Assert.True(ma[i].GetProperty("wire_bytes").GetProperty("received").GetInt64() < 10_000, "gradient payloads on the dev-mode socket");
            long sentA = Moved(ma[i], "sent"), sentB = Moved(mb[i], "sent");
            long gotA = Moved(ma[i], "received"), gotB = Moved(mb[i], "received");
            Assert.True(Math.Abs(sentA - sentB) <= sentA / 100, $"step {i + 1}: weights sent {sentA} (fp32 run) vs {sentB} (bf16 run): they stay fp32");
            Assert.True(Math.Abs((double)gotB / gotA - 0.5) < 0.01, $"step {i + 1}: received {gotB} bytes with bf16, {gotA} with fp32");
        }
    }

    [Fact]
    public void ClusterModeWithTwoSeparatelyStartedWorkersFinishesAndAllExitZero()
    {
        using var tmp = new TempDirectory("cluster");
        int port = FreePort();
        string token = "test-token-" + Guid.NewGuid().ToString("n");
        using var coordinator = CliRunner.Start(CliRunner.Split(
            $"coordinator --listen http://127.0.0.1:{port} --min-workers 2 {Model} --max-iters 8 --eval-interval 8 --out {tmp.Path}"), Env(token));
        // One worker with its own copy of the corpus, one without: the coordinator sends that one its token windows.
        using var w1 = CliRunner.Start(CliRunner.Split($"worker --coordinator http://127.0.0.1:{port} --name alpha --threads 1"), Env(token));
        var noData = Env(token);
        noData["DISTGPT_DATA"] = "";
        using var w2 = CliRunner.Start(CliRunner.Split($"worker --coordinator http://127.0.0.1:{port} --name beta --threads 1"), noData);
        var rc = coordinator.WaitForExit(Timeout);
        var r1 = w1.WaitForExit(TimeSpan.FromSeconds(30));
        var r2 = w2.WaitForExit(TimeSpan.FromSeconds(30));
        Assert.True(rc.ExitCode == 0, rc.ToString());
        Assert.True(r1.ExitCode == 0, r1.ToString());
        Assert.True(r2.ExitCode == 0, r2.ToString());
        Assert.Contains("sent by the coordinator", r2.StdOut);
        Assert.Equal(8, Metrics(tmp.Path).Count);
        Assert.DoesNotContain(token, rc.StdOut + rc.StdErr + File.ReadAllText(Path.Combine(tmp.Path, "metrics.jsonl")));
    }

    [Fact]
    public void MismatchedOrUnauthenticatedWorkersAreRefusedAndTheRunGoesOn()
    {
        using var tmp = new TempDirectory("refuse");
        int port = FreePort();
        string token = "right-token";
        using var coordinator = CliRunner.Start(CliRunner.Split(
            $"coordinator --listen http://127.0.0.1:{port} --min-workers 1 {Model} --max-iters 6 --eval-interval 6 --out {tmp.Path}"), Env(token));
        string worker = $"worker --coordinator http://127.0.0.1:{port} --threads 1 --connect-timeout 20";

        var wrongToken = CliRunner.Run($"{worker} --name intruder", Env("wrong-token"), Timeout);
        Assert.Equal(2, wrongToken.ExitCode);
        Assert.Contains("authentication failed", wrongToken.StdErr);

        var noToken = Env();
        var missing = CliRunner.Run($"{worker} --name anonymous", noToken, Timeout);
        Assert.Equal(2, missing.ExitCode);
        Assert.Contains("authentication failed", missing.StdErr);

        string otherData = tmp.Combine("other.txt");
        File.WriteAllText(otherData, string.Concat(Enumerable.Repeat("To be, or not to be: that is the question.\n", 200)));
        var wrongData = CliRunner.Run($"{worker} --name stranger --data {otherData}", Env(token), Timeout);
        Assert.Equal(2, wrongData.ExitCode);
        Assert.Contains("data mismatch", wrongData.StdErr);

        var wrongConfig = CliRunner.Run($"{worker} --name picky --expect-config 0123456789abcdef", Env(token), Timeout);
        Assert.Equal(2, wrongConfig.ExitCode);
        Assert.Contains("model config mismatch", wrongConfig.StdErr);

        var good = CliRunner.Run($"{worker} --name good", Env(token), Timeout);
        Assert.True(good.ExitCode == 0, good.ToString());
        var rc = coordinator.WaitForExit(Timeout);
        Assert.True(rc.ExitCode == 0, rc.ToString());
        Assert.Contains("refused a cluster connection from 127.0.0.1", rc.StdOut); // the intruder's silo, at the token handshake
        Assert.Contains("refused worker \"stranger\": data mismatch", rc.StdOut);
        Assert.Equal(6, Metrics(tmp.Path).Count);
        Assert.DoesNotContain(token, rc.StdOut + rc.StdErr);
    }

    [Fact]
    public void WorkerPointedAtADeadAddressFailsWithAClearMessage()
    {
        int port = FreePort();
        var r = CliRunner.Run($"worker --coordinator http://127.0.0.1:{port} --name lonely --connect-timeout 2", Env("t"), TimeSpan.FromSeconds(60));
        Assert.Equal(1, r.ExitCode);
        Assert.Contains($"cannot reach the coordinator at http://127.0.0.1:{port}", r.StdErr);
        Assert.DoesNotContain("   at ", r.StdErr);
    }

    [Fact]
    public void DevModeWithoutRestartsEndsWithinSecondsWhenAWorkerDies()
    {
        using var tmp = new TempDirectory("devkill");
        using var dev = CliRunner.Start(CliRunner.Split(
            $"dev --workers 2 --worker-threads 1 --restart-workers false {Model} --max-iters 100000 --eval-interval 100000 --out {tmp.Path}"), Env());
        Assert.True(dev.WaitForOutput(o => o.Contains("step 10:"), Timeout), dev.StdOut + dev.StdErr);
        // The shared-memory payload regions are unlinked once both ends mapped them: a kill cannot leave them behind.
        string runId = System.Text.RegularExpressions.Regex.Match(dev.StdOut, "joined run ([0-9a-f]+)").Groups[1].Value;
        Assert.NotEmpty(runId);
        Assert.Contains("payloads through shared memory", dev.StdOut);
        Assert.Empty(Directory.GetFiles("/dev/shm", $"distgpt-{runId}-*"));
        var child = WorkerPids(dev.Id).First();
        Process.GetProcessById(child).Kill();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var r = dev.WaitForExit(TimeSpan.FromSeconds(30));
        Assert.False(r.TimedOut, r.ToString());
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(15), $"took {clock.Elapsed.TotalSeconds:F1} s to stop");
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("worker", r.StdErr);
        Assert.Empty(WorkerPids(dev.Id));
    }

    /// <summary>Child processes of a pid (Linux /proc).</summary>
    public static List<int> WorkerPids(int parent) =>
        Directory.GetDirectories("/proc").Select(Path.GetFileName).Where(n => int.TryParse(n, out _)).Select(int.Parse!)
            .Where(pid =>
            {
                try { return File.ReadAllText($"/proc/{pid}/stat").Split(") ")[1].Split(' ')[1] == parent.ToString(); }
                catch (IOException) { return false; }
            }).ToList();
}

/// <summary>Tests that start several processes run one at a time (2 cores).</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ProcessHeavy
{
    public const string Name = "process-heavy";
}
