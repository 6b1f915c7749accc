using System.CommandLine;
using DistGpt.Model;

namespace DistGpt.Coordinator.Cli;

/// <summary>Flags for the coordinator side of a cluster run (coordinator and dev commands).</summary>
public sealed class ClusterOptions
{
    public const string TokenEnvVar = "DISTGPT_CLUSTER_TOKEN";

    public readonly Option<string> ClusterToken = new("--cluster-token") { Description = $"shared secret workers must present (else ${TokenEnvVar})" };
    public readonly Option<double> HeartbeatTimeout = new("--heartbeat-timeout") { Description = "seconds of silence before a worker is declared lost", DefaultValueFactory = _ => 10 };
    public readonly Option<double> JoinTimeout = new("--join-timeout") { Description = "seconds to wait for the first workers", DefaultValueFactory = _ => 600 };

    public void AddTo(Command command)
    {
        command.Options.Add(ClusterToken);
        command.Options.Add(HeartbeatTimeout);
        command.Options.Add(JoinTimeout);
    }

    public string? Token(ParseResult r)
    {
        string? token = r.GetValue(ClusterToken);
        if (string.IsNullOrEmpty(token)) token = Environment.GetEnvironmentVariable(TokenEnvVar);
        return string.IsNullOrEmpty(token) ? null : token;
    }

    public TimeSpan Seconds(ParseResult r, Option<double> option)
    {
        double s = r.GetValue(option);
        if (!(s > 0)) throw new ConfigException($"{option.Name} must be positive (got {s})");
        return TimeSpan.FromSeconds(s);
    }
}
