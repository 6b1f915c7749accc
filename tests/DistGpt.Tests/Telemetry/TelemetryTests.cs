using System.Diagnostics;
using DistGpt.Contracts;
using DistGpt.Contracts.Telemetry;
using DistGpt.Model.Training;
using Xunit;
using SpanKind = DistGpt.Tests.Otlp.Trace.Span.Types.SpanKind;
using StatusCode = DistGpt.Tests.Otlp.Trace.Status.Types.StatusCode;

namespace DistGpt.Tests.Telemetry;

/// <summary>OpenTelemetry end to end: real `distgpt dev` processes export to an OTLP receiver running in this test process.</summary>
[Collection(ProcessHeavy.Name)]
public sealed class TelemetryTests
{
    static readonly System.Text.Json.JsonSerializerOptions WireJson = DistGpt.Model.IO.Json.Options;
    const string Model = "--n-layer 2 --n-head 2 --n-embd 32 --block-size 32 --batch-size 8 --eval-iters 1";
    static readonly TimeSpan Timeout = TimeSpan.FromMinutes(3);

    /// <summary>The env that turns export on, pointed at <paramref name="receiver"/>, flushing quickly.</summary>
    public static Dictionary<string, string> OtelEnv(OtlpReceiver receiver, string protocol = "http/protobuf") => new()
    {
        ["DISTGPT_DATA"] = TestData.CorpusPath(),
        ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.Endpoint,
        ["OTEL_EXPORTER_OTLP_PROTOCOL"] = protocol,
        ["OTEL_BSP_SCHEDULE_DELAY"] = "200",
        ["OTEL_BLRP_SCHEDULE_DELAY"] = "200",
        ["OTEL_METRIC_EXPORT_INTERVAL"] = "500",
        // Whatever the machine has set must not change service names or sampling here.
        ["OTEL_SERVICE_NAME"] = "", ["OTEL_RESOURCE_ATTRIBUTES"] = "", ["OTEL_TRACES_SAMPLER"] = "", ["OTEL_SDK_DISABLED"] = "",
        ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "", ["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"] = "", ["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"] = "",
    };

