using DistGpt.Contracts;
using DistGpt.Coordinator.Grains;
using DistGpt.Coordinator.Hosting;
using DistGpt.Fabric;
using DistGpt.Model;
using DistGpt.Model.Engine;
using DistGpt.WorkerSilo;
using Microsoft.Extensions.DependencyInjection;
using Orleans.Configuration;
using Orleans.Serialization;
using Orleans.Runtime;
using Orleans.TestingHost;
using Xunit;

namespace DistGpt.Tests.Grains;

/// <summary>The grains on Orleans' own in-process test cluster (two silos, "Silo_0" and "Silo_1"), configured with
/// DistGpt's grain runtime (placement, serialization): admission by the coordinator grain, worker grains placed on the
/// silo their key names, and Orleans membership turning a silo's death into a lost worker.</summary>
public sealed class GrainTests : IAsyncLifetime
{
    const string Token = "grain-test-token";
    static readonly RunDescription Run = new("run-1", new GptConfig(65, 32, 2, 2, 32, 0, false), "abc", 1337, 27_840,
        new string('a', 64), Token, TimeSpan.FromSeconds(10));

    InProcessTestCluster cluster = null!;

    public async Task InitializeAsync()
    {
        var builder = new InProcessTestClusterBuilder(2);
        builder.ConfigureSilo((options, silo) =>
        {
            FabricHosting.AddGrainRuntime(silo);
            silo.Configure<ClusterMembershipOptions>(o =>
            {
                o.ProbeTimeout = TimeSpan.FromSeconds(1);
                o.NumMissedProbesLimit = 2;
                o.NumVotesForDeathDeclaration = 1;
            });
            string name = options.SiloName;
            silo.Services.AddSingleton(new RunMembership(Run, _ => { }));
            silo.Services.AddSingleton(new RunProgress(Run.RunId, 100));
            silo.Services.AddSingleton(new WorkerSilo.WorkerSilo(new WorkerOptions
            {
                Coordinator = new Uri("http://127.0.0.1:9"), CoordinatorSiloPort = 10, Name = name, Log = _ => { },
            }));
        });
        builder.ConfigureClient(client => client.Services.AddSerializer(s => s.AddJsonSerializer(t => t.Namespace?.StartsWith("DistGpt.") == true)));
        cluster = builder.Build();
        await cluster.DeployAsync();
    }

    public async Task DisposeAsync() => await cluster.DisposeAsync();

    InProcessSiloHandle Silo(string name) => cluster.Silos.Single(s => s.Name == name);

    T Service<T>(string silo) where T : notnull => cluster.GetSiloServiceProvider(Silo(silo).SiloAddress).GetRequiredService<T>();

    static JoinRequest Request(string name, string? token = Token, string? build = null) =>
        new(name, build ?? BuildInfo.Version, BuildInfo.ProtocolVersion, 1, null, null, token);

    [Fact]
    public async Task TheCoordinatorGrainAdmitsOnlyTokenHoldersOfThisBuildWithAUniqueValidName()
    {
        var coordinator = cluster.Client.GetGrain<ICoordinatorGrain>("Silo_0");
        Assert.Contains("authentication failed: wrong cluster token", (await coordinator.Join(Request("w1", token: "guess"))).RefusedReason);
        Assert.Contains("authentication failed: no cluster token", (await coordinator.Join(Request("w1", token: null))).RefusedReason);
        Assert.Contains("build mismatch", (await coordinator.Join(Request("w1", build: "0.0.0-other"))).RefusedReason);
        Assert.Contains("letters, digits", (await coordinator.Join(Request("w1\n[coordinator] worker 'admin' joined"))).RefusedReason);
        Assert.Contains("coordinator's silo name", (await coordinator.Join(Request(FabricHosting.CoordinatorSilo))).RefusedReason);

        var accepted = (await coordinator.Join(Request("w1"))).Accepted;
        Assert.NotNull(accepted);
        Assert.Equal(Run.RunId, accepted!.RunId);
        Assert.Equal(Run.Config, accepted.Config); // GptConfig crossed the grain call intact
        Assert.Equal(0, accepted.Rank);
        Assert.NotNull(accepted.Ticket);

        // The ticket is the only way onto the data plane, and it works once.
        var membership = Service<RunMembership>("Silo_0");
        Assert.Null(membership.Redeem(new DataPlaneHello("w1", "forged", false)));
        Assert.Null(membership.Redeem(new DataPlaneHello("w2", accepted.Ticket!, false)));
        var redeemed = membership.Redeem(new DataPlaneHello("w1", accepted.Ticket!, false));
        Assert.Equal(0, redeemed!.Value.Accepted.Rank);
        Assert.Null(redeemed.Value.Accepted.Ticket);
        Assert.Null(membership.Redeem(new DataPlaneHello("w1", accepted.Ticket!, false)));

        // Once a member, the name is taken.
        membership.Admit(new FakeWorker("w1", 0, null));
        Assert.Contains("already in the run", (await coordinator.Join(Request("w1"))).RefusedReason);
        Assert.Equal(1, (await coordinator.Join(Request("w2"))).Accepted!.Rank);
        var status = await coordinator.GetStatus();
        Assert.Equal(Run.RunId, status.RunId);
        Assert.Equal("w1", Assert.Single(status.Workers).Name);
    }

