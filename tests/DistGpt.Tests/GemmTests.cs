using DistGpt.Model;
using Xunit;

namespace DistGpt.Tests;

/// Gemm.UseScalarPath and Compute.Threads are process-wide, so these tests run alone.
[CollectionDefinition(nameof(GemmTests), DisableParallelization = true)]
public sealed class GemmCollection;

[Collection(nameof(GemmTests))]
public unsafe class GemmTests
{
    public static TheoryData<int, int, int> Shapes => new()
    {
        { 1, 1, 1 }, { 7, 13, 5 }, { 17, 33, 65 }, { 6, 16, 1 }, { 100, 3, 257 }, { 3, 100, 17 },
        { 6, 16, 256 }, { 13, 17, 513 },   // exactly one k-block; several k-blocks with a ragged tail
        { 150, 20, 9 },                    // more rows than one MC block
        { 2, 3100, 3 },                    // more columns than one NC block
        { 65, 129, 300 },                  // big enough to go parallel, split over m
        { 32, 520, 128 },                  // big enough to go parallel, split over n
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void MatchesReference(int m, int n, int k)
    {
        foreach (bool transA in new[] { false, true })
            foreach (bool transB in new[] { false, true })
                foreach (float beta in new[] { 0f, 1f, 0.5f })
                    Check(transA, transB, m, n, k, alpha: 1.5f, beta, seed: m * 7919 + n * 31 + k);
    }

    [Fact]
    public void UnevenThreadSplit()
    {
        int saved = Compute.Threads;
        try
        {
            Compute.Threads = 3;
            Check(false, true, 97, 211, 160, alpha: 1f, beta: 0f, seed: 1);
            Check(true, false, 50, 301, 200, alpha: -0.5f, beta: 1f, seed: 2);
        }
        finally { Compute.Threads = saved; }
    }

    [Theory]
    [InlineData(0f)]
    [InlineData(1f)]
    [InlineData(0.5f)]
    public void ZeroKScalesC(float beta)
    {
        foreach (bool scalar in new[] { false, true })
        {
            const int m = 5, n = 7, ldc = 9;
            var c = new float[m * ldc];
            for (int i = 0; i < c.Length; i++) c[i] = beta == 0 ? float.NaN : i;
            var a = new float[1];
            var b = new float[1];
            WithScalarPath(scalar, () =>
            {
                fixed (float* pa = a, pb = b, pc = c)
                    Gemm.Sgemm(false, false, m, n, 0, 2f, pa, 1, pb, n, beta, pc, ldc);
            });
            for (int i = 0; i < m; i++)
                for (int j = 0; j < ldc; j++)
                {
                    float original = beta == 0 ? float.NaN : i * ldc + j;
                    float expected = j < n ? (beta == 0 ? 0 : beta * original) : original;
                    Assert.Equal(expected, c[i * ldc + j]);
                }
        }
    }

    [Fact]
    public void EmptyOutputIsNoOp()
    {
        var c = new float[] { 42 };
        fixed (float* pc = c)
        {
            Gemm.Sgemm(false, false, 0, 1, 3, 1f, pc, 3, pc, 1, 0f, pc, 1);
            Gemm.Sgemm(false, false, 1, 0, 3, 1f, pc, 3, pc, 1, 0f, pc, 1);
        }
        Assert.Equal(42f, c[0]);
    }

    /// Runs Sgemm on every path (SIMD/portable x serial/parallel) against one reference result.
    /// Leading dimensions are padded and the padding of A and B is NaN so stray reads show up;
    /// with beta == 0 C starts as NaN, which must not leak into the result.
    static void Check(bool transA, bool transB, int m, int n, int k, float alpha, float beta, int seed)
    {
        var rng = new Random(seed);
        int rowsA = transA ? k : m, colsA = transA ? m : k, lda = colsA + 3;
        int rowsB = transB ? n : k, colsB = transB ? k : n, ldb = colsB + 5;
        int ldc = n + 2;
        float[] a = Random(rng, rowsA, colsA, lda), b = Random(rng, rowsB, colsB, ldb);
        float[] c0 = beta == 0 ? Enumerable.Repeat(float.NaN, m * ldc).ToArray() : Random(rng, m, n, ldc);

        var expected = (float[])c0.Clone();
        fixed (float* pa = a, pb = b, pe = expected)
            Gemm.SgemmReference(transA, transB, m, n, k, alpha, pa, lda, pb, ldb, beta, pe, ldc);

        // Rounding error of a k-term float sum is at most ~k * eps * sum|terms|, and by Cauchy-Schwarz
        // sum_p |a_ip b_pj| <= |row i of op(A)| * |column j of op(B)|, which is cheap to compute.
        var rowNorm = new double[m];
        var colNorm = new double[n];
        for (int p = 0; p < k; p++)
        {
            for (int i = 0; i < m; i++) rowNorm[i] += Square(transA ? a[p * lda + i] : a[i * lda + p]);
            for (int j = 0; j < n; j++) colNorm[j] += Square(transB ? b[j * ldb + p] : b[p * ldb + j]);
        }

        foreach (bool scalar in new[] { false, true })
            foreach (bool parallel in new[] { false, true })
            {
                var c = (float[])c0.Clone();
                WithScalarPath(scalar, () =>
                {
                    fixed (float* pa = a, pb = b, pc = c)
                        Gemm.Sgemm(transA, transB, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc, parallel);
                });
                string what = $"{m}x{n}x{k} transA={transA} transB={transB} beta={beta} scalar={scalar} parallel={parallel}";
                for (int i = 0; i < m; i++)
                    for (int j = 0; j < ldc; j++)
                    {
                        float got = c[i * ldc + j], want = expected[i * ldc + j];
                        if (j >= n)
                        {
                            Assert.True(BitConverter.SingleToInt32Bits(got) == BitConverter.SingleToInt32Bits(want), $"{what}: padding C[{i},{j}] was written");
                            continue;
                        }
                        double bound = Math.Abs(alpha) * Math.Sqrt(rowNorm[i] * colNorm[j]) + (beta == 0 ? 0 : Math.Abs(beta * c0[i * ldc + j]));
                        double tolerance = 4e-7 * (k + 8) * bound + 1e-30;
                        Assert.True(Math.Abs(got - want) <= tolerance, $"{what}: C[{i},{j}] = {got}, expected {want} (tolerance {tolerance})");
                    }
            }
    }

    static double Square(float x) => (double)x * x;

    static float[] Random(Random rng, int rows, int cols, int ld)
    {
        var x = new float[rows * ld];
        for (int r = 0; r < rows; r++)
            for (int col = 0; col < ld; col++)
                x[r * ld + col] = col < cols ? (float)(rng.NextDouble() * 2 - 1) : float.NaN;
        return x;
    }

    static void WithScalarPath(bool scalar, Action body)
    {
        bool saved = Gemm.UseScalarPath;
        Gemm.UseScalarPath = scalar;
        try { body(); }
        finally { Gemm.UseScalarPath = saved; }
    }
}
