using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using DistGpt.Model.Engine;
using Tensor = DistGpt.Model.Engine.Tensor;

namespace DistGpt.Model.Layers;

/// <summary>Causal multi-head attention on the packed projection qkv (B, T, 3C) -> y (B, T, C):
/// per (batch, head): S = Q K^T / sqrt(hs), causal mask, P = softmax(S), optional dropout on P, Y = P V.
/// Q, K, V and Y are strided views (no transposes or copies). Parallel over (batch, head).
/// With <c>soleConsumer</c> this op is qkv's only consumer and assigns its gradient (every element is written once per
/// backward) instead of adding to it, so the graph need not zero it.</summary>
public sealed unsafe class CausalSelfAttention : Op
{
    readonly Tensor qkv, y;
    readonly int batch, time, heads, hs, c;
    readonly float dropout;
    readonly int site;
    readonly bool accumulate; // dqkv += ... (false: dqkv = ..., as qkv's only consumer)
    readonly bool fused;
    readonly float* probs;        // (B, nh, T, T) softmax output, zero above the diagonal up to the row's last whole vector
                                  // (fused path with T % 8 == 0; beyond it, never read, left as it is)
    readonly float* droppedProbs; // same shape, after dropout (null when dropout == 0)

    [ThreadStatic] static float* scratch;
    [ThreadStatic] static long scratchLength;

    /// <param name="fusedMaxTime">overrides <see cref="FusedMaxTime"/> for this op (tests of either path)</param>
    public CausalSelfAttention(Graph g, Tensor qkv, Tensor y, int batch, int time, int heads, float dropout, int site, bool soleConsumer = false,
        int? fusedMaxTime = null)
    {
        fused = time <= (fusedMaxTime ?? FusedMaxTime);
        if (soleConsumer) qkv.GradAssignedByConsumer = true;
        accumulate = !soleConsumer;
        (this.qkv, this.y, this.batch, this.time, this.heads, this.dropout, this.site) = (qkv, y, batch, time, heads, dropout, site);
        c = y.LastDim;
        hs = c / heads;
        long n = (long)batch * heads * time * time;
        probs = g.Allocate(n).Pointer;
        droppedProbs = dropout > 0 ? g.Allocate(n).Pointer : null;
    }

    float* P(int b, int h) => probs + ((long)b * heads + h) * time * time;
    float* Pd(int b, int h) => droppedProbs + ((long)b * heads + h) * time * time;

    /// <summary>Sequences up to this length use the fused kernels (causal triangle only, no packing); longer ones the packed
    /// GEMMs. Read when an op is built; settable so benchmarks can run either path.</summary>
    public static int FusedMaxTime { get; set; } = 128;

    public override void Forward(StepContext step)
    {
        if (fused) ForwardFused(step);
        else ForwardGemm(step);
    }

    public override void Backward(StepContext step)
    {
        if (fused) BackwardFused(step);
        else BackwardGemm(step);
    }

    int PaddedTime => (time + 7) & ~7;

    static int Vectors(int columns) => (columns + 7) >> 3;

