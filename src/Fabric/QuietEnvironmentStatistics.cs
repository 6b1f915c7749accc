using Orleans.Statistics;

namespace DistGpt.Fabric;

/// <summary>Orleans' environment statistics feed load shedding (off by default, and here) and memory-pressure activation
/// collection (a silo here holds one or two grains). The built-in provider keeps a runtime EventListener sampling every
/// counter each second in every process, work for cores the workers' kernels need (too small to show in a step's time on
/// this 2-core machine); this one reports nothing (zero usage, unknown memory), which turns both features off.</summary>
sealed class QuietEnvironmentStatistics : IEnvironmentStatisticsProvider
{
    public EnvironmentStatistics GetEnvironmentStatistics() => default;
}
