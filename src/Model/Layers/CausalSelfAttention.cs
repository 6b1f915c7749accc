using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using DistGpt.Model.Engine;
using Tensor = DistGpt.Model.Engine.Tensor;

namespace DistGpt.Model.Layers;

/// <summary>Causal multi-head attention on the packed projection qkv (B, T, 3C) -> y (B, T, C):
/// per (batch, head): S = Q K^T / sqrt(hs), causal mask, P = softmax(S), optional dropout on P, Y = P V.
/// Q, K, V and Y are strided views (no transposes or copies). Parallel over (batch, head).</summary>
public sealed unsafe class CausalSelfAttention : Op
{
    readonly Tensor qkv, y;
    readonly int batch, time, heads, hs, c;
    readonly float dropout;
    readonly int site;
    readonly float* probs;        // (B, nh, T, T) softmax output, zero above the diagonal
    readonly float* droppedProbs; // same shape, after dropout (null when dropout == 0)

    [ThreadStatic] static float* scratch;
    [ThreadStatic] static long scratchLength;

    public CausalSelfAttention(Graph g, Tensor qkv, Tensor y, int batch, int time, int heads, float dropout, int site)
    {
        (this.qkv, this.y, this.batch, this.time, this.heads, this.dropout, this.site) = (qkv, y, batch, time, heads, dropout, site);
        c = y.LastDim;
        hs = c / heads;
        long n = (long)batch * heads * time * time;
        probs = g.Allocate(n).Pointer;
        droppedProbs = dropout > 0 ? g.Allocate(n).Pointer : null;
    }

    float* P(int b, int h) => probs + ((long)b * heads + h) * time * time;
    float* Pd(int b, int h) => droppedProbs + ((long)b * heads + h) * time * time;

    public override void Forward(StepContext step)
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

    public override void Backward(StepContext step)
    {
        float scale = 1f / MathF.Sqrt(hs);
        bool drop = dropout > 0 && step.Training;
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
            Gemm.Sgemm(true, false, time, hs, time, 1f, weights, time, dyh, c, 1f, dv, 3 * c, parallel: false); // dV += W^T dY
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
            Gemm.Sgemm(false, false, time, hs, time, scale, dp, time, k, 3 * c, 1f, dq, 3 * c, parallel: false); // dQ += dS K
            Gemm.Sgemm(true, false, time, hs, time, scale, dp, time, q, 3 * c, 1f, dk, 3 * c, parallel: false);  // dK += dS^T Q
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