    /// Per (b, h), two rows at a time: scores of the causal prefix (rounded up to whole vectors) against K^T (transposed
    /// once into scratch), softmax, dropout (the same stream as the GEMM path: T random draws per row, in row order), then
    /// y_t = sum_j w_tj v_j. When T is a multiple of 8 the scores are computed straight into P's rows.
    void ForwardFused(StepContext step)
    {
        float scale = 1f / MathF.Sqrt(hs);
        bool drop = dropout > 0 && step.Training;
        int tp = PaddedTime;
        bool direct = tp == time;
        bool pairSums = hs % 16 == 0; // rows t and t + 1 of y in one WeightedSumPair
        Compute.For(batch * heads, bh =>
        {
            int b = bh / heads, h = bh % heads;
            if (bh + 1 < batch * heads) Prefetch(bh + 1, backward: false);
            float* q = qkv.Data + (long)b * time * 3 * c + h * hs;
            float* k = q + c, v = q + 2 * c;
            float* p = P(b, h);
            float* kt = Scratch((long)hs * tp + 2 * tp);
            float* srow = kt + (long)hs * tp, srow2 = srow + tp; // two padded score rows (when not direct)
            Transpose(k, 3 * c, time, hs, kt, tp);
            float* weights = drop ? Pd(b, h) : p;
            var rng = drop ? new RandomStream(Rng.Key(step.DropoutKey, (ulong)(step.FirstSequence + b), (ulong)site, (ulong)h)) : default;
            float keepScale = drop ? 1f / (1f - dropout) : 1f;
            float* yh = y.Data + (long)b * time * c + h * hs;
            for (int t = 0; t < time; t += 2)
            {
                bool pair = t + 1 < time;
                float* s0 = direct ? p + (long)t * time : srow, s1 = direct ? p + (long)(t + 1) * time : srow2;
                float* q0 = q + (long)t * 3 * c;
                if (pair) Scores(q0, q0 + 3 * c, kt, tp, hs, Vectors(t + 2), scale, s0, s1);
                else Scores(q0, q0, kt, tp, hs, Vectors(t + 1), scale, s0, s0);
                if (pair) VectorMath.SoftmaxPadded2(s0, t + 1, s1, t + 2);
                else VectorMath.SoftmaxPadded(s0, t + 1);
                for (int u = t; u < t + (pair ? 2 : 1); u++)
                {
                    float* sr = u == t ? s0 : s1, pr = p + (long)u * time;
                    if (!direct) // (direct: the row's lanes past its last whole vector are never read, so never written)
                    {
                        new ReadOnlySpan<float>(sr, u + 1).CopyTo(new Span<float>(pr, u + 1));
                        new Span<float>(pr + u + 1, time - u - 1).Clear();
                    }
                    if (drop)
                    {
                        float* wr = weights + (long)u * time;
                        for (int j = 0; j < time; j++)
                        {
                            bool keep = rng.NextFloat() >= dropout; // T draws per row whatever u: the GEMM path's stream
                            wr[j] = keep && j <= u ? pr[j] * keepScale : 0f;
                        }
                    }
                    if (!(pair && pairSums)) WeightedSum(weights + (long)u * time, 1, u + 1, v, 3 * c, hs, 1f, false, yh + (long)u * c);
                }
                if (pair && pairSums) // y_t, y_t+1 over v_0..v_t, and v_t+1 for y_t+1 alone
                {
                    float* w0 = weights + (long)t * time, w1 = w0 + time;
                    WeightedSumPair(w0, w1, 1, t + 1, v, 3 * c, hs, 1f, false, yh + (long)t * c, yh + (long)(t + 1) * c,
                        null, 0f, v + (long)(t + 1) * 3 * c, w1[t + 1]);
                }
            }
        });
    }

