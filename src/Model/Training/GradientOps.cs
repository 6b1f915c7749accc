using System.Numerics.Tensors;
using DistGpt.Model.Engine;

namespace DistGpt.Model.Training;

public static unsafe class GradientOps
{
    /// <summary>Global L2 norm of a gradient buffer (double accumulation over float chunks).</summary>
    public static double Norm(NativeBuffer grads)
    {
        double sum = 0;
        const int chunk = 1 << 16;
        for (long o = 0; o < grads.Length; o += chunk)
        {
            var s = new ReadOnlySpan<float>(grads.Pointer + o, (int)Math.Min(chunk, grads.Length - o));
            sum += TensorPrimitives.SumOfSquares(s);
        }
        return Math.Sqrt(sum);
    }

    /// <summary>torch.nn.utils.clip_grad_norm_: scale by min(1, maxNorm / (norm + 1e-6)); returns the pre-clip norm.</summary>
    public static double ClipByGlobalNorm(NativeBuffer grads, float maxNorm)
    {
        double norm = Norm(grads);
        if (maxNorm > 0)
        {
            float coef = (float)(maxNorm / (norm + 1e-6));
            if (coef < 1f) Scale(grads, coef);
        }
        return norm;
    }

    public static void Scale(NativeBuffer buffer, float factor)
    {
        const int chunk = 1 << 20;
        for (long o = 0; o < buffer.Length; o += chunk)
        {
            var s = new Span<float>(buffer.Pointer + o, (int)Math.Min(chunk, buffer.Length - o));
            TensorPrimitives.Multiply(s, factor, s);
        }
    }

    /// <summary>True when every value is finite.</summary>
    public static bool AllFinite(ReadOnlySpan<float> values)
    {
        foreach (float v in values)
            if (!float.IsFinite(v)) return false;
        return true;
    }
}
