using DistGpt.Model.Training;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using OpenTelemetry;
using OpenTelemetry.Logs;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace DistGpt.Coordinator.Telemetry;

/// <summary>The OpenTelemetry SDK for one distgpt process, on the generic host (OpenTelemetry.Extensions.Hosting): a tracer
/// provider (the "DistGpt" ActivitySource), a meter provider (the "DistGpt" Meter) and a logger factory (the
/// [coordinator]/[worker] log lines), each exporting over OTLP. Configured only by the standard variables:
/// OTEL_EXPORTER_OTLP_ENDPOINT (or the per-signal _TRACES_/_METRICS_/_LOGS_ endpoints), OTEL_EXPORTER_OTLP_PROTOCOL (grpc,
/// the default, or http/protobuf), OTEL_EXPORTER_OTLP_HEADERS, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
/// OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_*, OTEL_METRIC_EXPORT_INTERVAL. DISTGPT_TRACE_ORLEANS=1 adds the spans of the
/// Orleans grain calls (a step's compute orders, the joins), which carry the step's trace from silo to silo.
/// With no endpoint set (or OTEL_SDK_DISABLED=true) nothing is created: no listener, so spans and measurements cost a
/// null check. Dispose flushes and shuts down, bounded in time.</summary>
public sealed class TelemetryProviders : IDisposable
{
    public const string CoordinatorService = "distgpt-coordinator", WorkerService = "distgpt-worker";
    const string Endpoint = "OTEL_EXPORTER_OTLP_ENDPOINT";
    /// <summary>The ActivitySource of Orleans' grain-call spans (its activity propagation is on in every silo and client).</summary>
    const string OrleansApplicationSource = "Microsoft.Orleans.Application";
    static readonly TimeSpan ShutdownBudget = TimeSpan.FromSeconds(5);

    readonly IHost host;

    TelemetryProviders(IHost host) => this.host = host;

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
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Configuration.AddEnvironmentVariables(); // the SDK reads the OTEL_* settings through the host's configuration
        builder.Logging.ClearProviders();
        var otel = builder.Services.AddOpenTelemetry().ConfigureResource(r => r
            .AddService(serviceName, serviceVersion: typeof(TelemetryProviders).Assembly.GetName().Version?.ToString(), serviceInstanceId: instanceId)
            .AddTelemetrySdk()
            .AddAttributes([new("host.name", Environment.MachineName), new("process.pid", (long)Environment.ProcessId)])
            .AddEnvironmentVariableDetector()); // last: OTEL_RESOURCE_ATTRIBUTES, then OTEL_SERVICE_NAME, win
        bool tracing = SignalOn("TRACES");
        if (tracing)
            otel.WithTracing(t =>
            {
                t.AddSource(TrainingTelemetry.Name).AddOtlpExporter();
                if (Environment.GetEnvironmentVariable("DISTGPT_TRACE_ORLEANS") == "1") t.AddSource(OrleansApplicationSource);
            });
        if (SignalOn("METRICS")) otel.WithMetrics(m => m.AddMeter(TrainingTelemetry.Name).AddOtlpExporter());
        if (SignalOn("LOGS"))
        {
            builder.Logging.AddFilter<OpenTelemetryLoggerProvider>("DistGpt", LogLevel.Information);
            otel.WithLogging(l => l.AddOtlpExporter(), o => o.IncludeFormattedMessage = true);
        }
        var host = builder.Build();
        host.Start(); // builds the providers: from here on the ActivitySource and Meter have listeners
        TraceLog.Attach(SignalOn("LOGS") ? host.Services.GetRequiredService<ILoggerFactory>() : null, tracing);
        return new TelemetryProviders(host);
    }

    public void Dispose()
    {
        TraceLog.Attach(null, tracing: false);
        // Stopping the host disposes the providers, which flush: the step spans end before the process does, and metrics
        // get a final collection.
        using var bounded = new CancellationTokenSource(ShutdownBudget);
        try { host.StopAsync(bounded.Token).GetAwaiter().GetResult(); }
        catch (OperationCanceledException) { }
        host.Dispose();
    }
}
