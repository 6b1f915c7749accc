using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace DistGpt.Model;

/// <summary>Which code computes a product: BLIS-style packed register tiles in 512-bit (AVX-512F) or 256-bit (AVX2 +
/// FMA) vectors, or the portable Vector&lt;T&gt; loops.</summary>
public enum GemmKernel { Portable, Avx2, Avx512 }

/// <summary>
/// Single-precision GEMM, BLIS style: op(A) and op(B) are packed into contiguous, zero-padded panels and an
/// MR x NR register tile does the arithmetic: 8 x 32 in AVX-512 registers where the CPU has them, else 6 x 16 in
/// AVX2 registers. Row-major throughout. Both tiles accumulate every element of C over k in the same order with the
/// same fused operations, so the two give bit-identical results (machines of a cluster can differ in width).
/// </summary>
public static unsafe partial class Gemm
{
    // Cache blocking: a KC x NR micro-panel of B (16 or 32 KiB) stays in L1 while the MC x KC block of A (144 KiB)
    // streams from L2; the KC x NC block of B lives in L2/L3. MC is a multiple of both tiles' MR.
    const int KC = 256, MC = 144, NC = 3072;

    // Parallel.For costs ~10 us to fork and join here; below ~2M multiply-adds (~20-40 us on one core) it doesn't pay.
    const long ParallelThreshold = 1L << 21;

    /// <summary>The widest kernel this CPU runs.</summary>
    public static GemmKernel Best { get; } =
        Avx512F.IsSupported ? GemmKernel.Avx512 : Fma.IsSupported && Avx2.IsSupported ? GemmKernel.Avx2 : GemmKernel.Portable;

    static GemmKernel kernel = Best;

    /// <summary>The kernel every product uses: <see cref="Best"/> unless set (tests, benchmarks, the --gemm flag).</summary>
    public static GemmKernel Kernel
    {
        get => kernel;
        set
        {
            if (value > Best)
                throw new ArgumentException($"this CPU cannot run the {value.ToString().ToLowerInvariant()} matmul kernel (the widest it runs is {Best.ToString().ToLowerInvariant()})");
            kernel = value;
        }
    }

    /// <summary>Parses a kernel name as the --gemm flag spells it (portable, avx2, avx512).</summary>
    public static GemmKernel ParseKernel(string name) => name.ToLowerInvariant() switch
    {
        "portable" => GemmKernel.Portable,
        "avx2" => GemmKernel.Avx2,
        "avx512" => GemmKernel.Avx512,
        _ => throw new ArgumentException($"unknown matmul kernel '{name}' (expected portable, avx2 or avx512)"),
    };

    /// <summary>Register-tile shape of the packed kernels.</summary>
    readonly record struct Tile(int MR, int NR, bool Wide)
    {
        public static readonly Tile Avx2 = new(6, 16, false), Avx512 = new(8, 32, true);

        public static Tile Of(GemmKernel kernel) => kernel == GemmKernel.Avx512 ? Avx512 : Avx2;
    }

