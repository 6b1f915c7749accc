namespace DistGpt.Model.Training;

/// <summary>The training recipe, with nanoGPT's names and the defaults of its CPU recipe for shakespeare_char.</summary>
public sealed record TrainSettings
{
    public int BatchSize { get; init; } = 12;
    public int MaxIters { get; init; } = 2000;
    public float LearningRate { get; init; } = 1e-3f;
    public float MinLr { get; init; } = 1e-4f;
    public int WarmupIters { get; init; } = 100;
    public int LrDecayIters { get; init; } = 2000;
    public bool DecayLr { get; init; } = true;
    public int EvalInterval { get; init; } = 250;
    public int EvalIters { get; init; } = 20;
    public float WeightDecay { get; init; } = 0.1f;
    public float Beta1 { get; init; } = 0.9f;
    public float Beta2 { get; init; } = 0.99f;
    public float GradClip { get; init; } = 1.0f;
    public ulong Seed { get; init; } = 1337;
    /// <summary>Steps between checkpoints (0: only the final one).</summary>
    public int CheckpointInterval { get; init; } = 250;

    [System.Text.Json.Serialization.JsonIgnore]
    public LearningRateSchedule Schedule => new(LearningRate, MinLr, WarmupIters, LrDecayIters, DecayLr);

    public void Validate()
    {
        void Positive(int v, string flag) { if (v < 1) throw new ConfigException($"{flag} must be positive (got {v})"); }
        Positive(BatchSize, "--batch-size");
        Positive(MaxIters, "--max-iters");
        Positive(EvalInterval, "--eval-interval");
        Positive(EvalIters, "--eval-iters");
        if (WarmupIters < 0) throw new ConfigException($"--warmup-iters must be >= 0 (got {WarmupIters})");
        if (DecayLr && LrDecayIters <= WarmupIters) throw new ConfigException($"--lr-decay-iters ({LrDecayIters}) must exceed --warmup-iters ({WarmupIters})");
        if (!(LearningRate > 0)) throw new ConfigException($"--learning-rate must be positive (got {LearningRate})");
        if (MinLr < 0) throw new ConfigException($"--min-lr must be >= 0 (got {MinLr})");
        if (Beta1 is < 0 or >= 1) throw new ConfigException($"--beta1 must be in [0, 1) (got {Beta1})");
        if (Beta2 is < 0 or >= 1) throw new ConfigException($"--beta2 must be in [0, 1) (got {Beta2})");
        if (WeightDecay < 0) throw new ConfigException($"--weight-decay must be >= 0 (got {WeightDecay})");
        if (GradClip < 0) throw new ConfigException($"--grad-clip must be >= 0 (got {GradClip})");
        if (CheckpointInterval < 0) throw new ConfigException($"--checkpoint-interval must be >= 0 (got {CheckpointInterval})");
    }
}
