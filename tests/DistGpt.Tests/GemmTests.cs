using DistGpt.Model;
using Xunit;

namespace DistGpt.Tests;

/// Gemm.Kernel and Compute.Threads are process-wide, so these tests run alone.
[CollectionDefinition(nameof(GemmTests), DisableParallelization = true)]
public sealed class GemmCollection;

[Collection(nameof(GemmTests))]
public unsafe class GemmTests
{
    public static TheoryData<int, int, int> Shapes => new()
    {
        { 1, 1, 1 }, { 7, 13, 5 }, { 17, 33, 65 }, { 6, 16, 1 }, { 100, 3, 257 }, { 3, 100, 17 },
        { 6, 16, 256 }, { 13, 17, 513 },   // exactly one k-block; several k-blocks with a ragged tail
        { 8, 32, 256 }, { 9, 47, 31 },     // one whole 8x32 tile; ragged in both directions around it
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

    /// The 8x32 AVX-512 tiles and the 6x16 AVX2 tiles cut C differently (and their ragged edges fall elsewhere), but each
    /// element is the same chain of fused operations, so a cluster mixing CPUs computes identical gradients.
    [Fact]
    public void WideAndNarrowTilesAgreeBitForBit()
    {
        if (Gemm.Best < GemmKernel.Avx512)
        {
            Console.WriteLine("skipped: this CPU has no AVX-512 (only the 6x16 kernel runs here)");
            return;
        }
        var shapes = new[] { (7, 13, 5), (17, 33, 65), (13, 17, 513), (150, 20, 9), (65, 129, 300), (32, 520, 128), (384, 65, 128), (2, 3100, 3) };
        int seed = 0;
        foreach (var (m, n, k) in shapes)
            foreach (bool transA in new[] { false, true })
                foreach (bool transB in new[] { false, true })
                    foreach (var (alpha, beta) in new[] { (1f, 0f), (1.5f, 1f), (-0.5f, 0.5f) })
                        foreach (bool parallel in new[] { false, true })
                        {
                            var rng = new Random(++seed);
                            int lda = transA ? m : k, ldb = transB ? k : n;
                            float[] a = Random(rng, transA ? k : m, lda, lda), b = Random(rng, transB ? n : k, ldb, ldb), c0 = Random(rng, m, n, n);
                            float[] narrow = (float[])c0.Clone(), wide = (float[])c0.Clone();
                            foreach (var (kernel, c) in new[] { (GemmKernel.Avx2, narrow), (GemmKernel.Avx512, wide) })
                                WithKernel(kernel, () =>
                                {
                                    fixed (float* pa = a, pb = b, pc = c)
                                        Gemm.Sgemm(transA, transB, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, n, parallel);
                                });
                            int differ = Enumerable.Range(0, m * n).Count(i => BitConverter.SingleToInt32Bits(narrow[i]) != BitConverter.SingleToInt32Bits(wide[i]));
                            Assert.True(differ == 0, $"{m}x{n}x{k} transA={transA} transB={transB} alpha={alpha} beta={beta} parallel={parallel}: {differ} elements differ");
                        }
    }

    [Fact]
    public void KernelNamesParseAndUnknownOnesAreRefused()
    {
        Assert.Equal(GemmKernel.Avx512, Gemm.ParseKernel("AVX512"));
        Assert.Equal(GemmKernel.Avx2, Gemm.ParseKernel("avx2"));
        Assert.Equal(GemmKernel.Portable, Gemm.ParseKernel("portable"));
        var error = Assert.Throws<ArgumentException>(() => Gemm.ParseKernel("sse"));
        Assert.Contains("unknown matmul kernel 'sse'", error.Message);
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
        foreach (var kernel in Kernels)
        {
            const int m = 5, n = 7, ldc = 9;
            var c = new float[m * ldc];
            for (int i = 0; i < c.Length; i++) c[i] = beta == 0 ? float.NaN : i;
            var a = new float[1];
            var b = new float[1];
            WithKernel(kernel, () =>
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

    /// Runs Sgemm on every path (each kernel this CPU runs x serial/parallel) against one reference result.
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

        foreach (var kernel in Kernels)
            foreach (bool parallel in new[] { false, true })
            {
                var c = (float[])c0.Clone();
                WithKernel(kernel, () =>
                {
                    fixed (float* pa = a, pb = b, pc = c)
                        Gemm.Sgemm(transA, transB, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc, parallel);
                });
                string what = $"{m}x{n}x{k} transA={transA} transB={transB} beta={beta} kernel={kernel} parallel={parallel}";
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

    static GemmKernel[] Kernels => Enum.GetValues<GemmKernel>().Where(k => k <= Gemm.Best).ToArray();

    static void WithKernel(GemmKernel kernel, Action body)
    {
        var saved = Gemm.Kernel;
        Gemm.Kernel = kernel;
        try { body(); }
        finally { Gemm.Kernel = saved; }
    }
}
