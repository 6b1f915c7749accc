using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace DistGpt.Model;

/// The register tiles of <see cref="Gemm"/>'s packed path. Each C element is one FMA chain over p = 0..kc in order,
/// then alpha * acc (beta == 0) or fma(acc, alpha, beta * C): the same in every tile, whatever its width.
public static unsafe partial class Gemm
{
    // ---------------------------------------------------------------- AVX-512: 8 x 32

    /// C[8,32] = alpha * Apanel * Bpanel + beta * C, with beta == 0 meaning C is not read. 16 zmm accumulators: enough
    /// independent chains to cover the FMA latency of two pipes, and each B load serves 8 rows.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Kernel8x32(int kc, float* a, float* b, float* c, int ldc, float alpha, float beta)
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default;
        Vector512<float> c40 = default, c41 = default, c50 = default, c51 = default, c60 = default, c61 = default, c70 = default, c71 = default;
        for (int p = 0; p < kc; p++, a += 8, b += 32)
        {
            var b0 = Vector512.LoadAligned(b);
            var b1 = Vector512.LoadAligned(b + 16);
            var x = Vector512.Create(a[0]);
            c00 = Avx512F.FusedMultiplyAdd(x, b0, c00); c01 = Avx512F.FusedMultiplyAdd(x, b1, c01);
            x = Vector512.Create(a[1]);
            c10 = Avx512F.FusedMultiplyAdd(x, b0, c10); c11 = Avx512F.FusedMultiplyAdd(x, b1, c11);
            x = Vector512.Create(a[2]);
            c20 = Avx512F.FusedMultiplyAdd(x, b0, c20); c21 = Avx512F.FusedMultiplyAdd(x, b1, c21);
            x = Vector512.Create(a[3]);
            c30 = Avx512F.FusedMultiplyAdd(x, b0, c30); c31 = Avx512F.FusedMultiplyAdd(x, b1, c31);
            x = Vector512.Create(a[4]);
            c40 = Avx512F.FusedMultiplyAdd(x, b0, c40); c41 = Avx512F.FusedMultiplyAdd(x, b1, c41);
            x = Vector512.Create(a[5]);
            c50 = Avx512F.FusedMultiplyAdd(x, b0, c50); c51 = Avx512F.FusedMultiplyAdd(x, b1, c51);
            x = Vector512.Create(a[6]);
            c60 = Avx512F.FusedMultiplyAdd(x, b0, c60); c61 = Avx512F.FusedMultiplyAdd(x, b1, c61);
            x = Vector512.Create(a[7]);
            c70 = Avx512F.FusedMultiplyAdd(x, b0, c70); c71 = Avx512F.FusedMultiplyAdd(x, b1, c71);
        }

