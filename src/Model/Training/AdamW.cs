using DistGpt.Model.Engine;

namespace DistGpt.Model.Training;

/// <summary>torch.optim.AdamW over the flat parameter buffer: decoupled weight decay on the rank>=2 tensors only
/// (nanoGPT's two param groups), bias-corrected moments, eps added after the square root.</summary>
public sealed unsafe class AdamW : IDisposable
{
    readonly FlatParameters parameters;
    readonly (long Offset, long Length, bool Decay)[] ranges;

    public float Beta1 { get; }
    public float Beta2 { get; }
    public float WeightDecay { get; }
    public float Eps { get; }
    /// <summary>Number of updates applied so far (torch's per-parameter 'step').</summary>
    public long StepCount { get; set; }
    public NativeBuffer ExpAvg { get; }
    public NativeBuffer ExpAvgSq { get; }

    public AdamW(FlatParameters parameters, float beta1, float beta2, float weightDecay, float eps = 1e-8f)
    {
        this.parameters = parameters;
        (Beta1, Beta2, WeightDecay, Eps) = (beta1, beta2, weightDecay, eps);
        ExpAvg = new NativeBuffer(parameters.Count);
        ExpAvgSq = new NativeBuffer(parameters.Count);
        ranges = parameters.Slots.Select(s => (s.Offset, s.Length, s.Decay)).ToArray();
    }

    /// <summary>One update from the gradients currently in the flat gradient buffer.</summary>
    public void Step(float lr)
    {
        StepCount++;
        double bc1 = 1 - Math.Pow(Beta1, StepCount);
        double bc2Sqrt = Math.Sqrt(1 - Math.Pow(Beta2, StepCount));
        float stepSize = (float)(lr / bc1);
        float b1 = Beta1, b2 = Beta2, eps = Eps;
        float* p = parameters.Values.Pointer, g = parameters.Grads.Pointer, m = ExpAvg.Pointer, v = ExpAvgSq.Pointer;
        foreach (var (offset, length, decay) in ranges)
        {
            float shrink = decay ? 1f - lr * WeightDecay : 1f;
            for (long i = offset; i < offset + length; i++)
            {
                float gi = g[i];
                float mi = m[i] = b1 * m[i] + (1 - b1) * gi;
                float vi = v[i] = b2 * v[i] + (1 - b2) * gi * gi;
                float denom = (float)(MathF.Sqrt(vi) / bc2Sqrt) + eps;
                p[i] = p[i] * shrink - stepSize * mi / denom;
            }
        }
    }

    public void Dispose()
    {
        ExpAvg.Dispose();
        ExpAvgSq.Dispose();
    }
}