    /// C[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C   (row-major; op(X) = X or X^T)
    /// A is m x k (lda >= k) when !transA, else k x m (lda >= m). B is k x n (ldb >= n) when !transB, else n x k (ldb >= k). ldc >= n.
    /// beta == 0 means C is overwritten (never read, so NaN garbage in C must not leak).
    public static void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
        float* a, int lda, float* b, int ldb, float beta, float* c, int ldc, bool parallel = true)
    {
        Validate(transA, transB, m, n, k, lda, ldb, ldc);
        if (m == 0 || n == 0) return;
        if (k == 0 || alpha == 0)  // BLAS convention: A and B are not read
        {
            ScaleC(m, n, beta, c, ldc);
            return;
        }

        var kind = kernel;
        var tileShape = Tile.Of(kind);
        int threads = parallel ? Compute.AvailableThreads : 1;
        if (threads == 1 || (long)m * n * k < ParallelThreshold)
        {
            Serial(kind, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
            return;
        }

        bool splitM = m >= n;
        if (kind != GemmKernel.Portable && splitM)
        {
            SharedB(tileShape, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, threads);
            return;
        }

        // Split the larger of m and n into tile-aligned slabs, one per thread; each thread packs its
        // own panels, so the only shared state is the disjoint slab of C it writes.
        int tile = splitM ? tileShape.MR : tileShape.NR, size = splitM ? m : n;
        // Several slabs per thread, claimed dynamically: a thread that starts late (or is descheduled) costs less.
        var (tasks, chunk) = SplitTiles(size, tile, threads * 4);
        nint pa = (nint)a, pb = (nint)b, pc = (nint)c;
        Compute.For(tasks, t =>
        {
            int start = t * chunk, len = Math.Min(chunk, size - start);
            float* ta = (float*)pa, tb = (float*)pb, tc = (float*)pc;
            if (splitM)
            {
                ta += transA ? start : (nint)start * lda;
                tc += (nint)start * ldc;
                Serial(kind, transA, transB, len, n, k, alpha, ta, lda, tb, ldb, beta, tc, ldc);
            }
            else
            {
                tb += transB ? (nint)start * ldb : start;
                tc += start;
                Serial(kind, transA, transB, m, len, k, alpha, ta, lda, tb, ldb, beta, tc, ldc);
            }
        });
    }

    /// [0, size) cut into at most maxTasks slices of whole tiles, as equal as tiles allow: (slices, slice length).
    static (int Tasks, int Length) SplitTiles(int size, int tile, int maxTasks)
    {
        int tiles = (size + tile - 1) / tile;
        int tasks = Math.Min(maxTasks, tiles);
        int perTask = (tiles + tasks - 1) / tasks;
        return ((tiles + perTask - 1) / perTask, perTask * tile);
    }

    /// Parallel over row slabs of C with op(B) packed once per (jc, pc) block and shared: the panels of B are packed by
    /// all threads together, then each slab packs its own A and runs the same kernels as the serial path (so results do
    /// not depend on the split). For the short-k shapes of small models, packing B per slab would cost as much as the math.
    static void SharedB(Tile tile, bool transA, bool transB, int m, int n, int k, float alpha,
        float* a, int lda, float* b, int ldb, float beta, float* c, int ldc, int threads)
    {
        int MR = tile.MR, NR = tile.NR;
        int ncMax = Math.Min(NC, RoundUp(n, NR)), kcMax = Math.Min(KC, k);
        nint packB = (nint)Scratch.Current.B((nuint)(ncMax * kcMax));
        var (tasks, rowsPerTask) = SplitTiles(m, MR, threads * 4);
        nint pa = (nint)a, pb = (nint)b, pcc = (nint)c;

        for (int jc = 0; jc < n; jc += NC)
        {
            int nc = Math.Min(NC, n - jc);
            var (packTasks, packWidth) = SplitTiles(nc, NR, threads);
            for (int pc = 0; pc < k; pc += KC)
            {
                int kc = Math.Min(KC, k - pc);
                float betaBlock = pc == 0 ? beta : 1f;
                int jc0 = jc, pc0 = pc;
                Compute.For(packTasks, t =>
                {
                    int j0 = t * packWidth, width = Math.Min(packWidth, nc - j0);
                    float* src = (float*)pb + (transB ? (nint)(jc0 + j0) * ldb + pc0 : (nint)pc0 * ldb + jc0 + j0);
                    PackB(tile, transB, kc, width, src, ldb, (float*)packB + (nint)j0 * kc);
                });
                Compute.For(tasks, t =>
                {
                    int start = t * rowsPerTask, end = Math.Min(m, start + rowsPerTask);
                    float* packA = Scratch.Current.A((nuint)(Math.Min(MC, RoundUp(m, MR)) * kcMax));
                    float* edge = stackalloc float[MR * NR];
                    for (int ic = start; ic < end; ic += MC)
                    {
                        int mc = Math.Min(MC, end - ic);
                        float* aSrc = (float*)pa + (transA ? (nint)pc0 * lda + ic : (nint)ic * lda + pc0);
                        PackA(tile, transA, mc, kc, aSrc, lda, packA);
                        Block(tile, mc, nc, kc, packA, (float*)packB, (float*)pcc + (nint)ic * ldc + jc0, ldc, alpha, betaBlock, edge);
                    }
                });
            }
        }
    }

    /// dst (rows x width, row-major) = the first n columns of each of src's rows (stride ld), zero-padded to width:
    /// the ragged edge of a packed panel.
    static void CopyPadded(float* src, int ld, int rows, int n, int width, float* dst)
    {
        for (int p = 0; p < rows; p++, src += ld)
        {
            float* d = dst + p * width;
            int i = 0;
            for (; i < n; i++) d[i] = src[i];
            for (; i < width; i++) d[i] = 0;
        }
    }

    /// Naive triple loop with a double accumulator; same contract as <see cref="Sgemm"/>.
    public static void SgemmReference(bool transA, bool transB, int m, int n, int k, float alpha,
        float* a, int lda, float* b, int ldb, float beta, float* c, int ldc, bool parallel = true)
    {
        Validate(transA, transB, m, n, k, lda, ldb, ldc);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = 0;
                for (int p = 0; p < k; p++)
                {
                    float x = transA ? a[(nint)p * lda + i] : a[(nint)i * lda + p];
                    float y = transB ? b[(nint)j * ldb + p] : b[(nint)p * ldb + j];
                    sum += (double)x * y;
                }
                float* cij = c + (nint)i * ldc + j;
                *cij = beta == 0 ? (float)(alpha * sum) : (float)(alpha * sum + (double)beta * *cij);
            }
    }

    static void Validate(bool transA, bool transB, int m, int n, int k, int lda, int ldb, int ldc)
    {
        if (m < 0 || n < 0 || k < 0) throw new ArgumentOutOfRangeException(nameof(m), "negative dimension");
        if (lda < Math.Max(1, transA ? m : k)) throw new ArgumentOutOfRangeException(nameof(lda));
        if (ldb < Math.Max(1, transB ? k : n)) throw new ArgumentOutOfRangeException(nameof(ldb));
        if (ldc < Math.Max(1, n)) throw new ArgumentOutOfRangeException(nameof(ldc));
    }

    static void ScaleC(int m, int n, float beta, float* c, int ldc)
    {
        for (int i = 0; i < m; i++)
        {
            var row = new Span<float>(c + (nint)i * ldc, n);
            if (beta == 0) row.Clear();
            else if (beta != 1) System.Numerics.Tensors.TensorPrimitives.Multiply(row, beta, row);
        }
    }

    static void Serial(GemmKernel kind, bool transA, bool transB, int m, int n, int k, float alpha,
        float* a, int lda, float* b, int ldb, float beta, float* c, int ldc)
    {
        if (kind == GemmKernel.Portable) Portable(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        else Packed(Tile.Of(kind), transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    }

    // ---------------------------------------------------------------- packed path

    static void Packed(Tile tile, bool transA, bool transB, int m, int n, int k, float alpha,
        float* a, int lda, float* b, int ldb, float beta, float* c, int ldc)
    {
        int MR = tile.MR, NR = tile.NR;
        var scratch = Scratch.Current;
        int ncMax = Math.Min(NC, RoundUp(n, NR)), kcMax = Math.Min(KC, k);
        float* packA = scratch.A((nuint)(Math.Min(MC, RoundUp(m, MR)) * kcMax));
        float* packB = scratch.B((nuint)(ncMax * kcMax));
        float* edge = stackalloc float[MR * NR];

        for (int jc = 0; jc < n; jc += NC)
        {
            int nc = Math.Min(NC, n - jc);
            for (int pc = 0; pc < k; pc += KC)
            {
                int kc = Math.Min(KC, k - pc);
                float betaBlock = pc == 0 ? beta : 1f;  // later k-blocks accumulate onto the first
                PackB(tile, transB, kc, nc, transB ? b + (nint)jc * ldb + pc : b + (nint)pc * ldb + jc, ldb, packB);

                for (int ic = 0; ic < m; ic += MC)
                {
                    int mc = Math.Min(MC, m - ic);
                    PackA(tile, transA, mc, kc, transA ? a + (nint)pc * lda + ic : a + (nint)ic * lda + pc, lda, packA);
                    Block(tile, mc, nc, kc, packA, packB, c + (nint)ic * ldc + jc, ldc, alpha, betaBlock, edge);
                }
            }
        }
    }

    /// C[0..mc, 0..nc] = alpha * packed A block * packed B block + beta * C, tile by tile; ragged tiles go through edge
    /// (MR x NR scratch).
    static void Block(Tile tile, int mc, int nc, int kc, float* packA, float* packB, float* c, int ldc, float alpha, float beta, float* edge)
    {
        int MR = tile.MR, NR = tile.NR;
        for (int jr = 0; jr < nc; jr += NR)
        {
            int nr = Math.Min(NR, nc - jr);
            float* bp = packB + jr * kc;
            for (int ir = 0; ir < mc; ir += MR)
            {
                int mr = Math.Min(MR, mc - ir);
                float* ap = packA + ir * kc;
                float* ct = c + (nint)ir * ldc + jr;
                if (mr == MR && nr == NR)
                {
                    if (tile.Wide) Kernel8x32(kc, ap, bp, ct, ldc, alpha, beta);
                    else Kernel6x16(kc, ap, bp, ct, ldc, alpha, beta);
                }
                else
                {
                    if (tile.Wide) EdgeKernel8x32(kc, ap, bp, edge, nr);
                    else EdgeKernel6x16(kc, ap, bp, edge, nr);
                    StoreEdge(edge, NR, ct, ldc, mr, nr, alpha, beta);
                }
            }
        }
    }

    static int RoundUp(int x, int multiple) => (x + multiple - 1) / multiple * multiple;

    /// Packs op(A)[0..mc, 0..kc] into MR-row panels: panel r holds, for each p, MR consecutive values.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void PackA(Tile tile, bool transA, int mc, int kc, float* a, int lda, float* dst)
    {
        int MR = tile.MR;
        int full = mc / MR * MR;
        if (transA)
        {
            // op(A) rows are A columns: source row p holds MR contiguous values for every panel.
            int panels = full / MR;
            if (tile.Wide)
            {
                // Two 8-row panels (16 floats, a cache line) at a time down the rows: each line of A is read once and
                // the panels are written in order. Row by row, each store went to a different panel, 8 KiB apart,
                // and packing cost a fifth of dW.
                int i = 0;
                for (; i + 2 <= panels; i += 2)
                {
                    float* src = a + i * 8, d0 = dst + i * 8 * kc, d1 = d0 + 8 * kc;
                    for (int p = 0; p < kc; p++, src += lda)
                    {
                        Avx.Store(d0 + p * 8, Avx.LoadVector256(src));
                        Avx.Store(d1 + p * 8, Avx.LoadVector256(src + 8));
                    }
                }
                if (i < panels)
                {
                    float* src = a + i * 8, d0 = dst + i * 8 * kc;
                    for (int p = 0; p < kc; p++, src += lda) Avx.Store(d0 + p * 8, Avx.LoadVector256(src));
                }
            }
            else
            {
                // Row by row, so each cache line of A is read once (panel by panel, a strided walk re-read each line
                // for every 6-float panel in it).
                for (int p = 0; p < kc; p++)
                {
                    float* src = a + (nint)p * lda, d = dst + p * MR;
                    for (int i = 0; i < panels; i++, src += MR, d += MR * kc)
                    {
                        Sse.Store(d, Sse.LoadVector128(src));
                        Sse.StoreLow(d + 4, Sse.LoadLow(Vector128<float>.Zero, src + 4));
                    }
                }
            }
            if (full < mc) CopyPadded(a + full, lda, kc, mc - full, MR, dst + full * kc);
            return;
        }
        for (int ir = 0; ir < full; ir += MR, dst += MR * kc)
        {
            float* r0 = a + (nint)ir * lda;
            if (tile.Wide) PackRows8(r0, lda, kc, dst);
            else PackRows6(r0, lda, kc, dst);
        }
        if (full < mc)
        {
            int mr = mc - full;
            for (int p = 0; p < kc; p++)
            {
                float* d = dst + p * MR;
                int i = 0;
                for (; i < mr; i++) d[i] = a[(nint)(full + i) * lda + p];
                for (; i < MR; i++) d[i] = 0;
            }
        }
    }

    /// dst[p * 8 + i] = row i of the 8 rows at r0 (stride lda), column p: 8x8 transposes, scalar for the ragged rest.
    static void PackRows8(float* r0, int lda, int kc, float* dst)
    {
        int p = 0;
        for (; p + 8 <= kc; p += 8) Transpose8x8(r0 + p, lda, dst + p * 8, 8);
        for (; p < kc; p++)
            for (int i = 0; i < 8; i++) dst[p * 8 + i] = r0[(nint)i * lda + p];
    }

    /// dst[p * 6 + i] = row i of the 6 rows at r0 (stride lda), column p.
    static void PackRows6(float* r0, int lda, int kc, float* dst)
    {
        float* r1 = r0 + lda, r2 = r1 + lda, r3 = r2 + lda, r4 = r3 + lda, r5 = r4 + lda;
        float* d = dst;
        int p = 0;
        // Transpose 6 rows x 4 columns at a time with 128-bit unpacks.
        for (; p + 4 <= kc; p += 4, d += 4 * 6)
        {
            Vector128<float> x0 = Sse.LoadVector128(r0 + p), x1 = Sse.LoadVector128(r1 + p);
            Vector128<float> x2 = Sse.LoadVector128(r2 + p), x3 = Sse.LoadVector128(r3 + p);
            Vector128<float> x4 = Sse.LoadVector128(r4 + p), x5 = Sse.LoadVector128(r5 + p);
            Vector128<float> t0 = Sse.UnpackLow(x0, x1), t1 = Sse.UnpackHigh(x0, x1);   // a0b0a1b1, a2b2a3b3
            Vector128<float> t2 = Sse.UnpackLow(x2, x3), t3 = Sse.UnpackHigh(x2, x3);   // c0d0c1d1, c2d2c3d3
            Vector128<float> t4 = Sse.UnpackLow(x4, x5), t5 = Sse.UnpackHigh(x4, x5);   // e0f0e1f1, e2f2e3f3
            // Column p: a0 b0 c0 d0 | e0 f0, column p+1: a1 b1 c1 d1 | e1 f1, ...
            Sse.Store(d + 0, Sse.MoveLowToHigh(t0, t2));
            Sse.StoreLow(d + 4, t4);
            Sse.Store(d + 6, Sse.MoveHighToLow(t2, t0));
            Sse.StoreHigh(d + 10, t4);
            Sse.Store(d + 12, Sse.MoveLowToHigh(t1, t3));
            Sse.StoreLow(d + 16, t5);
            Sse.Store(d + 18, Sse.MoveHighToLow(t3, t1));
            Sse.StoreHigh(d + 22, t5);
        }
        for (; p < kc; p++, d += 6)
        {
            d[0] = r0[p]; d[1] = r1[p]; d[2] = r2[p]; d[3] = r3[p]; d[4] = r4[p]; d[5] = r5[p];
        }
    }

    /// Packs op(B)[0..kc, 0..nc] into NR-column panels: panel j holds, for each p, NR consecutive values.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void PackB(Tile tile, bool transB, int kc, int nc, float* b, int ldb, float* dst)
    {
        int NR = tile.NR;
        for (int jr = 0; jr < nc; jr += NR, dst += NR * kc)
        {
            int nr = Math.Min(NR, nc - jr);
            if (!transB)
            {
                float* src = b + jr;
                if (nr == NR)
                {
                    for (int p = 0; p < kc; p++, src += ldb)
                        for (int j = 0; j < NR; j += 8) Avx.Store(dst + p * NR + j, Avx.LoadVector256(src + j));
                }
                else CopyPadded(src, ldb, kc, nr, NR, dst);
            }
            else
            {
                // op(B) columns are B rows: transpose 8x8 blocks with AVX; scalar for the ragged rest.
                float* src = b + (nint)jr * ldb;
                int p = 0;
                if (nr == NR)
                {
                    for (; p + 8 <= kc; p += 8)
                        for (int j = 0; j < NR; j += 8)
                            Transpose8x8(src + (nint)j * ldb + p, ldb, dst + p * NR + j, NR);
                }
                for (; p < kc; p++)
                {
                    float* d = dst + p * NR;
                    int j = 0;
                    for (; j < nr; j++) d[j] = src[(nint)j * ldb + p];
                    for (; j < NR; j++) d[j] = 0;
                }
            }
        }
    }

    /// <summary>dst[r, c] = src[c, r] for an 8x8 block (AVX), rows lds / ldd floats apart.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Transpose8x8(float* src, int lds, float* dst, int ldd)
    {
        Vector256<float> r0 = Avx.LoadVector256(src), r1 = Avx.LoadVector256(src + lds);
        Vector256<float> r2 = Avx.LoadVector256(src + 2 * (nint)lds), r3 = Avx.LoadVector256(src + 3 * (nint)lds);
        Vector256<float> r4 = Avx.LoadVector256(src + 4 * (nint)lds), r5 = Avx.LoadVector256(src + 5 * (nint)lds);
        Vector256<float> r6 = Avx.LoadVector256(src + 6 * (nint)lds), r7 = Avx.LoadVector256(src + 7 * (nint)lds);

        Vector256<float> t0 = Avx.UnpackLow(r0, r1), t1 = Avx.UnpackHigh(r0, r1);
        Vector256<float> t2 = Avx.UnpackLow(r2, r3), t3 = Avx.UnpackHigh(r2, r3);
        Vector256<float> t4 = Avx.UnpackLow(r4, r5), t5 = Avx.UnpackHigh(r4, r5);
        Vector256<float> t6 = Avx.UnpackLow(r6, r7), t7 = Avx.UnpackHigh(r6, r7);

        Vector256<float> s0 = Avx.Shuffle(t0, t2, 0x44), s1 = Avx.Shuffle(t0, t2, 0xEE);
        Vector256<float> s2 = Avx.Shuffle(t1, t3, 0x44), s3 = Avx.Shuffle(t1, t3, 0xEE);
        Vector256<float> s4 = Avx.Shuffle(t4, t6, 0x44), s5 = Avx.Shuffle(t4, t6, 0xEE);
        Vector256<float> s6 = Avx.Shuffle(t5, t7, 0x44), s7 = Avx.Shuffle(t5, t7, 0xEE);

        Avx.Store(dst, Avx.Permute2x128(s0, s4, 0x20));
        Avx.Store(dst + ldd, Avx.Permute2x128(s1, s5, 0x20));
        Avx.Store(dst + 2 * ldd, Avx.Permute2x128(s2, s6, 0x20));
        Avx.Store(dst + 3 * ldd, Avx.Permute2x128(s3, s7, 0x20));
        Avx.Store(dst + 4 * ldd, Avx.Permute2x128(s0, s4, 0x31));
        Avx.Store(dst + 5 * ldd, Avx.Permute2x128(s1, s5, 0x31));
        Avx.Store(dst + 6 * ldd, Avx.Permute2x128(s2, s6, 0x31));
        Avx.Store(dst + 7 * ldd, Avx.Permute2x128(s3, s7, 0x31));
    }

    /// C = alpha * tile + beta * C on the mr x nr corner of C a ragged tile covers (tile: MR x NR scratch, row stride ldt).
    /// The same fused operations as the full kernels' stores, so no element depends on which tile it fell in.
    static void StoreEdge(float* tile, int ldt, float* c, int ldc, int mr, int nr, float alpha, float beta)
    {
        for (int i = 0; i < mr; i++, c += ldc, tile += ldt)
            for (int j = 0; j < nr; j++)
                c[j] = beta == 0 ? alpha * tile[j] : MathF.FusedMultiplyAdd(tile[j], alpha, beta * c[j]);
    }

    // ---------------------------------------------------------------- portable path

    /// Vector&lt;T&gt; loops without packing: row axpys when B rows are contiguous, dot products otherwise.
    /// Both are blocked so that the slice of B being reused (~256 KiB) stays in L2 while every row of C passes over it.
    static void Portable(bool transA, bool transB, int m, int n, int k, float alpha,
        float* a, int lda, float* b, int ldb, float beta, float* c, int ldc)
    {
        const int BlockFloats = 64 * 1024;
        ScaleC(m, n, beta, c, ldc);
        if (!transB)
        {
            int nb = Math.Min(n, 512), kb = Math.Max(1, BlockFloats / nb);
            for (int j0 = 0; j0 < n; j0 += nb)
                for (int p0 = 0; p0 < k; p0 += kb)
                {
                    int nj = Math.Min(nb, n - j0), pEnd = Math.Min(k, p0 + kb);
                    for (int i = 0; i < m; i++)
                    {
                        float* crow = c + (nint)i * ldc + j0;
                        for (int p = p0; p < pEnd; p++)
                        {
                            float s = alpha * (transA ? a[(nint)p * lda + i] : a[(nint)i * lda + p]);
                            Axpy(s, b + (nint)p * ldb + j0, crow, nj);
                        }
                    }
                }
            return;
        }

        float* column = transA ? Scratch.Current.A((nuint)k) : null;
        int jb = Math.Max(1, BlockFloats / k);
        for (int j0 = 0; j0 < n; j0 += jb)
        {
            int jEnd = Math.Min(n, j0 + jb);
            for (int i = 0; i < m; i++)
            {
                float* arow = a + (nint)i * lda;
                if (transA)
                {
                    for (int p = 0; p < k; p++) column[p] = a[(nint)p * lda + i];
                    arow = column;
                }
                float* crow = c + (nint)i * ldc;
                for (int j = j0; j < jEnd; j++) crow[j] += alpha * Dot(arow, b + (nint)j * ldb, k);
            }
        }
    }

    static void Axpy(float s, float* x, float* y, int n)
    {
        int j = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var vs = new Vector<float>(s);
            for (; j + Vector<float>.Count <= n; j += Vector<float>.Count)
                Vector.Store(Vector.Load(y + j) + vs * Vector.Load(x + j), y + j);
        }
        for (; j < n; j++) y[j] += s * x[j];
    }

    static float Dot(float* x, float* y, int n)
    {
        int j = 0;
        float sum = 0;
        if (Vector.IsHardwareAccelerated)
        {
            // Two accumulators hide part of the add latency.
            int w = Vector<float>.Count;
            Vector<float> acc0 = Vector<float>.Zero, acc1 = Vector<float>.Zero;
            for (; j + 2 * w <= n; j += 2 * w)
            {
                acc0 += Vector.Load(x + j) * Vector.Load(y + j);
                acc1 += Vector.Load(x + j + w) * Vector.Load(y + j + w);
            }
            for (; j + w <= n; j += w)
                acc0 += Vector.Load(x + j) * Vector.Load(y + j);
            sum = Vector.Sum(acc0 + acc1);
        }
        for (; j < n; j++) sum += x[j] * y[j];
        return sum;
    }

    // ---------------------------------------------------------------- scratch

    /// Per-thread packing buffers, grown on demand and reused across calls; freed when the thread dies.
    sealed class Scratch
    {
        [ThreadStatic] static Scratch? current;
        public static Scratch Current => current ??= new Scratch();

        float* a, b;
        nuint capA, capB;

        public float* A(nuint floats) => Ensure(ref a, ref capA, floats);
        public float* B(nuint floats) => Ensure(ref b, ref capB, floats);

        static float* Ensure(ref float* buffer, ref nuint capacity, nuint floats)
        {
            if (floats > capacity)
            {
                NativeMemory.AlignedFree(buffer);
                buffer = null;
                buffer = (float*)NativeMemory.AlignedAlloc(floats * sizeof(float), 64);
                capacity = floats;
            }
            return buffer;
        }

        ~Scratch()
        {
            NativeMemory.AlignedFree(a);
            NativeMemory.AlignedFree(b);
        }
    }
}
