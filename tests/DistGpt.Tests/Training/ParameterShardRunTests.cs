using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using DistGpt.Contracts;
using DistGpt.Contracts.Wire;
using DistGpt.WorkerSilo;
using Xunit;

namespace DistGpt.Tests.Training;

/// <summary>Parameter shards end to end (--shards): real processes, the peer plane on real sockets. The runs' losses and
/// final weights and moments must be --shards 1's bit for bit, in fp32 and bf16, with a holder SIGKILLed mid-run too;
/// the coordinator's link must carry no tensors and no node more than ~2 weight sets each way.</summary>
[Collection(ProcessHeavy.Name)]
public sealed class ParameterShardRunTests
{
    // 406,272 parameters: 7 of the norm's 64K chunks, so up to 7 ranges.
    const string Model = "--n-layer 2 --n-head 2 --n-embd 128 --block-size 32 --batch-size 6 --eval-iters 1 --threads 1";
    const long Parameters = 406_272;
    static readonly TimeSpan Timeout = TimeSpan.FromMinutes(3);

    static Dictionary<string, string> Env(string? fault = null, string? token = null)
    {
        var env = new Dictionary<string, string> { [TestData.EnvVar] = TestData.CorpusPath() };
        if (fault != null) env["DISTGPT_TEST_FAULT"] = fault;
        if (token != null) env["DISTGPT_CLUSTER_TOKEN"] = token;
        return env;
    }

    static void Dev(string outDir, string flags)
    {
        var r = CliRunner.Run($"dev --workers 3 --worker-threads 1 {Model} --max-iters 8 --eval-interval 4 {flags} --out {outDir}", Env(), Timeout);
        Assert.True(r.ExitCode == 0, r.ToString());
    }

    static double[] Losses(string dir) => DistributedTests.Metrics(dir).Select(m => m.GetProperty("loss").GetDouble()).ToArray();

