namespace DistGpt.Model.Training;

/// <summary>nanoGPT's get_lr: linear warmup, cosine decay to min_lr, then flat at min_lr.</summary>
public sealed record LearningRateSchedule(float LearningRate, float MinLr, int WarmupIters, int LrDecayIters, bool Decay = true)
{
    /// <summary>The rate for nanoGPT iteration <paramref name="it"/> (0-based; DistGpt's step s uses it = s - 1).</summary>
    public float At(long it)
    {
        if (!Decay) return LearningRate;
        if (it < WarmupIters) return LearningRate * (it + 1) / (WarmupIters + 1);
        if (it > LrDecayIters) return MinLr;
        double ratio = (double)(it - WarmupIters) / (LrDecayIters - WarmupIters);
        double coeff = 0.5 * (1.0 + Math.Cos(Math.PI * ratio));
        return (float)(MinLr + coeff * (LearningRate - MinLr));
    }
}
