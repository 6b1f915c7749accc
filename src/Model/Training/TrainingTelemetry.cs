using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace DistGpt.Model.Training;

/// <summary>DistGpt's traces and metrics, with System.Diagnostics only: one <see cref="ActivitySource"/> and one
/// <see cref="Meter"/>, both named "DistGpt". Nothing is recorded unless a listener subscribes (the OpenTelemetry SDK,
/// set up by the CLI when an OTLP endpoint is configured), so with telemetry off every call here is a null check.
/// Span names are low-cardinality "{verb} {object}"; details go in attributes named distgpt.*.</summary>
public static class TrainingTelemetry
{
    public const string Name = "DistGpt";
    static readonly string? Version = typeof(TrainingTelemetry).Assembly.GetName().Version?.ToString();

    public static readonly ActivitySource Source = new(Name, Version);
    public static readonly Meter Meter = new(Name, Version);

    /// <summary>Attribute names (spans and metrics).</summary>
    public static class Attr
    {
        public const string RunId = "distgpt.run.id", Step = "distgpt.step", Loss = "distgpt.loss", LearningRate = "distgpt.learning_rate",
            Tokens = "distgpt.tokens", WorldSize = "distgpt.world_size", GradNorm = "distgpt.grad_norm", GradClip = "distgpt.grad_clip",
            StepMs = "distgpt.step_ms", TrainLoss = "distgpt.eval.train_loss", ValLoss = "distgpt.eval.val_loss", ValLossFull = "distgpt.eval.val_loss_full", EvalIters = "distgpt.eval.iters",
            CheckpointDir = "distgpt.checkpoint.dir", WorkerName = "distgpt.worker.name", WorkerRank = "distgpt.worker.rank",
            Bytes = "distgpt.bytes", BytesSent = "distgpt.bytes.sent", BytesReceived = "distgpt.bytes.received",
            SharedBytes = "distgpt.shm.bytes", SharedBytesSent = "distgpt.shm.bytes.sent", SharedBytesReceived = "distgpt.shm.bytes.received",
            ShareIndex = "distgpt.share.index", ShareFirst = "distgpt.share.first", Sequences = "distgpt.sequences",
            ComputeMs = "distgpt.compute_ms", ForwardMs = "distgpt.forward_ms", BackwardMs = "distgpt.backward_ms",
            Reason = "distgpt.reason", ActiveWorkers = "distgpt.workers.active", Direction = "network.io.direction";
    }

