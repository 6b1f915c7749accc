using System.Runtime.Intrinsics;
using DistGpt.Model.Engine;

namespace DistGpt.Model.Training;

/// <summary>torch.optim.AdamW over the flat parameter buffer: decoupled weight decay on the rank>=2 tensors only
/// (nanoGPT's two param groups), bias-corrected moments, eps added after the square root. Given a parameter shard's range,
/// it keeps the moments of that range only and updates only its values, with the bits the whole update gives there.</summary>
public sealed unsafe class AdamW : IDisposable
{
    readonly FlatParameters parameters;
    readonly (long Offset, long Length, bool Decay)[] chunks; // parameter tensors cut into pieces of at most 32K values

    public float Beta1 { get; }
    public float Beta2 { get; }
    public float WeightDecay { get; }
    public float Eps { get; }
    /// <summary>Number of updates applied so far (torch's per-parameter 'step').</summary>
    public long StepCount { get; set; }
    /// <summary>The values this optimizer updates: the whole buffer, or one shard's range.</summary>
    public ShardRange Range { get; }
    /// <summary>The moments of <see cref="Range"/>: ExpAvg[i] belongs to parameter Range.Offset + i.</summary>
    public NativeBuffer ExpAvg { get; }
    public NativeBuffer ExpAvgSq { get; }

    public AdamW(FlatParameters parameters, float beta1, float beta2, float weightDecay, float eps = 1e-8f, ShardRange? range = null)
    {
        this.parameters = parameters;
        (Beta1, Beta2, WeightDecay, Eps) = (beta1, beta2, weightDecay, eps);
        Range = range ?? new ShardRange(0, 0, parameters.Count);
        if (Range.Offset < 0 || Range.Length < 0 || Range.End > parameters.Count)
            throw new ArgumentOutOfRangeException(nameof(range), $"range [{Range.Offset}, {Range.End}) of {parameters.Count} parameters");
        ExpAvg = new NativeBuffer(Range.Length);
        ExpAvgSq = new NativeBuffer(Range.Length);
        var tensors = parameters.Slots.Select(s => (Offset: Math.Max(s.Offset, Range.Offset), End: Math.Min(s.Offset + s.Length, Range.End), s.Decay))
            .Where(t => t.End > t.Offset);
        const long Chunk = 1 << 15;
        chunks = tensors.SelectMany(t => Enumerable.Range(0, (int)((t.End - t.Offset + Chunk - 1) / Chunk))
            .Select(c => (t.Offset + c * Chunk, Math.Min(Chunk, t.End - t.Offset - c * Chunk), t.Decay))).ToArray();
    }

    /// <summary>One update from the gradients currently in the flat gradient buffer, each multiplied by
    /// <paramref name="gradScale"/> as it is read (the mean and clip factor of <see cref="GradientOps.MeanClipScale"/>).
    /// Elementwise, so it runs 8 wide and split into chunks between cores (the result does not depend on the split).</summary>
    public void Step(float lr, float gradScale = 1f)
    {
        StepCount++;
        double bc1 = 1 - Math.Pow(Beta1, StepCount);
        float bc2Sqrt = (float)Math.Sqrt(1 - Math.Pow(Beta2, StepCount)); // a float scalar, as torch divides a float tensor by it
        float stepSize = (float)(lr / bc1);
        float b1 = Beta1, b2 = Beta2, eps = Eps, wd = WeightDecay, gs = gradScale;
        float* p = parameters.Values.Pointer, g = parameters.Grads.Pointer;
        nint moments = (nint)ExpAvg.Pointer, squares = (nint)ExpAvgSq.Pointer;
        long first = Range.Offset;
        Compute.For(chunks.Length, k =>
        {
            var (offset, length, decay) = chunks[k];
            float* m = (float*)moments - first, v = (float*)squares - first; // indexed by parameter, like p and g
            float shrink = decay ? 1f - lr * wd : 1f;
            var vb1 = Vector256.Create(b1); var vb1c = Vector256.Create(1 - b1);
            var vb2 = Vector256.Create(b2); var vb2c = Vector256.Create(1 - b2);
            var vbc2 = Vector256.Create(bc2Sqrt); var veps = Vector256.Create(eps);
            var vshrink = Vector256.Create(shrink); var vstep = Vector256.Create(stepSize); var vgs = Vector256.Create(gs);
            long i = offset, end = offset + length;
            for (; i + 8 <= end; i += 8)
            {
                var gi = Vector256.Load(g + i) * vgs;
                var mi = vb1 * Vector256.Load(m + i) + vb1c * gi;
                var vi = vb2 * Vector256.Load(v + i) + vb2c * gi * gi;
                mi.Store(m + i);
                vi.Store(v + i);
                var denom = Vector256.Sqrt(vi) / vbc2 + veps;
                (Vector256.Load(p + i) * vshrink - vstep * mi / denom).Store(p + i);
            }
            for (; i < end; i++)
            {
                float gi = g[i] * gs;
                float mi = m[i] = b1 * m[i] + (1 - b1) * gi;
                float vi = v[i] = b2 * v[i] + (1 - b2) * gi * gi;
                float denom = MathF.Sqrt(vi) / bc2Sqrt + eps;
                p[i] = p[i] * shrink - stepSize * mi / denom;
            }
        });
    }

    public void Dispose()
    {
        ExpAvg.Dispose();
        ExpAvgSq.Dispose();
    }
}
