using System.Diagnostics;
using System.Net;
using System.Text.Json;
using System.Text.RegularExpressions;
using DistGpt.Fabric;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Orleans.Configuration;
using Orleans.Hosting;
using Orleans.Runtime;
using Xunit;

namespace DistGpt.Tests;

/// <summary>The Orleans fabric with real processes: `distgpt status` sees the silos as Orleans membership does, a killed
/// worker's silo is declared dead within seconds while the run goes on, and nothing without the cluster token gets in.</summary>
[Collection(ProcessHeavy.Name)]
public sealed class OrleansClusterTests
{
    const string Model = "--n-layer 2 --n-head 2 --n-embd 32 --block-size 32 --batch-size 8 --eval-iters 1 --threads 1";
    static readonly TimeSpan Timeout = TimeSpan.FromMinutes(3);

    static Dictionary<string, string> Env(string? token = null) => DistributedTests.Env(token);

    /// <summary>An Orleans client of the run's cluster inside the test, holding the token: polls membership precisely.</summary>
    static async Task<IHost> ClientAsync(int gatewayPort, string token)
    {
        var client = FabricHosting.BuildClient(new IPEndPoint(IPAddress.Loopback, gatewayPort), new ClusterAuthentication(token), _ => { });
        await client.StartAsync();
        return client;
    }

    static async Task<Orleans.MembershipEntry[]> SilosAsync(IHost client) =>
        await client.Services.GetRequiredService<IClusterClient>().GetGrain<IManagementGrain>(0).GetDetailedHosts(onlyActive: false);