    [Fact]
    public async Task DevRunWithTwoWorkersExportsOneTracePerStepWithEveryProcessesSpansAndTheMetrics()
    {
        await using var receiver = await OtlpReceiver.StartAsync();
        using var tmp = new TempDirectory("otel");
        var r = CliRunner.Run($"dev --workers 2 --worker-threads 1 --threads 1 {Model} --max-iters 3 --eval-interval 3 --out {tmp.Path}",
            OtelEnv(receiver), Timeout);
        Assert.True(r.ExitCode == 0, r.ToString());

        // Every process flushed before exiting; the receiver may still be decoding the last request.
        OtlpReceiver.WaitUntil(() => Roots(receiver).Count == 3 && receiver.Spans.Count(s => s.Name == "compute gradients") == 6, TimeSpan.FromSeconds(15));
        var spans = receiver.Spans;
        var roots = Roots(receiver);
        Assert.True(roots.Count == 3, $"expected 3 'train step' roots, got {roots.Count}:\n{string.Join("\n", spans)}\n{r}");
        Assert.Equal([1L, 2L, 3L], roots.Select(s => s.Long("distgpt.step")).Order());
        Assert.Equal(3, roots.Select(s => s.TraceId).Distinct().Count());

        var metricsLines = DistributedTests.Metrics(tmp.Path);
        string runId = (string)roots[0]["distgpt.run.id"]!;
        Assert.False(string.IsNullOrEmpty(runId));
        foreach (var root in roots)
        {
            long step = root.Long("distgpt.step");
            var trace = spans.Where(s => s.TraceId == root.TraceId).ToList();
            var byId = trace.ToDictionary(s => s.SpanId);
            string Where(ReceivedSpan s) => $"step {step}: {s}\nin trace:\n{string.Join("\n", trace)}";

            // Root attributes: the step's numbers, as metrics.jsonl has them.
            Assert.Equal(runId, root["distgpt.run.id"]);
            Assert.Equal(2L, root.Long("distgpt.world_size"));
            Assert.Equal(8L * 32, root.Long("distgpt.tokens"));
            var line = metricsLines[(int)step - 1];
            Assert.Equal(line.GetProperty("loss").GetDouble(), root.Double("distgpt.loss"), 5);
            Assert.Equal(line.GetProperty("lr").GetDouble(), root.Double("distgpt.learning_rate"), 8);

            // Correct parent links: exactly one root; every other span's parent is in the same trace.
            Assert.Single(trace, s => s.ParentId == "");
            foreach (var s in trace.Where(s => s.ParentId != ""))
                Assert.True(byId.ContainsKey(s.ParentId), "orphan span (parent not in the trace) " + Where(s));
            bool Under(ReceivedSpan s, ReceivedSpan ancestor)
            {
                for (var p = s; p.ParentId != ""; p = byId[p.ParentId])
                    if (p.ParentId == ancestor.SpanId) return true;
                return false;
            }
            ReceivedSpan Child(ReceivedSpan parent, string name) =>
                Assert.Single(trace, s => s.ParentId == parent.SpanId && s.Name == name);

            // Coordinator phases under the root.
            foreach (var phase in new[] { "gather gradients", "clip gradients", "update weights" })
                Assert.Equal("distgpt-coordinator", Child(root, phase).Service);
            if (step == 3)
            {
                Assert.True(Child(root, "evaluate model")["distgpt.eval.val_loss"] is double);
                Child(root, "save checkpoint");
            }
            else Assert.DoesNotContain(trace, s => s.Name is "evaluate model" or "save checkpoint");

            // Both workers' compute spans, recorded by the worker processes, below the coordinator's call for them.
            var computes = trace.Where(s => s.Name == "compute gradients").ToList();
            Assert.Equal(["worker-0", "worker-1"], computes.Select(s => s.Instance).Order());
            Assert.Equal([0L, 1L], computes.Select(s => s.Long("distgpt.worker.rank")).Order());
            foreach (var c in computes)
            {
                Assert.Equal("distgpt-worker", c.Service);
                Assert.Equal(SpanKind.Server, c.Span.Kind);
                Assert.Equal(step, c.Long("distgpt.step"));
                Assert.Equal(c.Instance, c["distgpt.worker.name"]);
                Assert.True(Under(c, root), "worker span not under the step's root " + Where(c));
                var call = byId[c.ParentId];
                Assert.True(call.Name == "request gradients" && call.Service == "distgpt-coordinator" && call.Span.Kind == SpanKind.Client, Where(call));
                Assert.Equal(c.Instance, call["distgpt.worker.name"]);
                Assert.True(call.Long("distgpt.bytes.sent") > 0 && call.Long("distgpt.bytes.received") > 0, Where(call));
                var send = Child(call, "send weights");
                Assert.True(send.Long("distgpt.bytes") > 0, Where(send));
                foreach (var phase in new[] { "receive weights", "run forward", "run backward", "upload gradients" })
                    Assert.Equal("distgpt-worker", Child(c, phase).Service);
                Assert.True(Child(c, "upload gradients").Long("distgpt.bytes") > 0);
            }
        }

        // Membership spans and the joins.
        Assert.Equal(2, spans.Count(s => s.Name == "admit worker" && s.Service == "distgpt-coordinator"));
        Assert.Equal(2, spans.Count(s => s.Name == "join run" && s.Service == "distgpt-worker"));

        // Metrics from the coordinator.
        Assert.True(OtlpReceiver.WaitUntil(() => MissingMetrics(receiver).Count == 0, TimeSpan.FromSeconds(10)),
            "missing metrics: " + string.Join(", ", MissingMetrics(receiver)));
        var workerCompute = receiver.Metrics.Where(m => m.Name == "distgpt.worker.compute.duration").ToList();
        var perWorker = workerCompute.SelectMany(m => m.PointAttributes).Select(a => Otlp.Get(a, "distgpt.worker.name")).Distinct().ToList();
        Assert.Contains("worker-0", perWorker);
        Assert.Contains("worker-1", perWorker);
        var tokens = receiver.Metrics.Last(m => m.Name == "distgpt.tokens");
        Assert.Equal("distgpt-coordinator", tokens.Service);
        Assert.Equal(3L * 8 * 32, tokens.Metric.Sum.DataPoints.Single().AsInt);
        var io = receiver.Metrics.Where(m => m.Name == "distgpt.worker.network.io").SelectMany(m => m.PointAttributes)
            .Select(a => (Otlp.Get(a, "distgpt.worker.name"), Otlp.Get(a, "network.io.direction"))).Distinct().ToList();
        Assert.Equal(4, io.Count);

        // Logs keep their trace and span ids: the step-1 progress line is written inside step 1's span.
        var step1 = roots.Single(s => s.Long("distgpt.step") == 1);
        Assert.Contains(receiver.Logs, l => l.Service == "distgpt-coordinator" && l.TraceId == step1.TraceId && l.Body.StartsWith("step 1:"));
        Assert.Contains(r.StdOutLines, l => l.StartsWith("step 1:") && l.Contains($"trace_id={step1.TraceId}"));
    }

