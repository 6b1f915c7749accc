namespace DistGpt.Contracts;

// Parameter shards (--shards K, K >= 2): the flat parameter buffer is cut into K ranges, each held by one worker silo, which
// owns that range's master weights and AdamW moments. Workers send range k of every gradient sum they compute to range k's
// holder over the peer plane (worker to worker); each holder adds the shares up in share order, reports its chunks' sums of
// squares to the coordinator (which turns every holder's into the clip factor), updates its range and sends it to every
// worker. The coordinator moves no bulk data, except to lay the shards out and to gather them for evaluation and checkpoints.

/// <summary>Where parameter range <paramref name="Index"/> [Offset, Offset + Length) lives: the worker holding it and its
/// peer-plane endpoint (host:port), and the worker keeping its replica (null with a single worker): the holder sends it
/// the range's gradient sum every step, and it applies the same update to its own copy of the range and moments, so that
/// it can stand in for the holder, with the same bits, should the holder be lost.</summary>
public sealed record ShardPlacement(int Index, long Offset, long Length, string Worker, string Endpoint, string? Replica = null);

/// <summary>AdamW's hyper-parameters and the updates applied so far, for a holder to continue the optimizer's run.</summary>
public sealed record ShardOptimizer(float Beta1, float Beta2, float WeightDecay, float Eps, long StepCount);

/// <summary>Coordinator → worker: the run's shard layout from now on, at weights version <paramref name="WeightsVersion"/>
/// (updates applied). A shard (a worker) holds several ranges, every K-th one, so that as the backward finishes the
/// ranges from the end of the buffer the next one to send goes to another worker's link each time. Payload: the whole
/// float32 weights, then the two AdamW moments (float32) of each range this worker holds (<paramref name="Holding"/>, in
/// that order), then likewise for the ranges it keeps the replica of (<paramref name="Replicating"/>). Shares: the shares
/// a step's batch is cut into (each holder adds that many up). The worker answers <see cref="ShardReady"/> once it is
/// linked to the holder of every range it does not hold.</summary>
public sealed record ShardLayout(string RunId, string ConfigHash, long LayoutId, long WeightsVersion, int Shares,
    IReadOnlyList<ShardPlacement> Ranges, IReadOnlyList<int> Holding, ShardOptimizer Optimizer, IReadOnlyList<int> Replicating);

/// <summary>Worker → coordinator: the layout is in place (weights loaded, peer links to every other holder open); and on the
/// peer plane, holder → peer: the link is admitted (the peer gets the range's updates from now on).</summary>
public sealed record ShardReady(string RunId, long LayoutId);

/// <summary>Coordinator → holder: apply step <paramref name="Step"/>'s update to the range (its gradient sum times
/// <paramref name="GradScale"/>, the mean-and-clip factor) and send the range to every worker; a replica applies it to its
/// copy once the holder's sum is in.</summary>
public sealed record ShardUpdate(string RunId, long Step, float Lr, float GradScale);

/// <summary>Holder → coordinator: every share of step <paramref name="Step"/> is in (layout <paramref name="LayoutId"/>) and added up; the sums of squares of
/// the range's norm chunks, in order. InvalidShares: shares whose values held a NaN or an infinity (dropped: they must
/// be sent again; no squares then). Overflowed: every share was finite but their sum is not (no squares then).</summary>
public sealed record ShardNorm(string RunId, long LayoutId, long Step, int Shard, double[] ChunkSquares, int[]? InvalidShares = null, bool Overflowed = false);

/// <summary>Coordinator → holder or replica: send range <paramref name="Range"/> back, at <paramref name="Version"/> updates
/// (a replica may still be applying the last), with its moments when <paramref name="Moments"/>.</summary>
public sealed record ShardStateRequest(string RunId, long LayoutId, bool Moments, int Range, long Version);

/// <summary>Holder → coordinator: the range's weights at <paramref name="WeightsVersion"/> (payload float32), then its
/// two moments when asked for.</summary>
public sealed record ShardState(string RunId, long LayoutId, int Shard, long WeightsVersion, long StepCount, long Offset, long Length, bool Moments);

/// <summary>Holder → connecting peer, first frame on the peer plane: a fresh nonce the peer must prove the run's peer
/// secret with.</summary>
public sealed record PeerChallenge(string Nonce);

/// <summary>Peer → holder: who it is and its proof, HMAC-SHA256(peer secret, nonce | run | name) in hex; the link is for
/// range <paramref name="Range"/> of the holder's.</summary>
public sealed record PeerHello(string WorkerName, string RunId, long LayoutId, int Range, string Proof);

/// <summary>Peer → holder: values [Offset, Offset + Count) of share <paramref name="Share"/>'s gradient sum at step
/// <paramref name="Step"/> (payload, in the run's gradient dtype).</summary>
public sealed record ShardGradients(string RunId, long Step, int Share, long Offset, long Count);

/// <summary>Holder → peer: the range's weights after <paramref name="Version"/> updates (payload float32).</summary>
public sealed record ShardWeights(string RunId, long Version, long Offset, long Count);

/// <summary>Holder → its replica: the range's gradient sum of step <paramref name="Step"/> (payload float32), before the
/// holder reports its norm, so a replica has every update's input by the time the coordinator gives the go.</summary>
public sealed record ShardSum(string RunId, long Step, long Offset, long Count);

public static class PeerProof
{
    public static string Of(string secret, string nonce, string runId, string worker) =>
        Convert.ToHexString(System.Security.Cryptography.HMACSHA256.HashData(
            System.Text.Encoding.UTF8.GetBytes(secret), System.Text.Encoding.UTF8.GetBytes($"{nonce}|{runId}|{worker}")));

    public static bool Valid(string secret, string nonce, string runId, string worker, string? proof) =>
        proof != null && System.Security.Cryptography.CryptographicOperations.FixedTimeEquals(
            System.Text.Encoding.ASCII.GetBytes(Of(secret, nonce, runId, worker)), System.Text.Encoding.ASCII.GetBytes(proof));
}
