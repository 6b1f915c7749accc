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
    /// <summary>Distributed runs: the shares the global batch is cut into every step (the starting world size) and the
    /// replicas every worker cuts a share into, kept in the checkpoint so a resumed run cuts the batch as the first one
    /// did and keeps its bits (0: not fixed yet, or a single process).</summary>
    public int Shares { get; init; }
    public int ReplicasPerShare { get; init; }

    [System.Text.Json.Serialization.JsonIgnore]
    public LearningRateSchedule Schedule => new(LearningRate, MinLr, WarmupIters, LrDecayIters, DecayLr);

    public void Validate()
    {
        const int Large = 1 << 30;
        Check.InRange(BatchSize, 1, 1 << 20, "--batch-size");
        Check.InRange(MaxIters, 1, Large, "--max-iters");
        Check.InRange(EvalInterval, 1, Large, "--eval-interval");
        Check.InRange(EvalIters, 1, 1 << 20, "--eval-iters");
        Check.InRange(WarmupIters, 0, Large, "--warmup-iters");
        Check.InRange(LrDecayIters, 0, Large, "--lr-decay-iters");
        if (DecayLr && LrDecayIters <= WarmupIters) throw new ConfigException($"--lr-decay-iters ({LrDecayIters}) must exceed --warmup-iters ({WarmupIters})");
        Check.Positive(LearningRate, "--learning-rate");
        Check.InRange(MinLr, 0, double.PositiveInfinity, "--min-lr");
        Check.InRange(Beta1, 0, 1, "--beta1", maxExclusive: true);
        Check.InRange(Beta2, 0, 1, "--beta2", maxExclusive: true);
        Check.InRange(WeightDecay, 0, double.PositiveInfinity, "--weight-decay");
        Check.InRange(GradClip, 0, double.PositiveInfinity, "--grad-clip");
        Check.InRange(CheckpointInterval, 0, Large, "--checkpoint-interval");
        Check.InRange(Shares, 0, BatchSize, "shares");
        Check.InRange(ReplicasPerShare, 0, 1 << 10, "replicas_per_share");
    }
}