    [Fact]
    public async Task StatusListsTheCoordinatorAndBothWorkerSilosAndAKilledWorkersSiloIsDeadWithinSecondsWhileTheRunGoesOn()
    {
        using var tmp = new TempDirectory("status");
        using var dev = CliRunner.Start(CliRunner.Split($"dev --workers 2 --worker-threads 1 {Model} --max-iters 100000 --eval-interval 100000 --checkpoint-interval 0 --out {tmp.Path}"), Env());
        Assert.True(dev.WaitForOutput(o => o.Contains("step 10:"), Timeout), dev.StdOut + dev.StdErr);
        var hint = Regex.Match(dev.StdOut, @"DISTGPT_CLUSTER_TOKEN=\$\(cat (\S+)\) distgpt status --coordinator (http://127\.0\.0\.1:(\d+)/?)");
        Assert.True(hint.Success, dev.StdOut);
        string token = File.ReadAllText(hint.Groups[1].Value), url = hint.Groups[2].Value;
        int gateway = int.Parse(hint.Groups[3].Value) + 2;

        var status = CliRunner.Run($"status --coordinator {url} --json --timeout 60", Env(token), TimeSpan.FromSeconds(90)); // JIT on a loaded machine
        Assert.True(status.ExitCode == 0, status.ToString());
        var json = JsonDocument.Parse(status.StdOut).RootElement;
        Assert.Matches("^[0-9a-f]{12}$", json.GetProperty("run_id").GetString());
        Assert.True(json.GetProperty("step").GetInt32() >= 10, status.StdOut);
        var silos = json.GetProperty("silos").EnumerateArray().ToList();
        Assert.Equal(["coordinator", "worker-0", "worker-1"], silos.Select(s => s.GetProperty("name").GetString()).Order());
        Assert.All(silos, s => Assert.Equal("Active", s.GetProperty("status").GetString()));
        Assert.All(silos, s => Assert.Matches(@"^S?127\.0\.0\.1:\d+", s.GetProperty("address").GetString()));
        var table = CliRunner.Run($"status --coordinator {url} --timeout 60", Env(token), TimeSpan.FromSeconds(90));
        Assert.True(table.ExitCode == 0, table.ToString());
        Assert.Contains("worker-1", table.StdOut);
        Assert.Contains("Active", table.StdOut);

        using var client = await ClientAsync(gateway, token);
        int victim = DistributedTests.WorkerPids(dev.Id).First();
        string victimName = File.ReadAllText($"/proc/{victim}/cmdline").Split('\0') is var args ? args[Array.IndexOf(args, "--name") + 1] : "";
        var before = (await SilosAsync(client)).Single(s => s.SiloName == victimName && s.Status == SiloStatus.Active);
        int linesBefore = File.ReadAllLines(Path.Combine(tmp.Path, "metrics.jsonl")).Length;
        var clock = Stopwatch.StartNew();
        Process.GetProcessById(victim).Kill();
        while ((await SilosAsync(client)).Single(s => s.SiloAddress.Equals(before.SiloAddress)).Status != SiloStatus.Dead)
        {
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"{victimName}'s silo still not dead after {clock.Elapsed.TotalSeconds:F1} s");
            await Task.Delay(50);
        }
        var declared = clock.Elapsed;
        // Alone this takes 0.2-0.4 s; while the rest of the suite loads both cores it has taken up to 1.7 s (a cold code path
        // JIT-compiled without tiering), so the bound leaves room for that rather than fail CI at random.
        Assert.True(declared <= TimeSpan.FromSeconds(5), $"{victimName}'s silo declared dead after {declared.TotalSeconds:F2} s");
        // The run goes on: dev mode restarts the worker, whose new silo (a new generation under the same name) joins.
        Assert.True(dev.WaitForOutput(o => o.Contains("restarting it"), Timeout), dev.StdOut);
        Assert.True(SpinWait.SpinUntil(() => File.ReadAllLines(Path.Combine(tmp.Path, "metrics.jsonl")).Length > linesBefore + 50, Timeout));
        Assert.True(SpinWait.SpinUntil(() => SilosAsync(client).Result.Count(s => s.SiloName == victimName && s.Status == SiloStatus.Active) == 1, Timeout));
        Console.WriteLine($"[orleans] {victimName} SIGKILLed: its silo declared dead after {declared.TotalMilliseconds:F0} ms; the run went on");
        await client.StopAsync();
    }

    [Fact]
    public async Task NoSiloOrClientWithoutTheTokenGetsIntoTheClusterAndTheRunIsUntouched()
    {
        using var tmp = new TempDirectory("intruders");
        int port = DistributedTests.FreePort();
        string token = "right-" + Guid.NewGuid().ToString("n");
        using var coordinator = CliRunner.Start(CliRunner.Split($"coordinator --listen http://127.0.0.1:{port} --min-workers 1 {Model} --max-iters 30 --eval-interval 30 --out {tmp.Path}"), Env(token));
        Assert.True(coordinator.WaitForOutput(o => o.Contains("waiting for 1 worker"), Timeout), coordinator.StdOut + coordinator.StdErr);
        var primary = new IPEndPoint(IPAddress.Loopback, port + 1);

        // A plain Orleans silo that knows the cluster id and where the primary is, but speaks no token handshake.
        var plain = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        plain.UseOrleans(silo =>
        {
            silo.Configure<ClusterOptions>(o => (o.ClusterId, o.ServiceId) = (FabricHosting.ClusterId, FabricHosting.ServiceId));
            silo.Configure<SiloOptions>(o => o.SiloName = "rogue-plain");
            silo.ConfigureEndpoints(IPAddress.Loopback, DistributedTests.FreePort(), 0);
            silo.UseDevelopmentClustering(primary);
            silo.Configure<ClusterMembershipOptions>(o => o.MaxJoinAttemptTime = TimeSpan.FromSeconds(2));
        });
        using (var rogue = plain.Build())
        {
            using var give = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await Assert.ThrowsAnyAsync<Exception>(() => rogue.StartAsync(give.Token));
        }

        // A DistGpt silo with the wrong token: refused at the handshake, and it says so.
        var wrong = new ClusterAuthentication("wrong-token");
        using (var rogue = FabricHosting.BuildSilo(new SiloEndpoints("rogue-token", IPAddress.Loopback, DistributedTests.FreePort(), 0, primary, false),
                   wrong, new FabricFailure(), TimeSpan.FromSeconds(10), _ => { }, _ => { }))
        {
            using var give = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            wrong.Refused += _ => give.Cancel();
            await Assert.ThrowsAnyAsync<Exception>(() => rogue.StartAsync(give.Token));
            Assert.StartsWith("authentication failed", wrong.Refusal);
        }

        // A client with the wrong token cannot call any grain.
        var denied = CliRunner.Run($"status --coordinator http://127.0.0.1:{port} --json", Env("wrong-token"), TimeSpan.FromSeconds(60));
        Assert.True(denied.ExitCode == 2, denied.ToString());
        Assert.Contains("authentication failed", denied.StdErr);
        Assert.DoesNotContain("   at ", denied.StdErr);

        // The run: one real worker joins and trains to the end; the cluster never listed a rogue.
        using var worker = CliRunner.Start(CliRunner.Split($"worker --coordinator http://127.0.0.1:{port} --name honest --threads 1"), Env(token));
        using var client = await ClientAsync(port + 2, token);
        Assert.True(SpinWait.SpinUntil(() => SilosAsync(client).Result.Any(s => s.SiloName == "honest"), Timeout));
        var names = (await SilosAsync(client)).Select(s => s.SiloName).Order().ToList();
        Assert.Equal(["coordinator", "honest"], names);
        await client.StopAsync();
        var r = coordinator.WaitForExit(Timeout);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(Enumerable.Range(1, 30), DistributedTests.Metrics(tmp.Path).Select(m => m.GetProperty("step").GetInt32()));
        Assert.DoesNotContain("rogue-", r.StdOut); // no silo of that name ever reached the coordinator
        Assert.Equal(0, worker.WaitForExit(TimeSpan.FromSeconds(30)).ExitCode);
    }
}
