using System.Diagnostics;

namespace DistGpt.Model.Engine;

/// <summary>Opt-in per-op-type timing (DISTGPT_PROFILE=1): Graph times every op's forward and backward with a
/// Stopwatch (after each graph's first SkipPasses passes) and the table of totals is printed to stderr when the process exits. Off by default (no cost).</summary>
public static class OpProfiler
{
    /// <summary>Forward/backward passes of each graph left out of the table (JIT and first-touch warm-up).</summary>
    public const int SkipPasses = 3;

    public static readonly bool Enabled = Environment.GetEnvironmentVariable("DISTGPT_PROFILE") is "1" or "true";

    static readonly Dictionary<string, (long Ticks, long Calls)> totals = new();
    static readonly object gate = new();

    static OpProfiler()
    {
        if (Enabled) AppDomain.CurrentDomain.ProcessExit += (_, _) => Console.Error.Write(Report());
    }

    public static long Now() => Stopwatch.GetTimestamp();

    public static void Record(string section, long start)
    {
        long ticks = Stopwatch.GetTimestamp() - start;
        lock (gate)
        {
            totals.TryGetValue(section, out var t);
            totals[section] = (t.Ticks + ticks, t.Calls + 1);
        }
    }

    public static void Reset()
    {
        lock (gate) totals.Clear();
    }

    public static string Report()
    {
        lock (gate)
        {
            double all = totals.Values.Sum(t => (double)t.Ticks);
            var sb = new System.Text.StringBuilder();
            sb.AppendLine($"{"section",-32} {"calls",8} {"total ms",10} {"us/call",9} {"share",6}");
            foreach (var (name, (ticks, calls)) in totals.OrderByDescending(kv => kv.Value.Ticks))
            {
                double ms = ticks * 1000.0 / Stopwatch.Frequency;
                sb.AppendLine($"{name,-32} {calls,8} {ms,10:F1} {ms * 1000 / calls,9:F1} {ticks / all,6:P1}");
            }
            return sb.ToString();
        }
    }
}
