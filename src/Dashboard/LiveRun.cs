using DistGpt.Model.Training;

namespace DistGpt.Dashboard;

/// <summary>The page of the run this process trains: the server plus the one run it shows. The training loop sees only
/// <see cref="Record"/>, as its OnStep observer; the record goes to the page as the same line metrics.jsonl gets.</summary>
public sealed class LiveRun : IAsyncDisposable, IDisposable
{
    readonly RunStream stream = new();
    readonly int run;
    DashboardServer? server;

    LiveRun(RunInfo info) => run = stream.AddRun(info);

    public Uri Url => server!.Url;

    public static async Task<LiveRun> StartAsync(DashboardAddress address, RunInfo info)
    {
        var live = new LiveRun(info);
        live.stream.SetState(live.run, "live");
        live.server = await DashboardServer.StartAsync(address, live.stream);
        return live;
    }

    public void Record(StepMetrics metrics) => stream.Add(run, metrics);

    /// <summary>The run has ended (finished, failed or cancelled); the page keeps showing it while the process lives.</summary>
    public void End(string state) => stream.SetState(run, state);

    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

    public async ValueTask DisposeAsync()
    {
        if (server != null) await server.DisposeAsync();
    }
}