    // Metrics. Durations in seconds (OpenTelemetry convention) with buckets from 1 ms to 60 s, bytes in By.
    static readonly InstrumentAdvice<double> Seconds = new()
    {
        HistogramBucketBoundaries = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30, 60],
    };
    public static readonly Gauge<double> TrainLoss = Meter.CreateGauge<double>("distgpt.train.loss", description: "mean loss of the step's global batch");
    public static readonly Gauge<double> ValLoss = Meter.CreateGauge<double>("distgpt.val.loss", description: "validation loss at the last evaluation");
    public static readonly Gauge<double> EvalTrainLoss = Meter.CreateGauge<double>("distgpt.eval.train.loss", description: "train-split loss at the last evaluation");
    public static readonly Gauge<double> LearningRate = Meter.CreateGauge<double>("distgpt.learning_rate", description: "learning rate of the step");
    public static readonly Gauge<double> GradNorm = Meter.CreateGauge<double>("distgpt.grad_norm", description: "global gradient norm before clipping");
    public static readonly Counter<long> TokensProcessed = Meter.CreateCounter<long>("distgpt.tokens", "{token}", "training tokens processed");
    public static readonly Histogram<double> StepDuration = Meter.CreateHistogram<double>("distgpt.step.duration", "s", "wall time of a training step (gradients, averaging, clipping, AdamW)", tags: null, advice: Seconds);
    public static readonly Gauge<int> ActiveWorkers = Meter.CreateGauge<int>("distgpt.workers.active", "{worker}", "workers in the run");
    public static readonly Histogram<double> StragglerLag = Meter.CreateHistogram<double>("distgpt.straggler.lag", "s", "slowest worker's compute time minus the fastest's, per step", tags: null, advice: Seconds);
    public static readonly Histogram<double> WorkerCompute = Meter.CreateHistogram<double>("distgpt.worker.compute.duration", "s", "a worker's forward + backward time for one share", tags: null, advice: Seconds);
    public static readonly Histogram<double> WorkerCommunication = Meter.CreateHistogram<double>("distgpt.worker.communication.duration", "s", "a worker call's round trip minus the worker's compute time", tags: null, advice: Seconds);
    public static readonly Counter<long> WorkerNetworkIo = Meter.CreateCounter<long>("distgpt.worker.network.io", "By", "bytes the coordinator sent to (transmit) and received from (receive) each worker");

    /// <summary>True when something listens to the spans (telemetry on).</summary>
    public static bool Tracing => Source.HasListeners();

    /// <summary>The root span of one training step: a new trace whatever the ambient activity is.</summary>
    public static Activity? StartStep(long step, string runId)
    {
        if (!Source.HasListeners()) return null;
        Activity.Current = null; // one trace per step: never a child of whatever ran before
        var span = Source.StartActivity("train step", ActivityKind.Internal);
        span?.SetTag(Attr.Step, step).SetTag(Attr.RunId, runId);
        return span;
    }

    public static Activity? Start(string name, long step)
    {
        var span = Source.StartActivity(name);
        span?.SetTag(Attr.Step, step);
        return span;
    }

    /// <summary>Marks a span failed: status Error with the message, and an "exception" event.</summary>
    public static void RecordError(Activity? span, Exception e)
    {
        if (span == null) return;
        span.SetStatus(ActivityStatusCode.Error, e.Message);
        span.AddException(e);
    }

    /// <summary>Sets the step span's final attributes and records the step's metrics.</summary>
    public static void RecordStep(Activity? span, StepMetrics m, long tokens)
    {
        int workers = m.Workers ?? 1;
        if (span != null)
        {
            span.SetTag(Attr.Loss, (double)m.Loss).SetTag(Attr.LearningRate, (double)m.Lr).SetTag(Attr.Tokens, tokens)
                .SetTag(Attr.WorldSize, workers).SetTag(Attr.GradNorm, m.GradNorm).SetTag(Attr.StepMs, m.StepMs);
            if (m.CommMs is { } comm) span.SetTag("distgpt.comm_ms", comm);
            if (m.ValLoss is { } v) span.SetTag(Attr.ValLoss, (double)v).SetTag(Attr.TrainLoss, (double?)m.TrainLoss);
            if (m.Extra != null)
                foreach (var (key, value) in m.Extra)
                    if (value is double d) span.SetTag("distgpt." + key, d);
        }
        TrainLoss.Record(m.Loss);
        LearningRate.Record(m.Lr);
        GradNorm.Record(m.GradNorm);
        TokensProcessed.Add(tokens);
        StepDuration.Record(m.StepMs / 1000.0);
        if (m.ValLoss is { } val)
        {
            ValLoss.Record(val);
            if (m.TrainLoss is { } t) EvalTrainLoss.Record(t);
        }
        if (m.Workers is { } w) ActiveWorkers.Record(w);
        if (m.Extra?.GetValueOrDefault("straggler_lag_ms") is double lag)
        {
            string? slowest = m.Extra.GetValueOrDefault("worker_compute_ms") is IReadOnlyDictionary<string, double> perWorker && perWorker.Count > 0
                ? perWorker.MaxBy(kv => kv.Value).Key : null;
            StragglerLag.Record(lag / 1000.0, new KeyValuePair<string, object?>("distgpt.worker.slowest", slowest));
        }
    }
}
