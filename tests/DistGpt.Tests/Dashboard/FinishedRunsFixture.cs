using System.Text.Json;
using Xunit;

namespace DistGpt.Tests.Dashboard;

/// <summary>Two short real `train` runs with different learning rates, made once for the dashboard tests, and a hostile
/// run: a metrics.jsonl written by hand whose worker name and sample are HTML.</summary>
public sealed class FinishedRunsFixture : IDisposable
{
    public const string Model = "--n-layer 2 --n-head 2 --n-embd 32 --block-size 32 --batch-size 8 --eval-iters 1 --threads 1 --max-iters 300 --eval-interval 100";
    public const string HostileName = "<img src=x id=injected>";
    public const string HostileSample = "<script>document.title='pwned'</script><b id=bold>bold</b>";

    readonly TempDirectory tmp = new("dashboard-runs");

    public string A { get; }
    public string B { get; }
    public string Hostile { get; }

    public FinishedRunsFixture()
    {
        A = tmp.Subdirectory("run-a");
        B = tmp.Subdirectory("run-b");
        foreach (var (dir, lr) in new[] { (A, "1e-3"), (B, "3e-3") })
        {
            var r = CliRunner.Run($"train {Model} --learning-rate {lr} --out {dir}", DistributedTests.Env(), TimeSpan.FromMinutes(2));
            Assert.True(r.ExitCode == 0, r.ToString());
        }
        Hostile = tmp.Subdirectory("hostile");
        var perWorker = new Dictionary<string, double> { [HostileName] = 5 };
        object Step(int step, bool eval) => new Dictionary<string, object>
        {
            ["step"] = step, ["loss"] = 4.2 - step / 10.0, ["lr"] = 1e-3, ["step_ms"] = 10, ["tokens_per_s"] = 100, ["grad_norm"] = 1,
            ["workers"] = 1, ["comm_ms"] = 1, ["compute_ms"] = 5, ["worker_compute_ms"] = perWorker, ["worker_comm_ms"] = perWorker,
            [eval ? "sample" : "joined_workers"] = eval ? HostileSample : new[] { HostileName },
        };
        File.WriteAllLines(Path.Combine(Hostile, "metrics.jsonl"), [JsonSerializer.Serialize(Step(1, false)), JsonSerializer.Serialize(Step(2, true))]);
    }

    public void Dispose() => tmp.Dispose();
}
