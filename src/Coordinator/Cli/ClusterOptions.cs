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

    public readonly Option<string> StragglerPolicy = new("--straggler-policy") { Description = "wait: every step waits for every worker; drop: a worker still busy --straggler-timeout s after the first one finished is skipped for the step and its share recomputed", DefaultValueFactory = _ => "wait" };
    public readonly Option<double> StragglerTimeout = new("--straggler-timeout") { Description = "seconds of patience for the drop policy", DefaultValueFactory = _ => 5 };
    public readonly Option<string> WireDType = new("--wire-dtype") { Description = "element type of the gradient sums workers send: fp32, or bf16 (half the bytes; rounded to nearest even, widened back to fp32 before summing). Weights always go as fp32", DefaultValueFactory = _ => "fp32" };
    public readonly Option<double> BucketCapMB = new("--bucket-cap-mb") { Description = "workers on other hosts send their gradient sums in buckets of about this many MiB as the backward pass finishes them (as PyTorch DDP's bucket_cap_mb), overlapping the upload with the computation; 0 sends each sum whole after the backward", DefaultValueFactory = _ => 0.25 };
    public readonly Option<string> Shards = new("--shards") { Description = "parameter shards: K cuts the weights and AdamW state into K ranges held by the worker silos, which exchange gradient ranges and updated weights among themselves (the coordinator moves no bulk data); auto: one per worker; 1: the coordinator holds everything", DefaultValueFactory = _ => "1" };
    public readonly Option<int> MaxRejections = new("--max-rejections") { Description = "invalid gradient payloads (NaN/Inf, wrong size) before a worker is dropped", DefaultValueFactory = _ => 3 };

    public void AddTo(Command command)
    {
        command.Options.Add(StragglerPolicy);
        command.Options.Add(StragglerTimeout);
        command.Options.Add(MaxRejections);
        command.Options.Add(ClusterToken);
        command.Options.Add(HeartbeatTimeout);
        command.Options.Add(JoinTimeout);
        command.Options.Add(WireDType);
        command.Options.Add(BucketCapMB);
        command.Options.Add(Shards);
    }

    /// <summary>--shards: 1 (none), K, or 0 for auto (one per worker).</summary>
    public int ParameterShards(ParseResult r)
    {
        string value = r.GetValue(Shards) ?? "1";
        if (value == "auto") return 0;
        if (!int.TryParse(value, out int k) || k < 1 || k > 1 << 16) throw new ConfigException($"--shards must be auto or a whole number from 1 to 65536 (got '{value}')");
        return k;
    }

    public const long DefaultBucketBytes = 1 << 18;

    public long BucketBytes(ParseResult r)
    {
        double mb = r.GetValue(BucketCapMB);
        Check.InRange(mb, 0, 1 << 20, "--bucket-cap-mb");
        return (long)(mb * (1 << 20));
    }

    public Contracts.WireDType GradientDType(ParseResult r) =>
        Contracts.WireDTypes.Parse(r.GetValue(WireDType)) ?? throw new ConfigException($"--wire-dtype must be fp32 or bf16 (got '{r.GetValue(WireDType)}')");

    public TimeSpan? Straggler(ParseResult r)
    {
        var patience = Seconds(r, StragglerTimeout); // checked under either policy: a bad value is a mistake either way
        return r.GetValue(StragglerPolicy) switch
        {
            "wait" => null,
            "drop" => patience,
            var other => throw new ConfigException($"--straggler-policy must be wait or drop (got '{other}')"),
        };
    }

    public int Rejections(ParseResult r)
    {
        int n = r.GetValue(MaxRejections);
        Check.InRange(n, 1, 1 << 20, "--max-rejections");
        return n;
    }

    public string? Token(ParseResult r)
    {
        string? token = r.GetValue(ClusterToken);
        if (string.IsNullOrEmpty(token)) token = Environment.GetEnvironmentVariable(TokenEnvVar);
        return string.IsNullOrEmpty(token) ? null : token;
    }

    /// <summary>Every duration flag of the cluster commands goes through here: positive, finite, at most a year.</summary>
    public static TimeSpan Seconds(double s, string flag)
    {
        Check.InRange(s, 0, 365 * 86400, flag);
        if (s == 0) throw new ConfigException($"{flag} must be positive (got 0)");
        return TimeSpan.FromSeconds(s);
    }

    public TimeSpan Seconds(ParseResult r, Option<double> option) => Seconds(r.GetValue(option), option.Name);
}
