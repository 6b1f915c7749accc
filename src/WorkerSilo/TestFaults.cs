namespace DistGpt.WorkerSilo;

/// <summary>Fault injection for the fault-tolerance tests and the chaos benchmark, read from DISTGPT_TEST_FAULT as
/// `kind:step` (e.g. `nan:5`). Kinds: nan (NaN in the gradients), short (gradient payload 4 bytes short),
/// stall-compute / stall-upload (block forever before computing / after half the upload, heartbeats continuing, so a
/// test can kill the process at exactly that moment), hang (block forever and stop heartbeating). Never set in production.</summary>
public sealed record TestFaults(string Kind, long Step)
{
    public const string EnvVar = "DISTGPT_TEST_FAULT";

    public static TestFaults? FromEnvironment()
    {
        string? spec = Environment.GetEnvironmentVariable(EnvVar);
        if (string.IsNullOrEmpty(spec)) return null;
        var parts = spec.Split(':');
        if (parts.Length != 2 || !long.TryParse(parts[1], out long step) || parts[0] is not ("nan" or "short" or "stall-compute" or "stall-upload" or "hang"))
            throw new Model.ConfigException($"{EnvVar} '{spec}' must be KIND:STEP with KIND nan, short, stall-compute, stall-upload or hang");
        return new TestFaults(parts[0], step);
    }

    public bool At(string kind, long step) => Kind == kind && Step == step;
}
