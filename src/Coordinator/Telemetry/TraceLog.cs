using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.Logging;

namespace DistGpt.Coordinator.Telemetry;

/// <summary>distgpt's log lines (`[coordinator] …`, `[worker] …`, progress lines). With telemetry on, a line written
/// inside a span ends with ` trace_id=… span_id=…` and the line is also exported as an OTLP log record carrying the same
/// ids, so a dashboard jumps from a log line to its trace. With telemetry off it is plain Console.WriteLine.</summary>
public static class TraceLog
{
    static volatile ILoggerFactory? factory;
    static volatile bool tracing;
    static readonly ConcurrentDictionary<string, ILogger> loggers = new();
    const int MaxLine = 4000;

    internal static void Attach(ILoggerFactory? logs, bool tracing)
    {
        loggers.Clear();
        factory = logs;
        TraceLog.tracing = tracing;
    }

    /// <summary>Writes `[source] message`.</summary>
    public static void Write(string source, string message) => Emit(source, $"[{source}] {message}", message);

    /// <summary>Writes a line as is (no source prefix); exported under <paramref name="category"/>.</summary>
    public static void Line(string category, string line) => Emit(category, line, line);

    /// <summary>Every line is escaped here too (see <see cref="Contracts.Untrusted"/>): whatever a peer's string slipped into a
    /// message, no log line can hold a newline or a terminal escape.</summary>
    static void Emit(string category, string line, string message)
    {
        (line, message) = (Contracts.Untrusted.Escape(line, MaxLine), Contracts.Untrusted.Escape(message, MaxLine));
        var span = Activity.Current;
        if (tracing && span != null && span.Source.Name == Model.Training.TrainingTelemetry.Name)
            line += $" trace_id={span.TraceId.ToHexString()} span_id={span.SpanId.ToHexString()}";
        Console.WriteLine(line);
        if (factory is { } f)
            loggers.GetOrAdd(category, c => f.CreateLogger("DistGpt." + c)).Log(LogLevel.Information, "{Message}", message);
    }
}