        var va = Vector512.Create(alpha);
        if (beta == 0)
        {
            (va * c00).Store(c); (va * c01).Store(c + 16); c += ldc;
            (va * c10).Store(c); (va * c11).Store(c + 16); c += ldc;
            (va * c20).Store(c); (va * c21).Store(c + 16); c += ldc;
            (va * c30).Store(c); (va * c31).Store(c + 16); c += ldc;
            (va * c40).Store(c); (va * c41).Store(c + 16); c += ldc;
            (va * c50).Store(c); (va * c51).Store(c + 16); c += ldc;
            (va * c60).Store(c); (va * c61).Store(c + 16); c += ldc;
            (va * c70).Store(c); (va * c71).Store(c + 16);
        }
        else
        {
            var vb = Vector512.Create(beta);
            Update(c, c00, va, vb); Update(c + 16, c01, va, vb); c += ldc;
            Update(c, c10, va, vb); Update(c + 16, c11, va, vb); c += ldc;
            Update(c, c20, va, vb); Update(c + 16, c21, va, vb); c += ldc;
            Update(c, c30, va, vb); Update(c + 16, c31, va, vb); c += ldc;
            Update(c, c40, va, vb); Update(c + 16, c41, va, vb); c += ldc;
            Update(c, c50, va, vb); Update(c + 16, c51, va, vb); c += ldc;
            Update(c, c60, va, vb); Update(c + 16, c61, va, vb); c += ldc;
            Update(c, c70, va, vb); Update(c + 16, c71, va, vb);
        }
    }

    /// A ragged 8 x 32 tile into tile (row stride 32): a panel with at most 16 columns left (lm_head's 65 = 2 x 32 + 1)
    /// takes the 16-wide kernel, half the multiply-adds.
    static void EdgeKernel8x32(int kc, float* a, float* b, float* tile, int nr)
    {
        if (nr <= 16) Kernel8x16(kc, a, b, tile);
        else Kernel8x32(kc, a, b, tile, 32, 1f, 0f);
    }

    /// tile[8, 0..16) (row stride 32) = Apanel * the first 16 columns of a 32-wide B panel.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Kernel8x16(int kc, float* a, float* b, float* tile)
    {
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default, c6 = default, c7 = default;
        for (int p = 0; p < kc; p++, a += 8, b += 32)
        {
            var b0 = Vector512.LoadAligned(b);
            c0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[0]), b0, c0);
            c1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[1]), b0, c1);
            c2 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[2]), b0, c2);
            c3 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[3]), b0, c3);
            c4 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[4]), b0, c4);
            c5 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[5]), b0, c5);
            c6 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[6]), b0, c6);
            c7 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[7]), b0, c7);
        }
        c0.Store(tile); c1.Store(tile + 32); c2.Store(tile + 64); c3.Store(tile + 96);
        c4.Store(tile + 128); c5.Store(tile + 160); c6.Store(tile + 192); c7.Store(tile + 224);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Update(float* c, Vector512<float> acc, Vector512<float> alpha, Vector512<float> beta) =>
        Avx512F.FusedMultiplyAdd(acc, alpha, beta * Vector512.Load(c)).Store(c);

    // ---------------------------------------------------------------- AVX2: 6 x 16

    /// C[6,16] = alpha * Apanel * Bpanel + beta * C, with beta == 0 meaning C is not read. 12 ymm accumulators, leaving
    /// 4 registers for the B row and the A broadcasts.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Kernel6x16(int kc, float* a, float* b, float* c, int ldc, float alpha, float beta)
    {
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector256<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int p = 0; p < kc; p++, a += 6, b += 16)
        {
            Vector256<float> b0 = Avx.LoadAlignedVector256(b), b1 = Avx.LoadAlignedVector256(b + 8);
            Vector256<float> x = Avx.BroadcastScalarToVector256(a);
            c00 = Fma.MultiplyAdd(x, b0, c00); c01 = Fma.MultiplyAdd(x, b1, c01);
            x = Avx.BroadcastScalarToVector256(a + 1);
            c10 = Fma.MultiplyAdd(x, b0, c10); c11 = Fma.MultiplyAdd(x, b1, c11);
            x = Avx.BroadcastScalarToVector256(a + 2);
            c20 = Fma.MultiplyAdd(x, b0, c20); c21 = Fma.MultiplyAdd(x, b1, c21);
            x = Avx.BroadcastScalarToVector256(a + 3);
            c30 = Fma.MultiplyAdd(x, b0, c30); c31 = Fma.MultiplyAdd(x, b1, c31);
            x = Avx.BroadcastScalarToVector256(a + 4);
            c40 = Fma.MultiplyAdd(x, b0, c40); c41 = Fma.MultiplyAdd(x, b1, c41);
            x = Avx.BroadcastScalarToVector256(a + 5);
            c50 = Fma.MultiplyAdd(x, b0, c50); c51 = Fma.MultiplyAdd(x, b1, c51);
        }

        var va = Vector256.Create(alpha);
        if (beta == 0)
        {
            Avx.Store(c, Avx.Multiply(va, c00)); Avx.Store(c + 8, Avx.Multiply(va, c01)); c += ldc;
            Avx.Store(c, Avx.Multiply(va, c10)); Avx.Store(c + 8, Avx.Multiply(va, c11)); c += ldc;
            Avx.Store(c, Avx.Multiply(va, c20)); Avx.Store(c + 8, Avx.Multiply(va, c21)); c += ldc;
            Avx.Store(c, Avx.Multiply(va, c30)); Avx.Store(c + 8, Avx.Multiply(va, c31)); c += ldc;
            Avx.Store(c, Avx.Multiply(va, c40)); Avx.Store(c + 8, Avx.Multiply(va, c41)); c += ldc;
            Avx.Store(c, Avx.Multiply(va, c50)); Avx.Store(c + 8, Avx.Multiply(va, c51));
        }
        else
        {
            var vb = Vector256.Create(beta);
            Update(c, c00, va, vb); Update(c + 8, c01, va, vb); c += ldc;
            Update(c, c10, va, vb); Update(c + 8, c11, va, vb); c += ldc;
            Update(c, c20, va, vb); Update(c + 8, c21, va, vb); c += ldc;
            Update(c, c30, va, vb); Update(c + 8, c31, va, vb); c += ldc;
            Update(c, c40, va, vb); Update(c + 8, c41, va, vb); c += ldc;
            Update(c, c50, va, vb); Update(c + 8, c51, va, vb);
        }
    }

    /// A ragged 6 x 16 tile into tile (row stride 16): a panel with at most 8 columns left (e.g. lm_head's
    /// 65 = 4 x 16 + 1) takes the 8-wide kernel, half the multiply-adds of the 16-wide one.
    static void EdgeKernel6x16(int kc, float* a, float* b, float* tile, int nr)
    {
        if (nr <= 8) Kernel6x8(kc, a, b, tile);
        else Kernel6x16(kc, a, b, tile, 16, 1f, 0f);
    }

    /// tile[6, 0..8) (row stride 16) = Apanel * the first 8 columns of a 16-wide B panel.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Kernel6x8(int kc, float* a, float* b, float* tile)
    {
        Vector256<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default;
        for (int p = 0; p < kc; p++, a += 6, b += 16)
        {
            Vector256<float> b0 = Avx.LoadAlignedVector256(b);
            c0 = Fma.MultiplyAdd(Avx.BroadcastScalarToVector256(a), b0, c0);
            c1 = Fma.MultiplyAdd(Avx.BroadcastScalarToVector256(a + 1), b0, c1);
            c2 = Fma.MultiplyAdd(Avx.BroadcastScalarToVector256(a + 2), b0, c2);
            c3 = Fma.MultiplyAdd(Avx.BroadcastScalarToVector256(a + 3), b0, c3);
            c4 = Fma.MultiplyAdd(Avx.BroadcastScalarToVector256(a + 4), b0, c4);
            c5 = Fma.MultiplyAdd(Avx.BroadcastScalarToVector256(a + 5), b0, c5);
        }
        Avx.Store(tile, c0); Avx.Store(tile + 16, c1); Avx.Store(tile + 32, c2);
        Avx.Store(tile + 48, c3); Avx.Store(tile + 64, c4); Avx.Store(tile + 80, c5);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Update(float* c, Vector256<float> acc, Vector256<float> alpha, Vector256<float> beta) =>
        Avx.Store(c, Fma.MultiplyAdd(acc, alpha, Avx.Multiply(beta, Avx.LoadVector256(c))));
}
