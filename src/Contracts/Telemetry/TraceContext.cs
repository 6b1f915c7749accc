using System.Diagnostics;
using DistGpt.Model.Training;

namespace DistGpt.Contracts.Telemetry;

/// <summary>W3C trace context across the coordinator↔worker wire: the coordinator puts its current span's
/// `traceparent` (and `tracestate`) on every <see cref="ComputeRequest"/>; the worker starts its span as that span's
/// child, so each worker's gradient computation lands in the coordinator's step trace.</summary>
public static class TraceContext
{
    /// <summary>The W3C traceparent of <paramref name="span"/> (default: the current activity), or null when not tracing.</summary>
    public static string? TraceParent(Activity? span = null)
    {
        span ??= Activity.Current;
        if (span == null || span.IdFormat != ActivityIdFormat.W3C) return null;
        return $"00-{span.TraceId.ToHexString()}-{span.SpanId.ToHexString()}-{((span.ActivityTraceFlags & ActivityTraceFlags.Recorded) != 0 ? "01" : "00")}";
    }

    public static string? TraceState(Activity? span = null) => (span ?? Activity.Current)?.TraceStateString;

    /// <summary>The remote parent carried by a request; default (no parent) when absent or malformed.</summary>
    public static ActivityContext Parent(string? traceParent, string? traceState) =>
        traceParent != null && ActivityContext.TryParse(traceParent, traceState, isRemote: true, out var context) ? context : default;
}

/// <summary>The worker process's spans: `compute gradients` (a child of the coordinator's call, from the request's
/// trace context) with `receive weights`, `run forward`, `run backward` (from <see cref="GradientWorker"/>) and
/// `upload gradients` below it; `join run` when the worker joins.</summary>
public static class WorkerTracing
{
    /// <summary>Runs <paramref name="compute"/> inside the worker's `compute gradients` span, recording a failure on it.</summary>
    public static async Task<T> TraceComputeAsync<T>(ComputeRequest request, string worker, int rank, Func<Task<T>> compute)
    {
        using var span = StartCompute(request, worker, rank);
        try { return await compute(); }
        catch (Exception e)
        {
            TrainingTelemetry.RecordError(span, e);
            throw;
        }
    }

    public static Activity? StartCompute(ComputeRequest request, string worker, int rank)
    {
        if (!TrainingTelemetry.Tracing) return null;
        var parent = TraceContext.Parent(request.TraceParent, request.TraceState);
        if (parent == default) Activity.Current = null; // no coordinator trace: a root of its own, never a leftover's child
        var span = TrainingTelemetry.Source.StartActivity("compute gradients", ActivityKind.Server, parent);
        span?.SetTag(TrainingTelemetry.Attr.Step, request.Step).SetTag(TrainingTelemetry.Attr.RunId, Untrusted.Escape(request.RunId, Untrusted.IdLength))
            .SetTag(TrainingTelemetry.Attr.WorkerName, worker).SetTag(TrainingTelemetry.Attr.WorkerRank, rank)
            .SetTag(TrainingTelemetry.Attr.ShareFirst, request.FirstSequence).SetTag(TrainingTelemetry.Attr.Sequences, request.Sequences);
        return span;
    }

    /// <summary>Span over reading the compute request's payload (weights, and token windows when sent).</summary>
    public static Activity? StartReceive(long bytes)
    {
        var span = TrainingTelemetry.Source.StartActivity("receive weights");
        span?.SetTag(TrainingTelemetry.Attr.Bytes, bytes);
        return span;
    }

    /// <summary>Span over sending the gradient sum back; also puts the share's results on the `compute gradients` span.</summary>
    public static Activity? StartUpload(GradientsReply reply, long bytes)
    {
        var compute = Activity.Current;
        if (compute == null) return null;
        compute.SetTag(TrainingTelemetry.Attr.Loss, reply.LossSum / Math.Max(1, reply.Tokens)).SetTag(TrainingTelemetry.Attr.Tokens, reply.Tokens)
            .SetTag(TrainingTelemetry.Attr.ComputeMs, reply.ComputeMs).SetTag(TrainingTelemetry.Attr.ForwardMs, reply.ForwardMs)
            .SetTag(TrainingTelemetry.Attr.BackwardMs, reply.BackwardMs);
        var span = TrainingTelemetry.Source.StartActivity("upload gradients", ActivityKind.Producer);
        span?.SetTag(TrainingTelemetry.Attr.Bytes, bytes);
        return span;
    }

    /// <summary>Runs the join handshake inside a `join run` span (its own trace), recording a refusal as an error.</summary>
    public static async Task<JoinAccepted> TraceJoinAsync(string worker, Func<Task<JoinAccepted>> join)
    {
        if (!TrainingTelemetry.Tracing) return await join();
        Activity.Current = null;
        using var span = TrainingTelemetry.Source.StartActivity("join run", ActivityKind.Client);
        span?.SetTag(TrainingTelemetry.Attr.WorkerName, worker);
        try
        {
            var accepted = await join();
            span?.SetTag(TrainingTelemetry.Attr.RunId, Untrusted.Escape(accepted.RunId, Untrusted.IdLength)).SetTag(TrainingTelemetry.Attr.WorkerRank, accepted.Rank);
            return accepted;
        }
        catch (Exception e)
        {
            TrainingTelemetry.RecordError(span, e);
            throw;
        }
    }
}