    void BackwardFused(StepContext step)
    {
        float scale = 1f / MathF.Sqrt(hs);
        bool drop = dropout > 0 && step.Training;
        float keepScale = drop ? 1f / (1f - dropout) : 1f;
        int tp = PaddedTime;
        bool direct = tp == time; // P's rows are whole vectors, zero past the diagonal
        bool pairSums = hs % 16 == 0;
        Compute.For(batch * heads, bh =>
        {
            int b = bh / heads, h = bh % heads;
            if (bh + 1 < batch * heads) Prefetch(bh + 1, backward: true);
            long qkvOffset = (long)b * time * 3 * c + h * hs;
            float* q = qkv.Data + qkvOffset, k = q + c, v = q + 2 * c;
            float* dq = qkv.Grad + qkvOffset, dk = dq + c, dv = dq + 2 * c;
            float* dyh = y.Grad + (long)b * time * c + h * hs;
            float* p = P(b, h);
            float* weights = drop ? Pd(b, h) : p;
            float* vt = Scratch((long)hs * tp + (long)time * tp);
            float* ds = vt + (long)hs * tp; // dS, rows padded to tp so the padded score writes never spill
            Transpose(v, 3 * c, time, hs, vt, tp);
            for (int t = 0; t < time; t += 2)
            {
                // dW_t = dy_t V^T on the causal prefix (rows t, t + 1 together), through dropout, then softmax backward:
                // dS = P (dW - <P, dW>)
                bool pair = t + 1 < time;
                float* dy0 = dyh + (long)t * c, dsRow = ds + (long)t * tp;
                if (pair) Scores(dy0, dy0 + c, vt, tp, hs, Vectors(t + 2), 1f, dsRow, dsRow + tp);
                else Scores(dy0, dy0, vt, tp, hs, Vectors(t + 1), 1f, dsRow, dsRow);
                for (int u = t; u < t + (pair ? 2 : 1); u++)
                {
                    float* dr = ds + (long)u * tp, pr = p + (long)u * time;
                    if (drop)
                    {
                        float* wr = weights + (long)u * time;
                        for (int j = 0; j <= u; j++) dr[j] = wr[j] != 0f ? dr[j] * keepScale : 0f;
                    }
                    if (direct) VectorMath.SoftmaxBackwardPadded(pr, dr, u + 1);
                    else VectorMath.SoftmaxBackward(pr, dr, u + 1);
                    if (!(pair && pairSums)) WeightedSum(dr, 1, u + 1, k, 3 * c, hs, scale, accumulate, dq + (long)u * 3 * c);   // dq_u (+)= scale sum_j dS_uj k_j
                }
                if (pair && pairSums) // dq_t, dq_t+1 over k_0..k_t, and k_t+1 for dq_t+1 alone
                    WeightedSumPair(dsRow, dsRow + tp, 1, t + 1, k, 3 * c, hs, scale, accumulate, dq + (long)t * 3 * c, dq + (long)(t + 1) * 3 * c,
                        null, 0f, k + (long)(t + 1) * 3 * c, dsRow[tp + t + 1]);
            }
            int jStart = 0;
            if (pairSums)
            {
                // dv_j, dv_j+1 over dy_j+1..dy_T-1, and dy_j for dv_j alone (likewise dk with dS and q)
                for (; jStart + 2 <= time; jStart += 2)
                {
                    int j = jStart;
                    float* wc = weights + (long)(j + 1) * time + j, dc = ds + (long)(j + 1) * tp + j;
                    WeightedSumPair(wc, wc + 1, time, time - j - 1, dyh + (long)(j + 1) * c, c, hs, 1f, accumulate,
                        dv + (long)j * 3 * c, dv + (long)(j + 1) * 3 * c, dyh + (long)j * c, weights[(long)j * time + j], null, 0f);
                    WeightedSumPair(dc, dc + 1, tp, time - j - 1, q + (long)(j + 1) * 3 * c, 3 * c, hs, scale, accumulate,
                        dk + (long)j * 3 * c, dk + (long)(j + 1) * 3 * c, q + (long)j * 3 * c, ds[(long)j * tp + j], null, 0f);
                }
            }
            for (int j = jStart; j < time; j++)
            {
                WeightedSum(weights + (long)j * time + j, time, time - j, dyh + (long)j * c, c, hs, 1f, accumulate, dv + (long)j * 3 * c);  // dv_j (+)= sum_t w_tj dy_t
                WeightedSum(ds + (long)j * tp + j, tp, time - j, q + (long)j * 3 * c, 3 * c, hs, scale, accumulate, dk + (long)j * 3 * c); // dk_j (+)= scale sum_t dS_tj q_t
            }
        });
    }

    /// Asks for the next (batch, head)'s inputs in L2 while this one computes: its rows of q, k and v (strided, 3C apart,
    /// which the hardware prefetcher does not follow across heads) and, for the backward, its rows of dY and its P, all
    /// written long before (a step's activations outgrow the caches). Measured on the cpu config with cold caches: the
    /// fused kernels ran 1.5-1.7x slower than with their inputs cached.
    void Prefetch(int bh, bool backward)
    {
        if (!Sse.IsSupported) return;
        int b = bh / heads, h = bh % heads;
        float* row = qkv.Data + (long)b * time * 3 * c + h * hs;
        for (int t = 0; t < time; t++, row += 3 * c)
            for (int o = 0; o < hs; o += 16)
            {
                Sse.Prefetch1(row + o);
                Sse.Prefetch1(row + c + o);
                Sse.Prefetch1(row + 2 * c + o);
            }
        if (!backward) return;
        float* dy = y.Grad + (long)b * time * c + h * hs;
        for (int t = 0; t < time; t++, dy += c)
            for (int o = 0; o < hs; o += 16) Sse.Prefetch1(dy + o);
        float* p = P(b, h);
        for (long i = 0; i < (long)time * time; i += 16) Sse.Prefetch1(p + i);
        if (droppedProbs != null)
        {
            float* w = Pd(b, h);
            for (long i = 0; i < (long)time * time; i += 16) Sse.Prefetch1(w + i);
        }
    }

