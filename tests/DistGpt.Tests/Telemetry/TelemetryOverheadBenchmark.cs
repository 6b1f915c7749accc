using System.Text.Json;
using Xunit;
using Xunit.Abstractions;

namespace DistGpt.Tests.Telemetry;

/// <summary>A fact that runs only when DISTGPT_BENCH_TELEMETRY=1 (bench/telemetry-overhead.sh sets it): it takes minutes.</summary>
public sealed class TelemetryBenchFactAttribute : FactAttribute
{
    public TelemetryBenchFactAttribute()
    {
        if (Environment.GetEnvironmentVariable("DISTGPT_BENCH_TELEMETRY") != "1")
            Skip = "benchmark: run bench/telemetry-overhead.sh (DISTGPT_BENCH_TELEMETRY=1)";
    }
}

/// <summary>Telemetry's cost on the `cpu` config (nanoGPT's CPU recipe: 4 layers, 4 heads, n_embd 128, block 64, batch 12)
/// in dev mode with 2 worker processes: alternating runs with export off and on (OTLP/HTTP to the in-test receiver, with
/// the SDK's default batching and metric interval), median step_ms of the steady-state steps from metrics.jsonl.</summary>
[Collection(ProcessHeavy.Name)]
public sealed class TelemetryOverheadBenchmark(ITestOutputHelper output)
{
    static int Setting(string name, int fallback) => int.TryParse(Environment.GetEnvironmentVariable(name), out int v) && v > 0 ? v : fallback;

    [TelemetryBenchFact]
    public async Task TelemetryOverheadOnTheCpuConfig()
    {
        int rounds = Setting("DISTGPT_BENCH_ROUNDS", 3), steps = Setting("DISTGPT_BENCH_STEPS", 250), warmup = Setting("DISTGPT_BENCH_WARMUP", 100);
        Assert.True(steps > warmup, "DISTGPT_BENCH_STEPS must exceed DISTGPT_BENCH_WARMUP");
        await using var receiver = await OtlpReceiver.StartAsync();
        var times = new Dictionary<bool, List<double>> { [false] = new(), [true] = new() };
        var perRound = new List<object>();
        for (int round = 0; round < rounds; round++)
            foreach (bool on in round % 2 == 0 ? new[] { false, true } : new[] { true, false }) // alternate which goes first
            {
                using var tmp = new TempDirectory("otel-bench");
                var env = on
                    ? TelemetryTests.OtelEnv(receiver)
                    : new Dictionary<string, string> { ["DISTGPT_DATA"] = TestData.CorpusPath(), ["OTEL_EXPORTER_OTLP_ENDPOINT"] = "" };
                if (on) // the SDK's defaults, not the fast flushing of the functional tests
                    foreach (var k in new[] { "OTEL_BSP_SCHEDULE_DELAY", "OTEL_BLRP_SCHEDULE_DELAY", "OTEL_METRIC_EXPORT_INTERVAL" }) env[k] = "";
                int before = receiver.Spans.Count;
                var r = CliRunner.Run($"dev --workers 2 --max-iters {steps} --eval-interval {steps} --eval-iters 1 --checkpoint-interval 0 --out {tmp.Path}",
                    env, TimeSpan.FromMinutes(10));
                Assert.True(r.ExitCode == 0, r.ToString());
                var ms = DistributedTests.Metrics(tmp.Path).Skip(warmup).Select(m => m.GetProperty("step_ms").GetDouble()).ToList();
                times[on].AddRange(ms);
                if (on) Assert.True(OtlpReceiver.WaitUntil(() => receiver.Spans.Count > before, TimeSpan.FromSeconds(10)), "export was on but nothing arrived");
                else Assert.DoesNotContain("trace_id=", r.StdOut);
                perRound.Add(new { round, export = on, median_step_ms = Median(ms) });
                output.WriteLine($"round {round} export {(on ? "on " : "off")}: median step {Median(ms):F2} ms over {ms.Count} steps");
            }
        double off = Median(times[false]), onMs = Median(times[true]);
        var result = new
        {
            config = "cpu", workers = 2, steps, warmup, rounds,
            median_step_ms_off = Math.Round(off, 2), median_step_ms_on = Math.Round(onMs, 2),
            overhead_percent = Math.Round((onMs / off - 1) * 100, 2),
            mean_step_ms_off = Math.Round(times[false].Average(), 2), mean_step_ms_on = Math.Round(times[true].Average(), 2),
            spans_received = receiver.Spans.Count, per_round = perRound,
        };
        string json = JsonSerializer.Serialize(result, new JsonSerializerOptions { WriteIndented = true });
        output.WriteLine(json);
        if (Environment.GetEnvironmentVariable("DISTGPT_BENCH_OUT") is { Length: > 0 } path) File.WriteAllText(path, json + "\n");
    }

    static double Median(List<double> values)
    {
        var v = values.Order().ToList();
        return v.Count % 2 == 1 ? v[v.Count / 2] : (v[v.Count / 2 - 1] + v[v.Count / 2]) / 2;
    }
}
