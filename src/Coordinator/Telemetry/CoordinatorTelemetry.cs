using System.Diagnostics;
using DistGpt.Contracts;
using DistGpt.Contracts.Telemetry;
using DistGpt.Contracts.Wire;
using DistGpt.Coordinator.Grains;
using DistGpt.Model.Training;
using static DistGpt.Model.Training.TrainingTelemetry;

namespace DistGpt.Coordinator.Telemetry;

/// <summary>One coordinator→worker call for one share of a step: the `request gradients` client span (whose W3C context
/// travels on the <see cref="ComputeRequest"/>, so the worker's `compute gradients` span is its child) and the per-worker
/// metrics: compute time, communication time (round trip minus compute) and bytes each way.</summary>
public sealed class WorkerCall : IDisposable
{
    readonly Activity? span;
    readonly IWorkerProxy worker;
    readonly FrameChannel? channel;
    readonly WireTraffic? traffic;
    readonly long started = Stopwatch.GetTimestamp(), sent0, received0, sharedSent0, sharedReceived0;
    bool done;

    WorkerCall(IWorkerProxy worker, Activity? span, WireTraffic? traffic)
    {
        (this.worker, this.span, this.traffic) = (worker, span, traffic);
        channel = (worker as RemoteWorker)?.Channel;
        if (channel != null)
            (sent0, received0, sharedSent0, sharedReceived0) = (channel.BytesSent, channel.BytesReceived, channel.SharedBytesSent, channel.SharedBytesReceived);
    }

    /// <summary>Starts the call's span; <paramref name="traffic"/>, when given, receives the bytes the call moved.</summary>
    public static WorkerCall Start(IWorkerProxy worker, long step, int shareIndex, long first, int sequences, WireTraffic? traffic = null)
    {
        var span = Source.StartActivity("request gradients", ActivityKind.Client);
        span?.SetTag(Attr.Step, step).SetTag(Attr.WorkerName, worker.Name).SetTag(Attr.WorkerRank, worker.Rank)
            .SetTag(Attr.ShareIndex, shareIndex).SetTag(Attr.ShareFirst, first).SetTag(Attr.Sequences, sequences);
        return new WorkerCall(worker, span, traffic);
    }

    /// <summary>This call's W3C traceparent for the request (null when not tracing).</summary>
    public string? TraceParent => span == null ? null : TraceContext.TraceParent(span);
    public string? TraceState => span?.TraceStateString;

    public void Completed(GradientsReply reply)
    {
        double roundTrip = Stopwatch.GetElapsedTime(started).TotalSeconds, compute = reply.ComputeMs / 1000.0;
        var tags = new TagList { { Attr.WorkerName, worker.Name } };
        WorkerCompute.Record(compute, tags);
        WorkerCommunication.Record(Math.Max(0, roundTrip - compute), tags);
        span?.SetTag(Attr.ComputeMs, reply.ComputeMs).SetTag(Attr.Tokens, reply.Tokens)
            .SetTag(Attr.Loss, reply.LossSum / Math.Max(1, reply.Tokens)).SetTag("distgpt.receive_ms", reply.ReceiveMs);
    }

    public void Failed(Exception e) => RecordError(span, e);

    public void Dispose()
    {
        if (done) return;
        done = true;
        if (channel != null)
        {
            long sent = channel.BytesSent - sent0, received = channel.BytesReceived - received0;
            long sharedSent = channel.SharedBytesSent - sharedSent0, sharedReceived = channel.SharedBytesReceived - sharedReceived0;
            WorkerNetworkIo.Add(sent, new TagList { { Attr.WorkerName, worker.Name }, { Attr.Direction, "transmit" } });
            WorkerNetworkIo.Add(received, new TagList { { Attr.WorkerName, worker.Name }, { Attr.Direction, "receive" } });
            span?.SetTag(Attr.BytesSent, sent).SetTag(Attr.BytesReceived, received);
            if (sharedSent + sharedReceived > 0) span?.SetTag(Attr.SharedBytesSent, sharedSent).SetTag(Attr.SharedBytesReceived, sharedReceived);
            traffic?.Add(worker.Name, sent, received, sharedSent, sharedReceived);
        }
        span?.Dispose();
    }
}

/// <summary>Bytes the coordinator sent to and received from its workers over their sockets (frames, heartbeats that
/// crossed during a call included), and payload bytes that went through shared memory instead, summed over a step's
/// calls, in all and per worker.</summary>
public sealed class WireTraffic
{
    /// <summary>One node's bytes in a step: over sockets and through shared memory, each sent and received.</summary>
    public sealed class Tally
    {
        long sent, received, sharedSent, sharedReceived;

        public long Sent => Interlocked.Read(ref sent);
        public long Received => Interlocked.Read(ref received);
        public long SharedSent => Interlocked.Read(ref sharedSent);
        public long SharedReceived => Interlocked.Read(ref sharedReceived);

        public void Add(long sentBytes, long receivedBytes, long sharedSentBytes, long sharedReceivedBytes)
        {
            Interlocked.Add(ref sent, sentBytes);
            Interlocked.Add(ref received, receivedBytes);
            Interlocked.Add(ref sharedSent, sharedSentBytes);
            Interlocked.Add(ref sharedReceived, sharedReceivedBytes);
        }

