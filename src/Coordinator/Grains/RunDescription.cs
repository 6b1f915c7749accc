using DistGpt.Contracts;
using DistGpt.Model;

namespace DistGpt.Coordinator.Grains;

/// <summary>What every worker of a run must agree on (GradientDType and GradientBucketBytes: how workers send gradient
/// sums; ReplicasPerShare: how they cut a share, so its sum has the same bits on any worker; all told at the join).</summary>
public sealed record RunDescription(
    string RunId, GptConfig Config, string Vocabulary, ulong Seed, long ParameterCount, string DataSha256,
    string? ClusterToken, TimeSpan HeartbeatTimeout, WireDType GradientDType = WireDType.Fp32, long GradientBucketBytes = 0,
    int ReplicasPerShare = 0, string? PeerSecret = null)
{
    public string ConfigHash => Config.Hash();
}
