using Orleans.Statistics;

namespace DistGpt.Fabric;

/// <summary>Orleans' environment statistics feed load shedding (off by default, and here) and memory-pressure activation
/// collection (a silo here holds one or two grains). The built-in provider keeps a runtime EventListener sampling every
/// counter each second in every process, measurable on a 2-core node whose cores the workers' kernels need; this one
/// reports nothing (zero usage, unknown memory), which turns both features off.</summary>
sealed class QuietEnvironmentStatistics : IEnvironmentStatisticsProvider
{
    public EnvironmentStatistics GetEnvironmentStatistics() => default;
}
