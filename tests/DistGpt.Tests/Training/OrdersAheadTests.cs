using DistGpt.Contracts;
using DistGpt.Coordinator.Grains;
using DistGpt.Coordinator.Training;
using DistGpt.Model;
using DistGpt.Model.Engine;
using DistGpt.Model.Training;
using Xunit;

namespace DistGpt.Tests.Training;

/// <summary>The next step's orders go out at the end of a step: they must be the orders that step's first round then
/// hands out, worker by worker and share by share (else every call would send its order again, on the compute's time),
/// and a worker lost in between must not leave a share without an order.</summary>
public sealed class OrdersAheadTests
{
    static readonly GptConfig Config = new(65, 16, 1, 2, 16, 0, false);
    static readonly RunDescription Run = new("run-1", Config, new string('a', 65), 1337, 0, "sha", null, TimeSpan.FromSeconds(10));

    sealed class RecordingWorker(string name, int rank) : IWorkerProxy
    {
        public string Name => name;
        public int Rank => rank;
        public string? Silo => null;
        public List<ComputeRequest> Ahead { get; } = new();
        public List<ComputeRequest> Calls { get; } = new();
        public void OrderAhead(ComputeRequest request) { lock (Ahead) Ahead.Add(request); }
        public Task<GradientsReply> ComputeGradientsAsync(ComputeRequest request, NativeBuffer? weights, ReadOnlyMemory<byte> windows, NativeBuffer? gradients, CancellationToken cancel)
        {
            lock (Calls) Calls.Add(request);
            gradients!.Span.Clear();
            return Task.FromResult(new GradientsReply(request.RunId, request.Step, request.WeightsVersion, request.ConfigHash, 1.0, request.Sequences * Config.BlockSize, 1, 0, 0, 0));
        }
        public Task ShutdownAsync(string reason) => Task.CompletedTask;
        public void Lose(string reason) { }
    }

    static (DistributedGradientSource Source, RunMembership Members, Gpt Model) Source(int shares, int maxIters)
    {
        var members = new RunMembership(Run, _ => { });
        var model = new Gpt(Config);
        var settings = new TrainSettings { BatchSize = 6, MaxIters = maxIters };
        var source = new DistributedGradientSource(members, model, TestData.Corpus, settings, Run, new DistributedOptions { Shares = shares, TolerateFailures = true }, _ => { });
        return (source, members, model);
    }

    static void AssertOrderedAhead(RecordingWorker w, long step)
    {
        var calls = w.Calls.Where(c => c.Step == step).ToList();
        var ahead = w.Ahead.Where(c => c.Step == step).ToList();
        Assert.NotEmpty(calls);
        Assert.Equal(calls.Count, ahead.Count);
        Assert.All(calls, c => Assert.Contains(ahead, a => a.SameShareAs(c)));
    }

    [Theory]
    [InlineData(2, 2)]
    [InlineData(3, 2)] // a worker computes two shares a step
    [InlineData(2, 1)]
    public void TheNextStepsOrdersAreTheOnesItsFirstRoundHandsOut(int shares, int workers)
    {
        var (source, members, model) = Source(shares, maxIters: 3);
        using var _ = source;
        using var __ = model;
        var team = Enumerable.Range(0, workers).Select(r => new RecordingWorker($"w{r}", r)).ToList();
        team.ForEach(members.Admit);
        for (long step = 1; step <= 3; step++) source.Compute(step, CancellationToken.None);
        foreach (var w in team)
        {
            Assert.Empty(w.Ahead.Where(a => a.Step == 1 || a.Step > 3)); // none before the first step, none past the last
            AssertOrderedAhead(w, 2);
            AssertOrderedAhead(w, 3);
        }
        Assert.Equal(shares * 3, team.Sum(w => w.Calls.Count));
    }

    [Fact]
    public void AWorkerLostBetweenStepsLeavesItsAheadOrderUnusedAndItsShareIsStillComputed()
    {
        var (source, members, model) = Source(shares: 2, maxIters: 5);
        using var _ = source;
        using var __ = model;
        var a = new RecordingWorker("a", 0);
        var b = new RecordingWorker("b", 1);
        members.Admit(a);
        members.Admit(b);
        source.Compute(1, CancellationToken.None);
        members.Leave(b, "test");
        source.Compute(2, CancellationToken.None);
        Assert.Equal(2, a.Calls.Count(c => c.Step == 2)); // both shares, one of them without an order sent ahead
        Assert.Single(a.Ahead, o => o.Step == 2);
        Assert.DoesNotContain(b.Calls, c => c.Step == 2);
    }
}