    [Theory]
    [InlineData("Silo_0", "Silo_1")]
    [InlineData("Silo_1", "Silo_0")]
    public async Task AWorkerGrainRunsOnTheSiloItsKeyNamesAndHandsTheOrderToThatSilosWorker(string home, string other)
    {
        var request = new ComputeRequest(Run.RunId, 7, 6, Run.ConfigHash, 4, 4);
        await cluster.Client.GetGrain<IWorkerGrain>(home).ComputeGradients(request);

        using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        var order = await Service<WorkerSilo.WorkerSilo>(home).Orders.ClaimAsync(request, wait.Token);
        using var none = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Service<WorkerSilo.WorkerSilo>(other).Orders.ClaimAsync(request, none.Token));

        Assert.Equal(request, order.Request); // the order crossed the grain call intact
    }

    [Fact]
    public async Task AGrainKeyedByANameNoSiloHasIsNotActivatedAnywhere()
    {
        var e = await Assert.ThrowsAnyAsync<Exception>(() => cluster.Client.GetGrain<ICoordinatorGrain>("nobody").GetStatus().WaitAsync(TimeSpan.FromSeconds(20)));
        Assert.Contains("no active silo named 'nobody'", e.Message);
        await cluster.Client.GetGrain<IWorkerGrain>("nobody").ComputeGradients(new ComputeRequest(Run.RunId, 1, 0, Run.ConfigHash, 0, 1));
        using var none = new CancellationTokenSource(TimeSpan.FromMilliseconds(500));
        foreach (var silo in new[] { "Silo_0", "Silo_1" })
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Service<WorkerSilo.WorkerSilo>(silo).Orders.ClaimAsync(new ComputeRequest(Run.RunId, 1, 0, Run.ConfigHash, 0, 1), none.Token));
    }

    [Fact]
    public async Task ASiloThatDiesLosesItsWorkerAndSparesTheOthers()
    {
        var membership = new RunMembership(Run, _ => { });
        var onSecondary = new FakeWorker("w-secondary", 0, Silo("Silo_1").SiloAddress.ToParsableString());
        var onPrimary = new FakeWorker("w-primary", 1, Silo("Silo_0").SiloAddress.ToParsableString());
        membership.Admit(onSecondary);
        membership.Admit(onPrimary);
        using var stop = new CancellationTokenSource();
        var watch = LostSiloWatch.RunAsync(Service<IClusterMembershipService>("Silo_0"), membership, _ => { }, stop.Token);

        var clock = System.Diagnostics.Stopwatch.StartNew();
        await cluster.KillSiloAsync(Silo("Silo_1"));
        string reason = await onSecondary.Lost.Task.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Contains("Orleans membership declared its silo", reason);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(15), $"declared after {clock.Elapsed.TotalSeconds:F1} s");
        Assert.False(onPrimary.Lost.Task.IsCompleted);
        stop.Cancel();
        await watch;
    }

    sealed class FakeWorker(string name, int rank, string? silo) : IWorkerProxy
    {
        public string Name => name;
        public int Rank => rank;
        public string? Silo => silo;
        public TaskCompletionSource<string> Lost { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public Task<GradientsReply> ComputeGradientsAsync(ComputeRequest request, NativeBuffer? weights, ReadOnlyMemory<byte> windows, NativeBuffer? gradients, CancellationToken cancel) =>
            throw new NotSupportedException();
        public Task ShutdownAsync(string reason) => Task.CompletedTask;
        public void Lose(string reason) => Lost.TrySetResult(reason);
    }
}
