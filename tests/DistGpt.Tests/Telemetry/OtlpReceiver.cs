using System.Buffers.Binary;
using System.IO.Compression;
using System.Net;
using DistGpt.Tests.Otlp.Collector.Logs;
using DistGpt.Tests.Otlp.Collector.Metrics;
using DistGpt.Tests.Otlp.Collector.Trace;
using DistGpt.Tests.Otlp.Common;
using DistGpt.Tests.Otlp.Resource;
using Google.Protobuf;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using OtlpLogRecord = DistGpt.Tests.Otlp.Logs.LogRecord;
using OtlpMetric = DistGpt.Tests.Otlp.Metrics.Metric;
using OtlpSpan = DistGpt.Tests.Otlp.Trace.Span;

namespace DistGpt.Tests.Telemetry;

/// <summary>An OTLP receiver inside the test process (Kestrel on 127.0.0.1, a free port): OTLP/HTTP with protobuf bodies
/// (POST /v1/traces, /v1/metrics, /v1/logs) or, with <c>grpc: true</c>, OTLP/gRPC over cleartext HTTP/2 (the three
/// collector services' Export methods, framed and trailered by hand: no gRPC library). Everything received is decoded
/// with the messages compiled from Protos/ and kept, flattened with its resource's service.name and service.instance.id.</summary>
public sealed class OtlpReceiver : IAsyncDisposable
{
    readonly WebApplication app;
    readonly List<ReceivedSpan> spans = new();
    readonly List<ReceivedMetric> metrics = new();
    readonly List<ReceivedLog> logs = new();
    int requests;

    OtlpReceiver(WebApplication app) => this.app = app;

    /// <summary>The base URL for OTEL_EXPORTER_OTLP_ENDPOINT, e.g. http://127.0.0.1:40123.</summary>
    public string Endpoint { get; private set; } = "";
    public int Requests => Volatile.Read(ref requests);

    public IReadOnlyList<ReceivedSpan> Spans { get { lock (spans) return spans.ToList(); } }
    public IReadOnlyList<ReceivedMetric> Metrics { get { lock (metrics) return metrics.ToList(); } }
    public IReadOnlyList<ReceivedLog> Logs { get { lock (logs) return logs.ToList(); } }

    public static async Task<OtlpReceiver> StartAsync(bool grpc = false)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = 64 << 20;
            k.Listen(IPAddress.Loopback, 0, l => l.Protocols = grpc ? HttpProtocols.Http2 : HttpProtocols.Http1);
        });
        var app = builder.Build();
        var receiver = new OtlpReceiver(app);
        if (grpc)
        {
            app.MapPost("/opentelemetry.proto.collector.trace.v1.TraceService/Export", ctx =>
                receiver.GrpcAsync(ctx, ExportTraceServiceRequest.Parser, receiver.Add, new ExportTraceServiceResponse()));
            app.MapPost("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export", ctx =>
                receiver.GrpcAsync(ctx, ExportMetricsServiceRequest.Parser, receiver.Add, new ExportMetricsServiceResponse()));
            app.MapPost("/opentelemetry.proto.collector.logs.v1.LogsService/Export", ctx =>
                receiver.GrpcAsync(ctx, ExportLogsServiceRequest.Parser, receiver.Add, new ExportLogsServiceResponse()));
        }
        else
        {
            app.MapPost("/v1/traces", ctx => receiver.HttpAsync(ctx, ExportTraceServiceRequest.Parser, receiver.Add, new ExportTraceServiceResponse()));
            app.MapPost("/v1/metrics", ctx => receiver.HttpAsync(ctx, ExportMetricsServiceRequest.Parser, receiver.Add, new ExportMetricsServiceResponse()));
            app.MapPost("/v1/logs", ctx => receiver.HttpAsync(ctx, ExportLogsServiceRequest.Parser, receiver.Add, new ExportLogsServiceResponse()));
        }
        await app.StartAsync();
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        receiver.Endpoint = address.Replace("[::1]", "127.0.0.1").TrimEnd('/');
        return receiver;
    }

    async Task HttpAsync<T>(HttpContext ctx, MessageParser<T> parser, Action<T> sink, IMessage response) where T : IMessage<T>
    {
        byte[] body = await ReadAsync(ctx.Request.Body, ctx.Request.Headers.ContentEncoding.ToString() == "gzip");
        if (!(ctx.Request.ContentType ?? "").StartsWith("application/x-protobuf", StringComparison.Ordinal))
        {
            ctx.Response.StatusCode = StatusCodes.Status415UnsupportedMediaType;
            return;
        }
        sink(parser.ParseFrom(body));
        Interlocked.Increment(ref requests);
        ctx.Response.ContentType = "application/x-protobuf";
        await ctx.Response.Body.WriteAsync(response.ToByteArray());
    }

    async Task GrpcAsync<T>(HttpContext ctx, MessageParser<T> parser, Action<T> sink, IMessage response) where T : IMessage<T>
    {
        // A gRPC message: 1 byte "compressed", 4 bytes big-endian length, the protobuf bytes.
        byte[] body = await ReadAsync(ctx.Request.Body, gzip: false);
        ctx.Response.ContentType = "application/grpc";
        if (body.Length < 5)
        {
            ctx.Response.AppendTrailer("grpc-status", "13");
            return;
        }
        int length = BinaryPrimitives.ReadInt32BigEndian(body.AsSpan(1));
        byte[] message = body.AsSpan(5, length).ToArray();
        if (body[0] == 1) message = await ReadAsync(new MemoryStream(message), gzip: true);
        sink(parser.ParseFrom(message));
        Interlocked.Increment(ref requests);
        byte[] payload = response.ToByteArray();
        var frame = new byte[5 + payload.Length];
        BinaryPrimitives.WriteInt32BigEndian(frame.AsSpan(1), payload.Length);
        payload.CopyTo(frame, 5);
        await ctx.Response.Body.WriteAsync(frame);
        ctx.Response.AppendTrailer("grpc-status", "0");
    }

    static async Task<byte[]> ReadAsync(Stream body, bool gzip)
    {
        var buffer = new MemoryStream();
        if (gzip) await new GZipStream(body, CompressionMode.Decompress).CopyToAsync(buffer);
        else await body.CopyToAsync(buffer);
        return buffer.ToArray();
    }

    void Add(ExportTraceServiceRequest request)
    {
        lock (spans)
            foreach (var rs in request.ResourceSpans)
                foreach (var ss in rs.ScopeSpans)
                    foreach (var s in ss.Spans)
                        spans.Add(new ReceivedSpan(s, Otlp.Str(rs.Resource, "service.name"), Otlp.Str(rs.Resource, "service.instance.id"), ss.Scope?.Name ?? ""));
    }

    void Add(ExportMetricsServiceRequest request)
    {
        lock (metrics)
            foreach (var rm in request.ResourceMetrics)
                foreach (var sm in rm.ScopeMetrics)
                    foreach (var m in sm.Metrics)
                        metrics.Add(new ReceivedMetric(m, Otlp.Str(rm.Resource, "service.name"), Otlp.Str(rm.Resource, "service.instance.id")));
    }

    void Add(ExportLogsServiceRequest request)
    {
        lock (logs)
            foreach (var rl in request.ResourceLogs)
                foreach (var sl in rl.ScopeLogs)
                    foreach (var l in sl.LogRecords)
                        logs.Add(new ReceivedLog(l, Otlp.Str(rl.Resource, "service.name"), Otlp.Str(rl.Resource, "service.instance.id")));
    }

    /// <summary>Polls until <paramref name="condition"/> holds or the timeout passes; returns the last result.</summary>
    public static bool WaitUntil(Func<bool> condition, TimeSpan timeout)
    {
        var until = DateTime.UtcNow + timeout;
        while (DateTime.UtcNow < until)
        {
            if (condition()) return true;
            Thread.Sleep(100);
        }
        return condition();
    }

    public async ValueTask DisposeAsync()
    {
        await app.StopAsync();
        await app.DisposeAsync();
    }
}