        /// <summary>As metrics.jsonl writes it: {"socket": {"sent", "received"}, "shm": {...}} (shm only when used).</summary>
        public Dictionary<string, object> ToJson(bool mirrored = false)
        {
            var node = new Dictionary<string, object> { ["socket"] = Pair(Sent, Received, mirrored) };
            if (UsedSharedMemory) node["shm"] = Shared(mirrored);
            return node;
        }

        public bool UsedSharedMemory => SharedSent + SharedReceived > 0;

        /// <summary>{"sent", "received"} over sockets; mirrored: as the other end saw them.</summary>
        public Dictionary<string, long> Socket(bool mirrored = false) => Pair(Sent, Received, mirrored);

        /// <summary>{"sent", "received"} through shared memory; mirrored: as the other end saw them.</summary>
        public Dictionary<string, long> Shared(bool mirrored = false) => Pair(SharedSent, SharedReceived, mirrored);

        static Dictionary<string, long> Pair(long sent, long received, bool mirrored) =>
            new() { ["sent"] = mirrored ? received : sent, ["received"] = mirrored ? sent : received };
    }

    readonly System.Collections.Concurrent.ConcurrentDictionary<string, Tally> perWorker = new();

    /// <summary>The coordinator's bytes: all workers' together.</summary>
    public Tally Total { get; } = new();

    public void Add(string worker, long sentBytes, long receivedBytes, long sharedSentBytes, long sharedReceivedBytes)
    {
        Total.Add(sentBytes, receivedBytes, sharedSentBytes, sharedReceivedBytes);
        perWorker.GetOrAdd(worker, _ => new Tally()).Add(sentBytes, receivedBytes, sharedSentBytes, sharedReceivedBytes);
    }

    readonly System.Collections.Concurrent.ConcurrentDictionary<string, Tally> peerOf = new();

    /// <summary>A worker's bytes on the peer plane (parameter shards), as it reported them.</summary>
    public void AddPeer(string worker, long sentBytes, long receivedBytes) =>
        peerOf.GetOrAdd(worker, _ => new Tally()).Add(sentBytes, receivedBytes, 0, 0);

    /// <summary>Every node's bytes in the step: the coordinator's, and each worker's as the mirror of its traffic with
    /// the coordinator, plus, with parameter shards, its peer-plane bytes ("peer": gradient ranges to the holders, updated
    /// ranges from them, and a holder's own side of both; the previous step's, the last complete one when the worker
    /// reports). The coordinator's shard frames (layouts, norms, updates, gathered ranges) count in the step whose
    /// gradients were being gathered, or the next one. Orleans' own control-plane messages are not counted.</summary>
    public Dictionary<string, object> NodeBytes()
    {
        var nodes = new Dictionary<string, object> { ["coordinator"] = Total.ToJson() };
        foreach (var name in perWorker.Keys.Union(peerOf.Keys).Order(StringComparer.Ordinal))
        {
            var node = perWorker.TryGetValue(name, out var tally) ? tally.ToJson(mirrored: true) : new Tally().ToJson();
            if (peerOf.TryGetValue(name, out var peer)) node["peer"] = peer.Socket();
            nodes[name] = node;
        }
        return nodes;
    }
}

/// <summary>Coordinator spans outside the step loop's own: weights sent to one worker, workers joining and leaving.</summary>
public static class CoordinatorTelemetry
{
    /// <summary>`send weights` over one worker's compute frame; distgpt.bytes is what went on the socket, distgpt.shm.bytes
    /// what went through shared memory.</summary>
    public static IDisposable? StartSendWeights(FrameChannel channel, string worker, int rank)
    {
        var span = Source.StartActivity("send weights", ActivityKind.Producer);
        if (span == null) return null;
        span.SetTag(Attr.WorkerName, worker).SetTag(Attr.WorkerRank, rank);
        return new BytesScope(span, channel);
    }

    sealed class BytesScope(Activity span, FrameChannel channel) : IDisposable
    {
        readonly long start = channel.BytesSent, sharedStart = channel.SharedBytesSent;

        public void Dispose()
        {
            span.SetTag(Attr.Bytes, channel.BytesSent - start);
            if (channel.SharedBytesSent > sharedStart) span.SetTag(Attr.SharedBytes, channel.SharedBytesSent - sharedStart);
            span.Dispose();
        }
    }

    /// <summary>Records membership changes: an `admit worker` / `remove worker` span each (a trace of its own) and the
    /// active-workers gauge.</summary>
    public static void Watch(RunMembership grain)
    {
        grain.Joined += w => Membership("admit worker", w, grain.Count, grain.Run.RunId, null);
        grain.Left += (w, reason) => Membership("remove worker", w, grain.Count, grain.Run.RunId, reason);
    }

    static void Membership(string name, IWorkerProxy worker, int active, string runId, string? reason)
    {
        ActiveWorkers.Record(active);
        if (!Tracing) return;
        var previous = Activity.Current;
        Activity.Current = null;
        using (var span = Source.StartActivity(name, ActivityKind.Internal))
        {
            span?.SetTag(Attr.WorkerName, worker.Name).SetTag(Attr.WorkerRank, worker.Rank).SetTag(Attr.ActiveWorkers, active)
                .SetTag(Attr.RunId, runId).SetTag(Attr.Reason, reason);
        }
        Activity.Current = previous;
    }
}
