using DistGpt.Model.Training;
using Microsoft.Extensions.Logging;
using OpenTelemetry;
using OpenTelemetry.Logs;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace DistGpt.Coordinator.Telemetry;

/// <summary>The OpenTelemetry SDK for one distgpt process: a tracer provider (the "DistGpt" ActivitySource), a meter
/// provider (the "DistGpt" Meter) and a logger factory (the [coordinator]/[worker] log lines), each exporting over OTLP.
/// Configured only by the standard variables: OTEL_EXPORTER_OTLP_ENDPOINT (or the per-signal _TRACES_/_METRICS_/_LOGS_
/// endpoints), OTEL_EXPORTER_OTLP_PROTOCOL (grpc, the default, or http/protobuf), OTEL_EXPORTER_OTLP_HEADERS,
/// OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_*, OTEL_METRIC_EXPORT_INTERVAL.
/// With no endpoint set (or OTEL_SDK_DISABLED=true) nothing is created: no listener, so spans and measurements cost a
/// null check. Dispose flushes and shuts down, bounded in time.</summary>
public sealed class TelemetryProviders : IDisposable
{
    public const string CoordinatorService = "distgpt-coordinator", WorkerService = "distgpt-worker";
    const string Endpoint = "OTEL_EXPORTER_OTLP_ENDPOINT";
    static readonly TimeSpan ShutdownBudget = TimeSpan.FromSeconds(5);

    readonly TracerProvider? tracer;
    readonly MeterProvider? meter;
    readonly ILoggerFactory? logs;

    TelemetryProviders(TracerProvider? tracer, MeterProvider? meter, ILoggerFactory? logs) => (this.tracer, this.meter, this.logs) = (tracer, meter, logs);

    static bool Set(string name) => !string.IsNullOrWhiteSpace(Environment.GetEnvironmentVariable(name));

    static bool SignalOn(string signal) => Set(Endpoint) || Set($"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT");

    /// <summary>True when some OTLP endpoint is configured and the SDK is not disabled.</summary>
    public static bool Configured =>
        !string.Equals(Environment.GetEnvironmentVariable("OTEL_SDK_DISABLED"), "true", StringComparison.OrdinalIgnoreCase)
        && (SignalOn("TRACES") || SignalOn("METRICS") || SignalOn("LOGS"));

    /// <summary>Starts exporting for this process, or returns null (telemetry off). <paramref name="serviceName"/> is the
    /// default service.name (OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override it); <paramref name="instanceId"/>
    /// the service.instance.id (a worker's name; null: a random id).</summary>
    public static TelemetryProviders? Start(string serviceName, string? instanceId)
    {
        if (!Configured) return null;
        ResourceBuilder Resource() => ResourceBuilder.CreateEmpty()
            .AddService(serviceName, serviceVersion: typeof(TelemetryProviders).Assembly.GetName().Version?.ToString(), serviceInstanceId: instanceId)
            .AddTelemetrySdk()
            .AddAttributes([new("host.name", Environment.MachineName), new("process.pid", (long)Environment.ProcessId)])
            .AddEnvironmentVariableDetector(); // last: OTEL_RESOURCE_ATTRIBUTES, then OTEL_SERVICE_NAME, win

        var tracer = SignalOn("TRACES")
            ? Sdk.CreateTracerProviderBuilder().SetResourceBuilder(Resource()).AddSource(TrainingTelemetry.Name).AddOtlpExporter().Build()
            : null;
        var meter = SignalOn("METRICS")
            ? Sdk.CreateMeterProviderBuilder().SetResourceBuilder(Resource()).AddMeter(TrainingTelemetry.Name).AddOtlpExporter().Build()
            : null;
        var logs = SignalOn("LOGS")
            ? LoggerFactory.Create(b => b.AddOpenTelemetry(o =>
            {
                o.SetResourceBuilder(Resource());
                o.IncludeFormattedMessage = true;
                o.AddOtlpExporter();
            }))
            : null;
        TraceLog.Attach(logs, tracing: tracer != null);
        return new TelemetryProviders(tracer, meter, logs);
    }

    public void Dispose()
    {
        TraceLog.Attach(null, tracing: false);
        int ms = (int)ShutdownBudget.TotalMilliseconds;
        // Spans first: the step spans end before the process does; metrics get a final collection on shutdown.
        tracer?.Shutdown(ms);
        meter?.Shutdown(ms);
        logs?.Dispose();
        tracer?.Dispose();
        meter?.Dispose();
    }
}