/// <summary>OTLP value helpers.</summary>
public static class Otlp
{
    public static string Hex(ByteString id) => id.IsEmpty ? "" : Convert.ToHexString(id.Span).ToLowerInvariant();

    public static object? Value(AnyValue? v) => v?.ValueCase switch
    {
        AnyValue.ValueOneofCase.StringValue => v.StringValue,
        AnyValue.ValueOneofCase.BoolValue => v.BoolValue,
        AnyValue.ValueOneofCase.IntValue => v.IntValue,
        AnyValue.ValueOneofCase.DoubleValue => v.DoubleValue,
        _ => null,
    };

    public static object? Get(IEnumerable<KeyValue> attributes, string key) => Value(attributes.FirstOrDefault(a => a.Key == key)?.Value);

    public static string Str(Resource? resource, string key) => resource == null ? "" : Get(resource.Attributes, key) as string ?? "";
}

public sealed record ReceivedSpan(OtlpSpan Span, string Service, string Instance, string Scope)
{
    public string Name => Span.Name;
    public string TraceId => Otlp.Hex(Span.TraceId);
    public string SpanId => Otlp.Hex(Span.SpanId);
    public string ParentId => Otlp.Hex(Span.ParentSpanId);
    public object? this[string key] => Otlp.Get(Span.Attributes, key);
    public long Long(string key) => Convert.ToInt64(this[key] ?? throw new KeyNotFoundException($"span '{Name}' has no attribute {key}"));
    public double Double(string key) => Convert.ToDouble(this[key] ?? throw new KeyNotFoundException($"span '{Name}' has no attribute {key}"));
    public override string ToString() => $"{Service}/{Instance} '{Name}' {SpanId} parent {ParentId} trace {TraceId}";
}

public sealed record ReceivedMetric(OtlpMetric Metric, string Service, string Instance)
{
    public string Name => Metric.Name;

    /// <summary>The attribute sets of the metric's data points, whatever its type.</summary>
    public IEnumerable<IEnumerable<KeyValue>> PointAttributes => Metric.DataCase switch
    {
        OtlpMetric.DataOneofCase.Gauge => Metric.Gauge.DataPoints.Select(p => (IEnumerable<KeyValue>)p.Attributes),
        OtlpMetric.DataOneofCase.Sum => Metric.Sum.DataPoints.Select(p => (IEnumerable<KeyValue>)p.Attributes),
        OtlpMetric.DataOneofCase.Histogram => Metric.Histogram.DataPoints.Select(p => (IEnumerable<KeyValue>)p.Attributes),
        _ => [],
    };
}

public sealed record ReceivedLog(OtlpLogRecord Record, string Service, string Instance)
{
    public string TraceId => Otlp.Hex(Record.TraceId);
    public string SpanId => Otlp.Hex(Record.SpanId);
    public string Body => Record.Body?.StringValue ?? "";
}
