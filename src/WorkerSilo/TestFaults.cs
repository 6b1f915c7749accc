namespace DistGpt.WorkerSilo;

/// <summary>Fault injection for the fault-tolerance tests and the chaos benchmark, read from DISTGPT_TEST_FAULT as
/// `kind:step`, or several separated by commas at distinct steps (e.g. `nan:3,short:6`); `kind:step@name` is for the
/// worker of that name only (dev mode's workers share one environment). Kinds: nan (NaN in the
/// gradients), short (gradient payload 4 bytes short), stall-compute / stall-upload (block forever before computing /
/// after half the upload, heartbeats continuing, so a test can kill the process at exactly that moment), stall-update (the
/// same, a shard holder on the coordinator's go for that step's update, before it applies it), hang (block
/// forever and stop heartbeating). Never set in production.</summary>
public sealed class TestFaults
{
    public const string EnvVar = "DISTGPT_TEST_FAULT";

    readonly Dictionary<long, string> kindAtStep;

    TestFaults(Dictionary<long, string> kindAtStep) => this.kindAtStep = kindAtStep;

    public static TestFaults? FromEnvironment(string workerName)
    {
        string? spec = Environment.GetEnvironmentVariable(EnvVar);
        if (string.IsNullOrEmpty(spec)) return null;
        var kindAtStep = new Dictionary<long, string>();
        foreach (string fault in spec.Split(','))
        {
            var (kindStep, worker) = fault.Split('@') is [var ks, var w] ? (ks, w) : (fault, null);
            var parts = kindStep.Split(':');
            if (parts.Length != 2 || !long.TryParse(parts[1], out long step) || parts[0] is not ("nan" or "short" or "stall-compute" or "stall-upload" or "stall-update" or "hang")
                || worker == "") // a second '@' leaves it in the step, which then does not parse
                throw new Model.ConfigException($"{EnvVar} '{spec}' must be KIND:STEP[@WORKER][,...] at distinct steps with KIND nan, short, stall-compute, stall-upload, stall-update or hang");
            if ((worker == null || worker == workerName) && !kindAtStep.TryAdd(step, parts[0]))
                throw new Model.ConfigException($"{EnvVar} '{spec}' has two faults at step {step}");
        }
        return new TestFaults(kindAtStep);
    }

    /// <summary>The fault injected at <paramref name="step"/>, if any.</summary>
    public string? KindAt(long step) => kindAtStep.GetValueOrDefault(step);

    public bool At(string kind, long step) => KindAt(step) == kind;
}
