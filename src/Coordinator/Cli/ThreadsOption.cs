using System.CommandLine;
using DistGpt.Model;

namespace DistGpt.Coordinator.Cli;

/// <summary>The --threads flag of the commands that compute (bench, bench-gemm, worker, sample) and its check.</summary>
public static class ThreadsOption
{
    public static Option<int> Create(int? defaultThreads = null) => new("--threads")
    {
        Description = defaultThreads == null ? "compute threads (default: all cores)" : "compute threads",
        DefaultValueFactory = _ => defaultThreads ?? Environment.ProcessorCount,
    };

    public static int Read(ParseResult r, Option<int> option) => Check(r.GetValue(option));

    public const int Max = 1024;

    public static int Check(int threads) =>
        threads is >= 1 and <= Max ? threads : throw new ConfigException($"--threads must be between 1 and {Max} (got {threads})");
}