    /// dst (cols x ldd, row-major) = src^T for src (rows x cols, stride lds); columns rows..ldd of dst are zeroed.
    /// 8x8 blocks through registers (Gemm's) when both sizes are multiples of 8.
    static void Transpose(float* src, int lds, int rows, int cols, float* dst, int ldd)
    {
        if (rows % 8 == 0 && cols % 8 == 0 && Avx.IsSupported)
        {
            for (int j = 0; j < rows; j += 8)
                for (int d = 0; d < cols; d += 8)
                    Gemm.Transpose8x8(src + (long)j * lds + d, lds, dst + (long)d * ldd + j, ldd);
        }
        else
        {
            for (int d = 0; d < cols; d++)
            {
                float* dr = dst + (long)d * ldd;
                for (int j = 0; j < rows; j++) dr[j] = src[(long)j * lds + d];
            }
        }
        for (int d = 0; d < cols; d++)
            for (int j = rows; j < ldd; j++) dst[(long)d * ldd + j] = 0f;
    }

    /// dst0[j] = alpha * sum_d a0[d] * bt[d * ldt + j] for j in [0, 8 * vectors), and the same for a1 into dst1 (one row
    /// passes itself twice: a1 = a0, dst1 = dst0). Two rows against the columns of a transposed matrix, 4 vectors per pass
    /// with the B loads shared by both rows, then a tail of 1..3 vectors; bt must have 8 * vectors columns (zero padded).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Scores(float* a0, float* a1, float* bt, int ldt, int depth, int vectors, float alpha, float* dst0, float* dst1)
    {
        var va = Vector256.Create(alpha);
        int j = 0;
        for (; j + 32 <= vectors * 8; j += 32)
        {
            Vector256<float> s0 = default, s1 = default, s2 = default, s3 = default;
            Vector256<float> r0 = default, r1 = default, r2 = default, r3 = default;
            float* col = bt + j;
            for (int d = 0; d < depth; d++, col += ldt)
            {
                var x = Vector256.Create(a0[d]);
                var y = Vector256.Create(a1[d]);
                var b0 = Vector256.Load(col);
                var b1 = Vector256.Load(col + 8);
                var b2 = Vector256.Load(col + 16);
                var b3 = Vector256.Load(col + 24);
                s0 = Vector256.FusedMultiplyAdd(x, b0, s0);
                s1 = Vector256.FusedMultiplyAdd(x, b1, s1);
                s2 = Vector256.FusedMultiplyAdd(x, b2, s2);
                s3 = Vector256.FusedMultiplyAdd(x, b3, s3);
                r0 = Vector256.FusedMultiplyAdd(y, b0, r0);
                r1 = Vector256.FusedMultiplyAdd(y, b1, r1);
                r2 = Vector256.FusedMultiplyAdd(y, b2, r2);
                r3 = Vector256.FusedMultiplyAdd(y, b3, r3);
            }
            (s0 * va).Store(dst0 + j);
            (s1 * va).Store(dst0 + j + 8);
            (s2 * va).Store(dst0 + j + 16);
            (s3 * va).Store(dst0 + j + 24);
            (r0 * va).Store(dst1 + j);
            (r1 * va).Store(dst1 + j + 8);
            (r2 * va).Store(dst1 + j + 16);
            (r3 * va).Store(dst1 + j + 24);
        }
        int rest = vectors - j / 8;
        if (rest > 0) ScoresTail(a0, a1, bt + j, ldt, depth, rest, va, dst0 + j, dst1 + j);
    }

