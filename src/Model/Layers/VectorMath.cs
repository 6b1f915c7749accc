using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace DistGpt.Model.Layers;

/// <summary>8-wide float kernels shared by the layers: exp (Cephes' expf polynomial, ~1 ulp on the range the
/// layers use), and softmax / row reductions over short rows with masked tails instead of scalar remainders.</summary>
public static unsafe class VectorMath
{
    /// <summary>e^x for each lane; inputs below -87.3 give ~1e-38 rather than 0, above 88.7 are clamped.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Exp(Vector256<float> x)
    {
        x = Vector256.Min(Vector256.Max(x, Vector256.Create(-87.33654f)), Vector256.Create(88.72283f));
        var fx = Vector256.Floor(Vector256.FusedMultiplyAdd(x, Vector256.Create(1.44269504088896341f), Vector256.Create(0.5f)));
        x = Vector256.FusedMultiplyAdd(fx, Vector256.Create(-0.693359375f), x);
        x = Vector256.FusedMultiplyAdd(fx, Vector256.Create(2.12194440e-4f), x);
        var y = Vector256.Create(1.9875691500e-4f);
        y = Vector256.FusedMultiplyAdd(y, x, Vector256.Create(1.3981999507e-3f));
        y = Vector256.FusedMultiplyAdd(y, x, Vector256.Create(8.3334519073e-3f));
        y = Vector256.FusedMultiplyAdd(y, x, Vector256.Create(4.1665795894e-2f));
        y = Vector256.FusedMultiplyAdd(y, x, Vector256.Create(1.6666665459e-1f));
        y = Vector256.FusedMultiplyAdd(y, x, Vector256.Create(5.0000001201e-1f));
        y = Vector256.FusedMultiplyAdd(y, x * x, x + Vector256<float>.One);
        var pow2n = Vector256.ShiftLeft(Vector256.ConvertToInt32Native(fx) + Vector256.Create(127), 23).AsSingle();
        return y * pow2n;
    }

    /// <summary>The 16-lane twin of the 8-lane Exp, the same operations lane for lane (so both widths agree bit for bit); inputs below -87.3 give ~1e-38 rather than 0, above 88.7 are clamped.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Exp(Vector512<float> x)
    {
        x = Vector512.Min(Vector512.Max(x, Vector512.Create(-87.33654f)), Vector512.Create(88.72283f));
        var fx = Vector512.Floor(Vector512.FusedMultiplyAdd(x, Vector512.Create(1.44269504088896341f), Vector512.Create(0.5f)));
        x = Vector512.FusedMultiplyAdd(fx, Vector512.Create(-0.693359375f), x);
        x = Vector512.FusedMultiplyAdd(fx, Vector512.Create(2.12194440e-4f), x);
        var y = Vector512.Create(1.9875691500e-4f);
        y = Vector512.FusedMultiplyAdd(y, x, Vector512.Create(1.3981999507e-3f));
        y = Vector512.FusedMultiplyAdd(y, x, Vector512.Create(8.3334519073e-3f));
        y = Vector512.FusedMultiplyAdd(y, x, Vector512.Create(4.1665795894e-2f));
        y = Vector512.FusedMultiplyAdd(y, x, Vector512.Create(1.6666665459e-1f));
        y = Vector512.FusedMultiplyAdd(y, x, Vector512.Create(5.0000001201e-1f));
        y = Vector512.FusedMultiplyAdd(y, x * x, x + Vector512<float>.One);
        var pow2n = Vector512.ShiftLeft(Vector512.ConvertToInt32Native(fx) + Vector512.Create(127), 23).AsSingle();
        return y * pow2n;
    }

    static readonly int[] maskSource = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

    /// <summary>A mask with the first n (0..8) lanes set.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> FirstLanes(int n)
    {
        fixed (int* m = maskSource) return Vector256.Load(m + 8 - n).AsSingle();
    }

    /// <summary>Softmax of row[0..n) in place, for a row padded to whole vectors: lanes [n, round8(n)) are read (any
    /// value) and written as zeros, so no scalar or stack-buffered tail is needed.</summary>
    public static void SoftmaxPadded(float* row, int n)
    {
        int vectors = (n + 7) >> 3, last = (vectors - 1) << 3;
        var mask = FirstLanes(n - last);
        var ninf = Vector256.Create(float.NegativeInfinity);
        var lastVec = Vector256.ConditionalSelect(mask, Vector256.Load(row + last), ninf);
        var vmax = lastVec;
        for (int i = 0; i < last; i += 8) vmax = Vector256.Max(vmax, Vector256.Load(row + i));
        var vm = Vector256.Create(HorizontalMax(vmax));
        var vsum = Vector256<float>.Zero;
        for (int i = 0; i < last; i += 8)
        {
            var e = Exp(Vector256.Load(row + i) - vm);
            e.Store(row + i);
            vsum += e;
        }
        var tailExp = Exp(lastVec - vm) & mask;
        vsum += tailExp;
        var inv = Vector256.Create(1f / Vector256.Sum(vsum));
        for (int i = 0; i < last; i += 8) (Vector256.Load(row + i) * inv).Store(row + i);
        (tailExp * inv).Store(row + last);
    }

