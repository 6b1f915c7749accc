using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using DistGpt.Model.Engine;

namespace DistGpt.Model.Layers;

/// <summary>GPT-2's tanh approximation: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
/// Evaluated as x a with a = (1 + tanh u) / 2 = e / (e + 1), e = exp(2u) (no cancellation in the negative tail, one
/// exp and one division per 8 lanes); dy/dx = a (1 + r x w) with r = 1 / (e + 1) and w = 2 sqrt(2/pi) (1 + 3 K x^2).
/// As x's only consumer in a training graph, the forward also stores dy/dx over x (whose values nothing else reads,
/// and whose producer rewrites them every forward), so the backward is one multiply; otherwise it recomputes.</summary>
public sealed unsafe class Gelu : Op
{
    readonly Tensor x, y;
    readonly bool assign; // the only consumer of x: dx = ... rather than dx += ...
    readonly bool derivativeOverInput;

    public Gelu(Tensor x, Tensor y, bool soleConsumer = false)
    {
        (this.x, this.y, assign) = (x, y, soleConsumer);
        if (soleConsumer) x.GradAssignedByConsumer = true;
        derivativeOverInput = soleConsumer && x.HasGrad;
        chunks = Math.Max(1, Math.Min(x.Length / 8192, Compute.Threads * 4));
    }

    const float S2 = 2 * 0.7978845608028654f; // 2 sqrt(2/pi)
    const float K = 0.044715f;
    const float MaxExponent = 40f; // e^40 + 1 keeps 1 / (e + 1) a normal float; a and dy/dx are 1 to float precision there
    readonly int chunks; // several per core: a late core costs less

    /// a = e / (e + 1) and r = 1 / (e + 1) for e = exp(2u).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Sigmoid(Vector256<float> v, Vector256<float> v2, out Vector256<float> r)
    {
        var z = Vector256.Min(v * Vector256.FusedMultiplyAdd(Vector256.Create(S2 * K), v2, Vector256.Create(S2)), Vector256.Create(MaxExponent));
        var e = VectorMath.Exp(z);
        r = Vector256<float>.One / (e + Vector256<float>.One);
        return e * r;
    }

    /// dy/dx = a (1 + r x w), w = 2 sqrt(2/pi) (1 + 3 K x^2).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Derivative(Vector256<float> v, Vector256<float> v2, Vector256<float> a, Vector256<float> r)
    {
        var w = Vector256.FusedMultiplyAdd(Vector256.Create(3 * S2 * K), v2, Vector256.Create(S2));
        return a * Vector256.FusedMultiplyAdd(r, v * w, Vector256<float>.One);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Sigmoid(Vector512<float> v, Vector512<float> v2, out Vector512<float> r)
    {
        var z = Vector512.Min(v * Vector512.FusedMultiplyAdd(Vector512.Create(S2 * K), v2, Vector512.Create(S2)), Vector512.Create(MaxExponent));
        var e = VectorMath.Exp(z);
        r = Vector512<float>.One / (e + Vector512<float>.One);
        return e * r;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Derivative(Vector512<float> v, Vector512<float> v2, Vector512<float> a, Vector512<float> r)
    {
        var w = Vector512.FusedMultiplyAdd(Vector512.Create(3 * S2 * K), v2, Vector512.Create(S2));
        return a * Vector512.FusedMultiplyAdd(r, v * w, Vector512<float>.One);
    }

    static float Sigmoid(float v, out float r)
    {
        float e = MathF.Exp(MathF.Min(v * (S2 + S2 * K * v * v), MaxExponent));
        r = 1f / (e + 1f);
        return e * r;
    }

    static float Derivative(float v, float a, float r) => a * (1f + r * v * (S2 + 3 * S2 * K * v * v));

    public override void Forward(StepContext step) => Compute.For(chunks, chunk =>
    {
        var (start, end) = RowChunks.Range(chunk, chunks, x.Length);
        float* xs = x.Data, ys = y.Data;
        int i = start;
        if (derivativeOverInput)
        {
            if (Vector512.IsHardwareAccelerated) // the same formula 16 lanes at a time: GELU is bound by its arithmetic
                for (; i + 16 <= end; i += 16)
                {
                    var v = Vector512.Load(xs + i);
                    var v2 = v * v;
                    var a = Sigmoid(v, v2, out var r);
                    (v * a).Store(ys + i);
                    Derivative(v, v2, a, r).Store(xs + i);
                }
            for (; i + 8 <= end; i += 8)
            {
                var v = Vector256.Load(xs + i);
                var v2 = v * v;
                var a = Sigmoid(v, v2, out var r);
                (v * a).Store(ys + i);
                Derivative(v, v2, a, r).Store(xs + i);
            }
            for (; i < end; i++)
            {
                float v = xs[i], a = Sigmoid(v, out float r);
                ys[i] = v * a;
                xs[i] = Derivative(v, a, r);
            }
            return;
        }
        for (; i + 8 <= end; i += 8)
        {
            var v = Vector256.Load(xs + i);
            (v * Sigmoid(v, v * v, out _)).Store(ys + i);
        }
        for (; i < end; i++) ys[i] = xs[i] * Sigmoid(xs[i], out _);
    });

    public override void Backward(StepContext step) => Compute.For(chunks, chunk =>
    {
        var (start, end) = RowChunks.Range(chunk, chunks, x.Length);
        float* xs = x.Data, dy = y.Grad, dx = x.Grad;
        int i = start;
        if (derivativeOverInput)
        {
            // xs holds dy/dx; assign is set
            for (; i + 8 <= end; i += 8) (Vector256.Load(xs + i) * Vector256.Load(dy + i)).Store(dx + i);
            for (; i < end; i++) dx[i] = xs[i] * dy[i];
            return;
        }
        for (; i + 8 <= end; i += 8)
        {
            var v = Vector256.Load(xs + i);
            var v2 = v * v;
            var a = Sigmoid(v, v2, out var r);
            var d = Derivative(v, v2, a, r) * Vector256.Load(dy + i);
            (assign ? d : Vector256.Load(dx + i) + d).Store(dx + i);
        }
        for (; i < end; i++)
        {
            float v = xs[i], a = Sigmoid(v, out float r);
            dx[i] = (assign ? 0f : dx[i]) + Derivative(v, a, r) * dy[i];
        }
    });
}