    static void AssertSameRun(string expected, string actual)
    {
        Assert.Equal(Losses(expected), Losses(actual));
        foreach (string file in new[] { "model.safetensors", "optimizer.safetensors" })
            Assert.True(File.ReadAllBytes(Path.Combine(expected, "ckpt", file)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(actual, "ckpt", file))),
                $"{file} differs from the --shards 1 run's");
    }

    [Theory]
    [InlineData("fp32")]
    [InlineData("bf16")]
    public void TwoAndThreeShardsGiveOneShardsLossesWeightsAndMomentsBitForBit(string wire)
    {
        using var tmp = new TempDirectory("shards-" + wire);
        string one = tmp.Subdirectory("one"), two = tmp.Subdirectory("two"), three = tmp.Subdirectory("three");
        Dev(one, $"--shards 1 --wire-dtype {wire}");
        Dev(two, $"--shards 2 --wire-dtype {wire}");
        Dev(three, $"--shards auto --wire-dtype {wire}");
        AssertSameRun(one, two);
        AssertSameRun(one, three);

        // Bytes per step, from the third step on (a worker's peer bytes are its previous step's, complete when it reports),
        // but for the steps after an evaluation, whose lines count the weights gathered for it.
        foreach (var m in DistributedTests.Metrics(three).Skip(2).Where(m => (m.GetProperty("step").GetInt32() - 1) % 4 != 0))
        {
            var nodes = m.GetProperty("node_bytes");
            var coordinator = nodes.GetProperty("coordinator").GetProperty("socket");
            Assert.True(coordinator.GetProperty("sent").GetInt64() + coordinator.GetProperty("received").GetInt64() < 20_000,
                $"the coordinator moved tensors: {coordinator}");
            foreach (var worker in new[] { "worker-0", "worker-1", "worker-2" })
            {
                var peer = nodes.GetProperty(worker).GetProperty("peer");
                long each = Math.Max(peer.GetProperty("sent").GetInt64(), peer.GetProperty("received").GetInt64());
                // Per step each way: 2/3 of the gradients (or of their bf16 halves) out, 2/3 of the weights in, 1/3 to a replica.
                Assert.InRange(each, (wire == "bf16" ? 1.0 : 1.3) * 4 * Parameters, 2.2 * 4 * Parameters);
            }
        }
    }

    /// <summary>Beta SIGKILLed before it computes step 5 (its range summed by nobody), and after it reported step 5's norm
    /// but before it updated its range (the replicas have applied the update, the holder never sends it).</summary>
    [Fact]
    public void ASigkilledShardHolderLeavesTheRunBitForBitAsWithoutShards()
    {
        using var tmp = new TempDirectory("shards-kill");
        string clean = tmp.Subdirectory("clean");
        Cluster(clean, "--shards 1", betaFault: null);
        foreach (string fault in new[] { "stall-compute:5", "stall-update:5" })
        {
            string faulty = tmp.Subdirectory(fault.Replace(':', '-'));
            string log = Cluster(faulty, "--shards auto", betaFault: fault);
            Assert.Contains("their replica on", log);
            Assert.Contains("the step starts over", log);
            AssertSameRun(clean, faulty);
        }
    }

    /// <summary>A coordinator and workers alpha, beta and gamma; with <paramref name="betaFault"/> beta stalls where it says
    /// and is SIGKILLed there (with --shards auto it holds a range and keeps another's replica).</summary>
    static string Cluster(string outDir, string flags, string? betaFault)
    {
        int port = DistributedTests.FreePort();
        string token = "tok-" + Guid.NewGuid().ToString("n");
        using var coordinator = CliRunner.Start(CliRunner.Split(
            $"coordinator --listen http://127.0.0.1:{port} {Model} --min-workers 3 --replicas-per-share 1 --max-iters 10 --eval-interval 10 {flags} --out {outDir}"), Env(token: token));
        string worker = $"worker --coordinator http://127.0.0.1:{port} --threads 1 --name";
        int alphaPeerPort = DistributedTests.FreePort(); // (unused with --shards 1)
        using var alpha = CliRunner.Start(CliRunner.Split($"{worker} alpha --peer-port {alphaPeerPort}"), Env(token: token));
        using var beta = CliRunner.Start(CliRunner.Split($"{worker} beta"), Env(betaFault, token));
        using var gamma = CliRunner.Start(CliRunner.Split($"{worker} gamma"), Env(token: token));
        if (betaFault != null)
        {
            Assert.True(beta.WaitForOutput(o => o.Contains("fault injected: stalled"), Timeout), beta.StdOut + beta.StdErr);
            Process.GetProcessById(beta.Id).Kill();
        }
        var r = coordinator.WaitForExit(Timeout);
        Assert.True(r.ExitCode == 0, $"{r}\n--- alpha ---\n{alpha.StdOut}{alpha.StdErr}\n--- beta ---\n{beta.StdOut}{beta.StdErr}\n--- gamma ---\n{gamma.StdOut}{gamma.StdErr}");
        if (flags.Contains("--shards auto")) Assert.Contains($"peer plane on 127.0.0.1:{alphaPeerPort}", alpha.StdOut + alpha.StdErr);
        return r.StdOut + r.StdErr;
    }

    /// <summary>A peer plane of run "run-1" (secret "the-secret") serving one holder of the whole buffer, its refusals logged.</summary>
    sealed class Holder : IAsyncDisposable
    {
        readonly Model.Gpt model = new(new Model.GptConfig(VocabSize: 65, BlockSize: 32, NLayer: 2, NHead: 2, NEmbd: 128, Dropout: 0, Bias: false));
        readonly ShardedWorker shards;
        public PeerPlane Plane { get; }
        public List<string> Logged { get; } = [];

        public Holder(Fabric.FabricTls? tls)
        {
            Plane = new PeerPlane(IPAddress.Loopback, 0, "the-secret", "run-1", tls, line => { lock (Logged) Logged.Add(line); });
            var layout = new ShardLayout("run-1", model.Config.Hash(), 1, 0, 3,
                [new ShardPlacement(0, 0, model.Parameters.Count, "me", Plane.Endpoint)], [0], new ShardOptimizer(0.9f, 0.99f, 0.1f, 1e-8f, 0), []);
            shards = ShardedWorker.Create(layout, model, WireDType.Fp32, "me", _ => Task.CompletedTask, _ => { });
            Plane.Serve(shards);
        }

        public async ValueTask DisposeAsync()
        {
            await shards.DisposeAsync();
            await Plane.DisposeAsync();
            model.Dispose();
        }
    }

    [Fact]
    public async Task ThePeerPlaneAdmitsOnlyAPeerThatProvesTheRunsSecret()
    {
        await using var holder = new Holder(null);
        var (plane, logged) = (holder.Plane, holder.Logged);

        // The secret proven: admitted (the holder's ShardReady).
        await using (var peer = await PeerPlane.ConnectAsync(plane.Endpoint, "the-secret", null, "run-1", "friend", 1, 0, CancellationToken.None)) { }

        // A wrong secret, another run's, or no hello at all: closed without a word.
        foreach (var (secret, run) in new[] { ("a-guess", "run-1"), ("the-secret", "run-2") })
            await Assert.ThrowsAnyAsync<IOException>(() => PeerPlane.ConnectAsync(plane.Endpoint, secret, null, run, "stranger", 1, 0, CancellationToken.None));
        using (var client = new TcpClient())
        {
            var port = int.Parse(plane.Endpoint.Split(':')[^1]);
            await client.ConnectAsync(IPAddress.Loopback, port);
            var stream = client.GetStream();
            await stream.WriteAsync(new byte[64]); // not a frame
            var channel = new FrameChannel(stream, stream);
            Assert.Equal(MessageKind.PeerChallenge, (await channel.ReceiveAsync())!.Kind);
            var clock = Stopwatch.StartNew();
            await Assert.ThrowsAnyAsync<Exception>(async () =>
            {
                while (await channel.ReceiveAsync() is not null) { }
                throw new IOException("closed");
            });
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10));
        }
        lock (logged) Assert.Contains(logged, l => l.Contains("could not prove the run's peer secret") || l.Contains("closed before proving"));
    }

    /// <summary>In a TLS cluster a peer link is mutual TLS first: a peer without TLS, or whose certificate another CA
    /// signed, is refused before it may even prove the run's secret; one with the cluster's certificate is admitted.</summary>
    [Fact]
    public async Task InATlsClusterThePeerPlaneAdmitsOnlyNodesOfTheClustersCa()
    {
        using var ours = new TempDirectory("peer-tls");
        using var theirs = new TempDirectory("peer-tls-other");
        var (ca, _, (cert, key)) = TlsTests.MakeCertificates(ours);
        var (otherCa, _, (otherCert, otherKey)) = TlsTests.MakeCertificates(theirs);
        var tls = Fabric.FabricTls.Load(cert, key, ca);
        await using var holder = new Holder(tls);
        var (plane, logged) = (holder.Plane, holder.Logged);

        await using (var peer = await PeerPlane.ConnectAsync(plane.Endpoint, "the-secret", tls, "run-1", "friend", 1, 0, CancellationToken.None)) { }

        // A certificate of another cluster's CA, or no TLS (the secret itself would be right): refused (logged once per 10 s).
        var stranger = Fabric.FabricTls.Load(otherCert, otherKey, otherCa);
        await Assert.ThrowsAnyAsync<IOException>(() => PeerPlane.ConnectAsync(plane.Endpoint, "the-secret", stranger, "run-1", "stranger", 1, 0, CancellationToken.None));
        await Assert.ThrowsAnyAsync<Exception>(() => PeerPlane.ConnectAsync(plane.Endpoint, "the-secret", null, "run-1", "plain", 1, 0, CancellationToken.None));
        // Nor does this node trust a listener the cluster's CA did not sign.
        await using var impostor = new PeerPlane(IPAddress.Loopback, 0, "the-secret", "run-1", stranger, _ => { });
        await Assert.ThrowsAnyAsync<IOException>(() => PeerPlane.ConnectAsync(impostor.Endpoint, "the-secret", tls, "run-1", "friend", 1, 0, CancellationToken.None));
        lock (logged) Assert.Contains(logged, l => l.Contains("no TLS certificate of the cluster's CA"));
    }

    [Theory]
    [InlineData("0")]
    [InlineData("many")]
    [InlineData("-2")]
    public void ABadShardsValueIsRefusedWithOneLine(string value)
    {
        var r = CliRunner.Run(["dev", "--workers", "2", .. CliRunner.Split(Model), "--max-iters", "1", "--shards", value], Env());
        Hardening.UserErrors.AssertBadInput(r, "--shards", value);
    }
}