    /// <summary><see cref="SoftmaxPadded"/> on two rows at once: the same results, with the two rows' dependency chains
    /// (max, exp, sum, scale) interleaved so that each hides the other's latency on short rows.</summary>
    public static void SoftmaxPadded2(float* row0, int n0, float* row1, int n1)
    {
        int last0 = ((n0 + 7) >> 3) - 1 << 3, last1 = ((n1 + 7) >> 3) - 1 << 3;
        var mask0 = FirstLanes(n0 - last0);
        var mask1 = FirstLanes(n1 - last1);
        var ninf = Vector256.Create(float.NegativeInfinity);
        var tail0 = Vector256.ConditionalSelect(mask0, Vector256.Load(row0 + last0), ninf);
        var tail1 = Vector256.ConditionalSelect(mask1, Vector256.Load(row1 + last1), ninf);
        Vector256<float> max0 = tail0, max1 = tail1;
        for (int i = 0; i < last0; i += 8) max0 = Vector256.Max(max0, Vector256.Load(row0 + i));
        for (int i = 0; i < last1; i += 8) max1 = Vector256.Max(max1, Vector256.Load(row1 + i));
        var vm0 = Vector256.Create(HorizontalMax(max0));
        var vm1 = Vector256.Create(HorizontalMax(max1));
        var tailExp0 = Exp(tail0 - vm0) & mask0;
        var tailExp1 = Exp(tail1 - vm1) & mask1;
        Vector256<float> sum0 = default, sum1 = default;
        for (int i = 0; i < last0; i += 8)
        {
            var e = Exp(Vector256.Load(row0 + i) - vm0);
            e.Store(row0 + i);
            sum0 += e;
        }
        for (int i = 0; i < last1; i += 8)
        {
            var e = Exp(Vector256.Load(row1 + i) - vm1);
            e.Store(row1 + i);
            sum1 += e;
        }
        var inv0 = Vector256.Create(1f / Vector256.Sum(sum0 + tailExp0));
        var inv1 = Vector256.Create(1f / Vector256.Sum(sum1 + tailExp1));
        for (int i = 0; i < last0; i += 8) (Vector256.Load(row0 + i) * inv0).Store(row0 + i);
        for (int i = 0; i < last1; i += 8) (Vector256.Load(row1 + i) * inv1).Store(row1 + i);
        (tailExp0 * inv0).Store(row0 + last0);
        (tailExp1 * inv1).Store(row1 + last1);
    }

    /// <summary>Softmax backward in place on a row: d = p * (d - sum(p * d)).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void SoftmaxBackward(float* p, float* d, int n)
    {
        int full = n & ~7, rest = n - full;
        var acc = Vector256<float>.Zero;
        int i = 0;
        for (; i < full; i += 8) acc = Vector256.FusedMultiplyAdd(Vector256.Load(p + i), Vector256.Load(d + i), acc);
        float dot = Vector256.Sum(acc);
        for (int j = full; j < n; j++) dot += p[j] * d[j];
        var vdot = Vector256.Create(dot);
        for (i = 0; i < full; i += 8) (Vector256.Load(p + i) * (Vector256.Load(d + i) - vdot)).Store(d + i);
        for (int j = full; j < n; j++) d[j] = p[j] * (d[j] - dot);
    }

    /// <summary>Softmax backward in place on a row padded to whole vectors, d = p * (d - sum(p * d)) over
    /// [0, round8(n)): p's lanes from n on must be zero (d's there may be any finite value and come out zero).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void SoftmaxBackwardPadded(float* p, float* d, int n)
    {
        int end = (n + 7) & ~7;
        var acc = Vector256<float>.Zero;
        for (int i = 0; i < end; i += 8) acc = Vector256.FusedMultiplyAdd(Vector256.Load(p + i), Vector256.Load(d + i), acc);
        var vdot = Vector256.Create(Vector256.Sum(acc));
        for (int i = 0; i < end; i += 8) (Vector256.Load(p + i) * (Vector256.Load(d + i) - vdot)).Store(d + i);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float HorizontalMax(Vector256<float> v)
    {
        var m = Vector128.Max(v.GetLower(), v.GetUpper());
        m = Vector128.Max(m, Vector128.Shuffle(m, Vector128.Create(2, 3, 0, 1)));
        m = Vector128.Max(m, Vector128.Shuffle(m, Vector128.Create(1, 0, 3, 2)));
        return m.ToScalar();
    }
}