    [Fact]
    public async Task OtlpGrpcExportDeliversTheStepTracesWithWorkerSpans()
    {
        await using var receiver = await OtlpReceiver.StartAsync(grpc: true);
        using var tmp = new TempDirectory("otel-grpc");
        var r = CliRunner.Run($"dev --workers 1 --worker-threads 1 --threads 1 {Model} --max-iters 2 --eval-interval 2 --out {tmp.Path}",
            OtelEnv(receiver, "grpc"), Timeout);
        Assert.True(r.ExitCode == 0, r.ToString());
        OtlpReceiver.WaitUntil(() => Roots(receiver).Count == 2 && receiver.Spans.Count(s => s.Name == "compute gradients") == 2, TimeSpan.FromSeconds(15));
        var roots = Roots(receiver);
        Assert.True(roots.Count == 2, string.Join("\n", receiver.Spans) + "\n" + r);
        foreach (var root in roots)
        {
            var compute = Assert.Single(receiver.Spans, s => s.TraceId == root.TraceId && s.Name == "compute gradients");
            Assert.Equal(("distgpt-worker", "worker-0"), (compute.Service, compute.Instance));
        }
        Assert.True(OtlpReceiver.WaitUntil(() => receiver.Metrics.Any(m => m.Name == "distgpt.step.duration"), TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public async Task RejectedGradientsMarkTheWorkersCallSpanAsAnErrorInThatStepsTrace()
    {
        await using var receiver = await OtlpReceiver.StartAsync();
        using var tmp = new TempDirectory("otel-fault");
        int port = DistributedTests.FreePort();
        Dictionary<string, string> Env(string? fault = null)
        {
            var env = OtelEnv(receiver);
            env["DISTGPT_CLUSTER_TOKEN"] = "otel-" + port;
            if (fault != null) env["DISTGPT_TEST_FAULT"] = fault;
            return env;
        }
        using var coordinator = CliRunner.Start(CliRunner.Split(
            $"coordinator --listen http://127.0.0.1:{port} --min-workers 2 --tolerate-failures true {Model} --threads 1 --max-iters 3 --eval-interval 3 --out {tmp.Path}"), Env());
        using var alpha = CliRunner.Start(CliRunner.Split($"worker --coordinator http://127.0.0.1:{port} --name alpha --threads 1"), Env());
        using var beta = CliRunner.Start(CliRunner.Split($"worker --coordinator http://127.0.0.1:{port} --name beta --threads 1"), Env("nan:2"));
        var r = coordinator.WaitForExit(Timeout);
        Assert.True(r.ExitCode == 0, r.ToString());
        alpha.WaitForExit(TimeSpan.FromSeconds(30));
        beta.WaitForExit(TimeSpan.FromSeconds(30));

        ReceivedSpan? Rejected() => receiver.Spans.FirstOrDefault(s => s.Name == "request gradients" && s.Long("distgpt.step") == 2
            && Equals(s["distgpt.worker.name"], "beta") && s.Span.Status?.Code == StatusCode.Error);
        Assert.True(OtlpReceiver.WaitUntil(() => Rejected() != null && Roots(receiver).Count == 3, TimeSpan.FromSeconds(15)),
            string.Join("\n", receiver.Spans) + "\n" + r);
        var rejected = Rejected()!;
        Assert.Contains("NaN", rejected.Span.Status.Message);
        var exception = Assert.Single(rejected.Span.Events, e => e.Name == "exception");
        Assert.Contains("InvalidGradientsException", Otlp.Get(exception.Attributes, "exception.type") as string);
        // The same step's trace goes on: the rejected share is recomputed by alpha, under the same root.
        var root = Roots(receiver).Single(s => s.Long("distgpt.step") == 2);
        Assert.Equal(root.TraceId, rejected.TraceId);
        var alphaCalls = receiver.Spans.Count(s => s.TraceId == root.TraceId && s.Name == "compute gradients" && s.Instance == "alpha");
        Assert.Equal(2, alphaCalls);
    }

    [Fact]
    public void AnUnreachableCollectorNeitherFailsNorStallsTraining()
    {
        using var tmp = new TempDirectory("otel-dead");
        var env = new Dictionary<string, string>
        {
            ["DISTGPT_DATA"] = TestData.CorpusPath(),
            ["OTEL_EXPORTER_OTLP_ENDPOINT"] = $"http://127.0.0.1:{DistributedTests.FreePort()}",
            ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf",
        };
        var r = CliRunner.Run($"train {Model} --threads 1 --max-iters 3 --eval-interval 3 --out {tmp.Path}", env, Timeout);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.True(r.Elapsed < TimeSpan.FromSeconds(60), r.ToString());
        Assert.Equal(3, DistributedTests.Metrics(tmp.Path).Count);
    }

    [Fact]
    public void TraceContextRoundTripsThroughTheComputeRequestHeader()
    {
        using var listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name == TrainingTelemetry.Name,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
        };
        ActivitySource.AddActivityListener(listener);
        using var call = TrainingTelemetry.Source.StartActivity("request gradients", ActivityKind.Client)!;
        call.TraceStateString = "distgpt=1";
        var request = new ComputeRequest("run", 7, 6, "hash", 0, 4, TraceContext.TraceParent(call), TraceContext.TraceState(call));
        // Through the wire's JSON header and back.
        var json = System.Text.Json.JsonSerializer.Serialize(request, WireJson);
        Assert.Contains("\"trace_parent\":\"00-", json);
        var received = System.Text.Json.JsonSerializer.Deserialize<ComputeRequest>(json, WireJson)!;
        Activity.Current = null;
        using var worker = WorkerTracing.StartCompute(received, "w", 3)!;
        Assert.Equal(call.TraceId, worker.TraceId);
        Assert.Equal(call.SpanId, worker.ParentSpanId);
        Assert.True(worker.HasRemoteParent);
        Assert.Equal("distgpt=1", worker.TraceStateString);
        Assert.Equal(7L, worker.GetTagItem("distgpt.step"));

        // An old peer's header (no trace fields) still parses, and gives a root span.
        var old = System.Text.Json.JsonSerializer.Deserialize<ComputeRequest>("""{"run_id":"run","step":1,"weights_version":0,"config_hash":"h","first_sequence":0,"sequences":2}""", WireJson)!;
        Assert.Null(old.TraceParent);
        Activity.Current = null;
        using var root = WorkerTracing.StartCompute(old, "w", 0)!;
        Assert.Equal(default, root.ParentSpanId);
    }

    static List<ReceivedSpan> Roots(OtlpReceiver receiver) =>
        receiver.Spans.Where(s => s.Name == "train step" && s.Service == "distgpt-coordinator" && s.ParentId == "").ToList();

    static readonly string[] ExpectedMetrics =
    [
        "distgpt.train.loss", "distgpt.val.loss", "distgpt.tokens", "distgpt.step.duration", "distgpt.learning_rate",
        "distgpt.worker.compute.duration", "distgpt.worker.communication.duration", "distgpt.worker.network.io",
        "distgpt.workers.active", "distgpt.straggler.lag",
    ];

    static List<string> MissingMetrics(OtlpReceiver receiver)
    {
        var names = receiver.Metrics.Select(m => m.Name).ToHashSet();
        return ExpectedMetrics.Where(n => !names.Contains(n)).ToList();
    }
}
