using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
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
        // x - x is 0 for finite x and NaN for ±Inf or NaN, so the lanes' sums stay 0 exactly when every value is finite.
        ref float first = ref MemoryMarshal.GetReference(values);
        Vector256<float> a = default, b = default;
        int i = 0;
        for (; i + 16 <= values.Length; i += 16)
        {
            var x = Vector256.LoadUnsafe(ref first, (nuint)i);
            var y = Vector256.LoadUnsafe(ref first, (nuint)i + 8);
            a += x - x;
            b += y - y;
        }
        if (!Vector256.EqualsAll(a + b, Vector256<float>.Zero)) return false;
        for (; i < values.Length; i++)
            if (!float.IsFinite(values[i])) return false;
        return true;
    }
}
