using System.Text.Json.Serialization;
using DistGpt.Model;

namespace DistGpt.Contracts;

// Wire messages. Each travels as a frame: a JSON header (these records) and an optional raw payload of
// little-endian float32 tensors (weights down, gradient sums up; with --wire-dtype bf16 the gradient sums travel as
// bfloat16). Every message after the join names the run, the step and the model-config hash, so a frame from another
// run or a stale step is refused, never applied.

public enum MessageKind : byte
{
    Join = 1, JoinAccepted = 2, JoinRefused = 3, Compute = 4, Gradients = 5, Heartbeat = 6, Shutdown = 7, Failed = 8, GradientsBucket = 9,
    ShardLayout = 10, ShardReady = 11, ShardUpdate = 12, ShardNorm = 13, ShardStateRequest = 14, ShardState = 15,
    PeerChallenge = 16, PeerHello = 17, ShardGradients = 18, ShardWeights = 19, ShardSum = 20,
}

/// <summary>Worker → coordinator grain: the request to join the run.
/// SharedMemory: the worker can map the coordinator's /dev/shm regions (it was started next to it, as dev mode does).
/// Silo: the worker's Orleans silo address, so that Orleans membership declaring it dead ends the worker's part in the run.</summary>
public sealed record JoinRequest(
    string WorkerName, string BuildVersion, int ProtocolVersion, int Threads,
    string? DataSha256, string? ExpectedConfigHash, string? ClusterToken, bool SharedMemory = false, string? Silo = null);

/// <summary>Worker → coordinator, first frame on a data-plane connection: the ticket the coordinator grain gave this worker
/// when it admitted it (single use, short-lived), and whether it can map the coordinator's /dev/shm regions.
/// PeerEndpoint: where this worker's peer plane listens (host:port), in a run with parameter shards.</summary>
public sealed record DataPlaneHello(string WorkerName, string Ticket, bool SharedMemory, string? PeerEndpoint = null);

/// <summary>Coordinator → worker: everything needed to build the same model and sample the same batches, the
/// element type the worker sends its gradient sums in (the weights always come as float32), and the size of the
/// buckets a worker streams its sum in during the backward over a socket (0: the whole sum after the backward).
/// ReplicasPerShare: the graphs every worker cuts a share into, whatever its --threads, so a share's gradient sum has the
/// same bits whoever computes it (0: the worker's own thread count). The coordinator grain's answer carries the
/// data-plane Ticket; the data plane's answer to the hello adds the SharedMemory regions. PeerSecret: set when the run
/// has parameter shards (see ShardMessages): the key workers prove to each other on the peer plane.</summary>
public sealed record JoinAccepted(
    string RunId, int Rank, GptConfig Config, string ConfigHash, string Vocabulary, ulong Seed,
    long ParameterCount, bool SendsWindows, double HeartbeatSeconds, WireDType GradientDType = WireDType.Fp32,
    SharedMemoryPaths? SharedMemory = null, long GradientBucketBytes = 0, int ReplicasPerShare = 0, string? Ticket = null, string? PeerSecret = null);

/// <summary>The two regions a same-host connection moves its payloads through (see Wire.SharedMemoryRegion).
/// <paramref name="SharedDown"/>: Down is the coordinator's own parameter memory, mapped by every local worker and
/// already unlinked (the worker must not unlink it, and only reads it); otherwise both are this connection's, and the
/// worker unlinks them once mapped.</summary>
public sealed record SharedMemoryPaths(string Down, long DownBytes, string Up, long UpBytes, bool SharedDown = false);

public sealed record JoinRefused(string Reason);

/// <summary>Coordinator → worker grain (the order) and on the data plane (the frame whose payload the order names): compute the gradient sum of sequences [FirstSequence, FirstSequence + Sequences) of
/// Step's global batch at the weights in the payload (version = updates applied so far). When SendsWindows, the payload
/// carries the token windows (Sequences × (block+1) int32) after the weights, for a worker without its own corpus.
/// TraceParent/TraceState: the W3C trace context of the coordinator's span for this call (null when not tracing).</summary>
public sealed record ComputeRequest(string RunId, long Step, long WeightsVersion, string ConfigHash, long FirstSequence, int Sequences,
    string? TraceParent = null, string? TraceState = null)
{
    /// <summary>Orders the same computation (whatever trace it is part of).</summary>
    public bool SameShareAs(ComputeRequest other) =>
        RunId == other.RunId && Step == other.Step && WeightsVersion == other.WeightsVersion && FirstSequence == other.FirstSequence && Sequences == other.Sequences;
}

/// <summary>Worker → coordinator: the gradient sum (payload) with the loss behind it and the worker's own timings. When
/// the sum went ahead in <see cref="GradientsBucket"/> frames, this frame ends the step's reply and has no payload; with
/// parameter shards the sum went to the holders, and PeerSent/PeerReceived are the worker's peer-plane bytes since its
/// previous reply. WeightsWaitMs: the part of ComputeMs the forward spent blocked on weights still arriving.</summary>
public sealed record GradientsReply(
    string RunId, long Step, long WeightsVersion, string ConfigHash, double LossSum, long Tokens,
    double ComputeMs, double ForwardMs, double BackwardMs, double ReceiveMs, long PeerSent = 0, long PeerReceived = 0,
    double WeightsWaitMs = 0);

/// <summary>Worker → coordinator, during the backward (as PyTorch DDP's buckets): values [Offset, Offset + Count) of the
/// step's gradient sum (payload), final while the rest is still being computed. A step's buckets run from the end of the
/// buffer to its start, each ending where the previous began; a payload-less <see cref="GradientsReply"/> follows.</summary>
public sealed record GradientsBucket(string RunId, long Step, long WeightsVersion, string ConfigHash, long Offset, long Count);

public sealed record Heartbeat(string RunId, long Step);

/// <summary>Coordinator → worker: the run is over; the worker exits with code 0.</summary>
public sealed record Shutdown(string RunId, string Reason);

/// <summary>Either side: an unrecoverable problem, with a message for the other side's log.</summary>
public sealed record Failed(string Reason);

/// <summary>The element type of gradient payloads on the wire (weights always travel as float32).</summary>
[JsonConverter(typeof(JsonStringEnumConverter<WireDType>))]
public enum WireDType
{
    [JsonStringEnumMemberName("fp32")] Fp32,
    [JsonStringEnumMemberName("bf16")] Bf16,
}

public static class WireDTypes
{
    /// <summary>Bytes per element on the wire.</summary>
    public static int Size(this WireDType dtype) => dtype == WireDType.Bf16 ? sizeof(ushort) : sizeof(float);

    public static string Name(this WireDType dtype) => dtype == WireDType.Bf16 ? "bf16" : "fp32";

    /// <summary>Parses a --wire-dtype value (fp32 | bf16); null when it is neither.</summary>
    public static WireDType? Parse(string? value) => value?.ToLowerInvariant() switch
    {
        "fp32" or "float32" => WireDType.Fp32,
        "bf16" or "bfloat16" => WireDType.Bf16,
        _ => null,
    };
}