    /// <see cref="Scores"/> on the last 1..3 vectors, with even and odd depths in separate accumulators so that a short
    /// row is not one long chain of dependent multiply-adds.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void ScoresTail(float* a0, float* a1, float* col, int ldt, int depth, int rest, Vector256<float> va, float* dst0, float* dst1)
    {
        Vector256<float> s0 = default, s1 = default, s2 = default, r0 = default, r1 = default, r2 = default; // even depths
        Vector256<float> t0 = default, t1 = default, t2 = default, u0 = default, u1 = default, u2 = default; // odd depths
        for (int d = 0; d < depth; d += 2, col += 2 * (long)ldt)
        {
            bool odd = d + 1 < depth;
            var x = Vector256.Create(a0[d]);
            var y = Vector256.Create(a1[d]);
            var xo = odd ? Vector256.Create(a0[d + 1]) : default;
            var yo = odd ? Vector256.Create(a1[d + 1]) : default;
            float* next = odd ? col + ldt : col; // a last even row pairs with itself, times zero
            var b0 = Vector256.Load(col);
            var c0 = Vector256.Load(next);
            s0 = Vector256.FusedMultiplyAdd(x, b0, s0);
            r0 = Vector256.FusedMultiplyAdd(y, b0, r0);
            t0 = Vector256.FusedMultiplyAdd(xo, c0, t0);
            u0 = Vector256.FusedMultiplyAdd(yo, c0, u0);
            if (rest < 2) continue;
            var b1 = Vector256.Load(col + 8);
            var c1 = Vector256.Load(next + 8);
            s1 = Vector256.FusedMultiplyAdd(x, b1, s1);
            r1 = Vector256.FusedMultiplyAdd(y, b1, r1);
            t1 = Vector256.FusedMultiplyAdd(xo, c1, t1);
            u1 = Vector256.FusedMultiplyAdd(yo, c1, u1);
            if (rest < 3) continue;
            var b2 = Vector256.Load(col + 16);
            var c2 = Vector256.Load(next + 16);
            s2 = Vector256.FusedMultiplyAdd(x, b2, s2);
            r2 = Vector256.FusedMultiplyAdd(y, b2, r2);
            t2 = Vector256.FusedMultiplyAdd(xo, c2, t2);
            u2 = Vector256.FusedMultiplyAdd(yo, c2, u2);
        }
        ((s0 + t0) * va).Store(dst0);
        ((r0 + u0) * va).Store(dst1);
        if (rest < 2) return;
        ((s1 + t1) * va).Store(dst0 + 8);
        ((r1 + u1) * va).Store(dst1 + 8);
        if (rest < 3) return;
        ((s2 + t2) * va).Store(dst0 + 16);
        ((r2 + u2) * va).Store(dst1 + 16);
    }

