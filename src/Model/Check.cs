namespace DistGpt.Model;

/// <summary>Range checks that also refuse NaN and infinities (a NaN fails every comparison, so "x &lt; 0" lets it through).</summary>
public static class Check
{
    public static void InRange(long value, long min, long max, string name)
    {
        if (value < min || value > max) throw new ConfigException($"{name} must be between {min} and {max} (got {value})");
    }

    public static void InRange(double value, double min, double max, string name, bool maxExclusive = false)
    {
        bool ok = double.IsFinite(value) && value >= min && (maxExclusive ? value < max : value <= max);
        if (!ok) throw new ConfigException($"{name} must be {(double.IsPositiveInfinity(max) ? $"a finite number >= {min}" : $"in [{min}, {max}{(maxExclusive ? ")" : "]")}")} (got {value})");
    }

    public static void Positive(double value, string name)
    {
        if (!(value > 0 && double.IsFinite(value))) throw new ConfigException($"{name} must be a positive finite number (got {value})");
    }
}
