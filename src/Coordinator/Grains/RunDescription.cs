using DistGpt.Model;

namespace DistGpt.Coordinator.Grains;

/// <summary>What every worker of a run must agree on.</summary>
public sealed record RunDescription(
    string RunId, GptConfig Config, string Vocabulary, ulong Seed, long ParameterCount, string DataSha256,
    string? ClusterToken, TimeSpan HeartbeatTimeout)
{
    public string ConfigHash => Config.Hash();
}