    /// Two weighted sums over the same count rows, for n a multiple of 16: dst0 (+)= alpha * (sum_i w0[i * ws] rows_i
    /// + extraW0 * extraRow0) and dst1 likewise (an extra row, when not null, is one that only that output sums). Both
    /// outputs share the row loads, and even and odd rows go to separate accumulators: 8 independent FMA chains, where
    /// one short weighted sum is a single chain bound by FMA latency.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void WeightedSumPair(float* w0, float* w1, int ws, int count, float* rows, int rs, int n, float alpha, bool accumulate,
        float* dst0, float* dst1, float* extraRow0, float extraW0, float* extraRow1, float extraW1)
    {
        if (Vector512.IsHardwareAccelerated && n % 32 == 0)
        {
            WeightedSumPair512(w0, w1, ws, count, rows, rs, n, alpha, accumulate, dst0, dst1, extraRow0, extraW0, extraRow1, extraW1);
            return;
        }
        var va = Vector256.Create(alpha);
        for (int d = 0; d < n; d += 16)
        {
            Vector256<float> a0 = default, a1 = default, b0 = default, b1 = default; // output 0: even rows a, odd rows b
            Vector256<float> c0 = default, c1 = default, e0 = default, e1 = default; // output 1: even rows c, odd rows e
            float* r = rows + d;
            int i = 0;
            for (; i + 2 <= count; i += 2, r += 2 * (long)rs)
            {
                var x0 = Vector256.Create(w0[(long)i * ws]);
                var x1 = Vector256.Create(w1[(long)i * ws]);
                var y0 = Vector256.Create(w0[(long)(i + 1) * ws]);
                var y1 = Vector256.Create(w1[(long)(i + 1) * ws]);
                var p0 = Vector256.Load(r);
                var p1 = Vector256.Load(r + 8);
                var q0 = Vector256.Load(r + rs);
                var q1 = Vector256.Load(r + rs + 8);
                a0 = Vector256.FusedMultiplyAdd(x0, p0, a0);
                a1 = Vector256.FusedMultiplyAdd(x0, p1, a1);
                c0 = Vector256.FusedMultiplyAdd(x1, p0, c0);
                c1 = Vector256.FusedMultiplyAdd(x1, p1, c1);
                b0 = Vector256.FusedMultiplyAdd(y0, q0, b0);
                b1 = Vector256.FusedMultiplyAdd(y0, q1, b1);
                e0 = Vector256.FusedMultiplyAdd(y1, q0, e0);
                e1 = Vector256.FusedMultiplyAdd(y1, q1, e1);
            }
            if (i < count)
            {
                var x0 = Vector256.Create(w0[(long)i * ws]);
                var x1 = Vector256.Create(w1[(long)i * ws]);
                var p0 = Vector256.Load(r);
                var p1 = Vector256.Load(r + 8);
                a0 = Vector256.FusedMultiplyAdd(x0, p0, a0);
                a1 = Vector256.FusedMultiplyAdd(x0, p1, a1);
                c0 = Vector256.FusedMultiplyAdd(x1, p0, c0);
                c1 = Vector256.FusedMultiplyAdd(x1, p1, c1);
            }
            if (extraRow0 != null)
            {
                var x = Vector256.Create(extraW0);
                b0 = Vector256.FusedMultiplyAdd(x, Vector256.Load(extraRow0 + d), b0);
                b1 = Vector256.FusedMultiplyAdd(x, Vector256.Load(extraRow0 + d + 8), b1);
            }
            if (extraRow1 != null)
            {
                var x = Vector256.Create(extraW1);
                e0 = Vector256.FusedMultiplyAdd(x, Vector256.Load(extraRow1 + d), e0);
                e1 = Vector256.FusedMultiplyAdd(x, Vector256.Load(extraRow1 + d + 8), e1);
            }
            a0 += b0;
            a1 += b1;
            c0 += e0;
            c1 += e1;
            if (accumulate)
            {
                Vector256.FusedMultiplyAdd(a0, va, Vector256.Load(dst0 + d)).Store(dst0 + d);
                Vector256.FusedMultiplyAdd(a1, va, Vector256.Load(dst0 + d + 8)).Store(dst0 + d + 8);
                Vector256.FusedMultiplyAdd(c0, va, Vector256.Load(dst1 + d)).Store(dst1 + d);
                Vector256.FusedMultiplyAdd(c1, va, Vector256.Load(dst1 + d + 8)).Store(dst1 + d + 8);
            }
            else
            {
                (a0 * va).Store(dst0 + d);
                (a1 * va).Store(dst0 + d + 8);
                (c0 * va).Store(dst1 + d);
                (c1 * va).Store(dst1 + d + 8);
            }
        }
    }

    /// <see cref="WeightedSumPair"/> 32 columns per step in 16-lane registers (n a multiple of 32): lane for lane the same
    /// operations in the same order, so the result is the 8-lane version's bit for bit.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void WeightedSumPair512(float* w0, float* w1, int ws, int count, float* rows, int rs, int n, float alpha, bool accumulate,
        float* dst0, float* dst1, float* extraRow0, float extraW0, float* extraRow1, float extraW1)
    {
        var va = Vector512.Create(alpha);
        for (int d = 0; d < n; d += 32)
        {
            Vector512<float> a0 = default, a1 = default, b0 = default, b1 = default; // output 0: even rows a, odd rows b
            Vector512<float> c0 = default, c1 = default, e0 = default, e1 = default; // output 1: even rows c, odd rows e
            float* r = rows + d;
            int i = 0;
            for (; i + 2 <= count; i += 2, r += 2 * (long)rs)
            {
                var x0 = Vector512.Create(w0[(long)i * ws]);
                var x1 = Vector512.Create(w1[(long)i * ws]);
                var y0 = Vector512.Create(w0[(long)(i + 1) * ws]);
                var y1 = Vector512.Create(w1[(long)(i + 1) * ws]);
                var p0 = Vector512.Load(r);
                var p1 = Vector512.Load(r + 16);
                var q0 = Vector512.Load(r + rs);
                var q1 = Vector512.Load(r + rs + 16);
                a0 = Vector512.FusedMultiplyAdd(x0, p0, a0);
                a1 = Vector512.FusedMultiplyAdd(x0, p1, a1);
                c0 = Vector512.FusedMultiplyAdd(x1, p0, c0);
                c1 = Vector512.FusedMultiplyAdd(x1, p1, c1);
                b0 = Vector512.FusedMultiplyAdd(y0, q0, b0);
                b1 = Vector512.FusedMultiplyAdd(y0, q1, b1);
                e0 = Vector512.FusedMultiplyAdd(y1, q0, e0);
                e1 = Vector512.FusedMultiplyAdd(y1, q1, e1);
            }
            if (i < count)
            {
                var x0 = Vector512.Create(w0[(long)i * ws]);
                var x1 = Vector512.Create(w1[(long)i * ws]);
                var p0 = Vector512.Load(r);
                var p1 = Vector512.Load(r + 16);
                a0 = Vector512.FusedMultiplyAdd(x0, p0, a0);
                a1 = Vector512.FusedMultiplyAdd(x0, p1, a1);
                c0 = Vector512.FusedMultiplyAdd(x1, p0, c0);
                c1 = Vector512.FusedMultiplyAdd(x1, p1, c1);
            }
            if (extraRow0 != null)
            {
                var x = Vector512.Create(extraW0);
                b0 = Vector512.FusedMultiplyAdd(x, Vector512.Load(extraRow0 + d), b0);
                b1 = Vector512.FusedMultiplyAdd(x, Vector512.Load(extraRow0 + d + 16), b1);
            }
            if (extraRow1 != null)
            {
                var x = Vector512.Create(extraW1);
                e0 = Vector512.FusedMultiplyAdd(x, Vector512.Load(extraRow1 + d), e0);
                e1 = Vector512.FusedMultiplyAdd(x, Vector512.Load(extraRow1 + d + 16), e1);
            }
            a0 += b0;
            a1 += b1;
            c0 += e0;
            c1 += e1;
            if (accumulate)
            {
                Vector512.FusedMultiplyAdd(a0, va, Vector512.Load(dst0 + d)).Store(dst0 + d);
                Vector512.FusedMultiplyAdd(a1, va, Vector512.Load(dst0 + d + 16)).Store(dst0 + d + 16);
                Vector512.FusedMultiplyAdd(c0, va, Vector512.Load(dst1 + d)).Store(dst1 + d);
                Vector512.FusedMultiplyAdd(c1, va, Vector512.Load(dst1 + d + 16)).Store(dst1 + d + 16);
            }
            else
            {
                (a0 * va).Store(dst0 + d);
                (a1 * va).Store(dst0 + d + 16);
                (c0 * va).Store(dst1 + d);
                (c1 * va).Store(dst1 + d + 16);
            }
        }
    }

    /// dst[0..n) (+)= alpha * sum_i w[i * ws] * rows[i * rs + 0..n): a weighted sum of count rows, 8 columns per register.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void WeightedSum(float* w, int ws, int count, float* rows, int rs, int n, float alpha, bool accumulate, float* dst)
    {
        int d = 0;
        for (; d + 16 <= n; d += 16)
        {
            Vector256<float> a0 = default, a1 = default, b0 = default, b1 = default;
            float* r = rows + d;
            int i = 0;
            for (; i + 2 <= count; i += 2, r += 2 * (long)rs)
            {
                var x = Vector256.Create(w[(long)i * ws]);
                var y = Vector256.Create(w[(long)(i + 1) * ws]);
                a0 = Vector256.FusedMultiplyAdd(x, Vector256.Load(r), a0);
                a1 = Vector256.FusedMultiplyAdd(x, Vector256.Load(r + 8), a1);
                b0 = Vector256.FusedMultiplyAdd(y, Vector256.Load(r + rs), b0);
                b1 = Vector256.FusedMultiplyAdd(y, Vector256.Load(r + rs + 8), b1);
            }
            if (i < count)
            {
                var x = Vector256.Create(w[(long)i * ws]);
                a0 = Vector256.FusedMultiplyAdd(x, Vector256.Load(r), a0);
                a1 = Vector256.FusedMultiplyAdd(x, Vector256.Load(r + 8), a1);
            }
            a0 += b0;
            a1 += b1;
            var va = Vector256.Create(alpha);
            if (accumulate)
            {
                Vector256.FusedMultiplyAdd(a0, va, Vector256.Load(dst + d)).Store(dst + d);
                Vector256.FusedMultiplyAdd(a1, va, Vector256.Load(dst + d + 8)).Store(dst + d + 8);
            }
            else
            {
                (a0 * va).Store(dst + d);
                (a1 * va).Store(dst + d + 8);
            }
        }
        for (; d + 8 <= n; d += 8)
        {
            Vector256<float> a0 = default, b0 = default;
            float* r = rows + d;
            int i = 0;
            for (; i + 2 <= count; i += 2, r += 2 * (long)rs)
            {
                a0 = Vector256.FusedMultiplyAdd(Vector256.Create(w[(long)i * ws]), Vector256.Load(r), a0);
                b0 = Vector256.FusedMultiplyAdd(Vector256.Create(w[(long)(i + 1) * ws]), Vector256.Load(r + rs), b0);
            }
            if (i < count) a0 = Vector256.FusedMultiplyAdd(Vector256.Create(w[(long)i * ws]), Vector256.Load(r), a0);
            a0 += b0;
            var va = Vector256.Create(alpha);
            if (accumulate) Vector256.FusedMultiplyAdd(a0, va, Vector256.Load(dst + d)).Store(dst + d);
            else (a0 * va).Store(dst + d);
        }
        for (; d < n; d++)
        {
            float sum = 0f;
            for (int i = 0; i < count; i++) sum += w[(long)i * ws] * rows[(long)i * rs + d];
            dst[d] = accumulate ? dst[d] + alpha * sum : alpha * sum;
        }
    }

    void ForwardGemm(StepContext step)
    {
        float scale = 1f / MathF.Sqrt(hs);
        bool drop = dropout > 0 && step.Training;
        Compute.For(batch * heads, bh =>
        {
            int b = bh / heads, h = bh % heads;
            float* q = qkv.Data + (long)b * time * 3 * c + h * hs;
            float* k = q + c, v = q + 2 * c;
            float* p = P(b, h);
            Gemm.Sgemm(false, true, time, time, hs, scale, q, 3 * c, k, 3 * c, 0f, p, time, parallel: false);
            for (int t = 0; t < time; t++)
            {
                var row = new Span<float>(p + (long)t * time, t + 1);
                TensorPrimitives.SoftMax(row, row);
                new Span<float>(p + (long)t * time + t + 1, time - t - 1).Clear();
            }
            float* weights = p;
            if (drop)
            {
                weights = Pd(b, h);
                var rng = new RandomStream(Rng.Key(step.DropoutKey, (ulong)(step.FirstSequence + b), (ulong)site, (ulong)h));
                float keepScale = 1f / (1f - dropout);
                for (long i = 0; i < (long)time * time; i++)
                    weights[i] = rng.NextFloat() >= dropout ? p[i] * keepScale : 0f;
            }
            float* yh = y.Data + (long)b * time * c + h * hs;
            Gemm.Sgemm(false, false, time, hs, time, 1f, weights, time, v, 3 * c, 0f, yh, c, parallel: false);
        });
    }

    void BackwardGemm(StepContext step)
    {
        float scale = 1f / MathF.Sqrt(hs);
        bool drop = dropout > 0 && step.Training;
        float beta = accumulate ? 1f : 0f;
        Compute.For(batch * heads, bh =>
        {
            int b = bh / heads, h = bh % heads;
            long qkvOffset = (long)b * time * 3 * c + h * hs;
            float* q = qkv.Data + qkvOffset, k = q + c, v = q + 2 * c;
            float* dq = qkv.Grad + qkvOffset, dk = dq + c, dv = dq + 2 * c;
            float* dyh = y.Grad + (long)b * time * c + h * hs;
            float* p = P(b, h);
            float* weights = drop ? Pd(b, h) : p;
            float* dp = Scratch((long)time * time);

            Gemm.Sgemm(false, true, time, time, hs, 1f, dyh, c, v, 3 * c, 0f, dp, time, parallel: false);      // dW = dY V^T
            Gemm.Sgemm(true, false, time, hs, time, 1f, weights, time, dyh, c, beta, dv, 3 * c, parallel: false); // dV (+)= W^T dY
            if (drop)
            {
                // The dropped entries are exactly the zeros of W where P > 0; where P == 0 the softmax backward zeroes them anyway.
                float keepScale = 1f / (1f - dropout);
                for (long i = 0; i < (long)time * time; i++) dp[i] = weights[i] != 0f ? dp[i] * keepScale : 0f;
            }
            for (int t = 0; t < time; t++)
            {
                // softmax backward on the causal part of the row: dS = P * (dP - sum(P * dP))
                var pr = new ReadOnlySpan<float>(p + (long)t * time, t + 1);
                var dr = new Span<float>(dp + (long)t * time, t + 1);
                float dot = TensorPrimitives.Dot(pr, dr);
                TensorPrimitives.Subtract(dr, dot, dr);
                TensorPrimitives.Multiply(dr, pr, dr);
                new Span<float>(dp + (long)t * time + t + 1, time - t - 1).Clear();
            }
            Gemm.Sgemm(false, false, time, hs, time, scale, dp, time, k, 3 * c, beta, dq, 3 * c, parallel: false); // dQ (+)= dS K
            Gemm.Sgemm(true, false, time, hs, time, scale, dp, time, q, 3 * c, beta, dk, 3 * c, parallel: false);  // dK (+)= dS^T Q
        });
    }

    static float* Scratch(long length)
    {
        if (scratchLength < length)
        {
            if (scratch != null) NativeMemory.AlignedFree(scratch);
            scratch = (float*)NativeMemory.AlignedAlloc((nuint)length * sizeof(float), 64);
            scratchLength = length;
        }
        return scratch;
    }
}
