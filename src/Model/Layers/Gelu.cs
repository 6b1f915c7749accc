using System.Runtime.Intrinsics;
using DistGpt.Model.Engine;

namespace DistGpt.Model.Layers;

/// <summary>GPT-2's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
/// Vectorised 8 wide with tanh(u) = 1 - 2 / (exp(2u) + 1). As x's only consumer in a training graph, the forward also
/// computes dy/dx and stores it over x (whose values nothing else reads, and whose producer rewrites them every
/// forward), so the backward is one multiply; otherwise the backward recomputes tanh.</summary>
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

    const float S = 0.7978845608028654f; // sqrt(2/pi)
    const float K = 0.044715f;
    readonly int chunks; // several per core: a late core costs less

    static Vector256<float> Tanh(Vector256<float> u) => VectorMath.Tanh(u);

    public override void Forward(StepContext step) => Compute.For(chunks, chunk =>
    {
        var (start, end) = RowChunks.Range(chunk, chunks, x.Length);
        float* xs = x.Data, ys = y.Data;
        int i = start;
        var half = Vector256.Create(0.5f);
        if (derivativeOverInput)
        {
            for (; i + 8 <= end; i += 8)
            {
                var v = Vector256.Load(xs + i);
                var v2 = v * v;
                var th = Tanh(Vector256.Create(S) * (v + Vector256.Create(K) * v2 * v));
                (half * v * (Vector256<float>.One + th)).Store(ys + i);
                Derivative(v, v2, th).Store(xs + i);
            }
            for (; i < end; i++)
            {
                float v = xs[i];
                float th = MathF.Tanh(S * (v + K * v * v * v));
                ys[i] = 0.5f * v * (1f + th);
                xs[i] = Derivative(v, th);
            }
            return;
        }
        for (; i + 8 <= end; i += 8)
        {
            var v = Vector256.Load(xs + i);
            var th = Tanh(Vector256.Create(S) * (v + Vector256.Create(K) * v * v * v));
            (half * v * (Vector256<float>.One + th)).Store(ys + i);
        }
        for (; i < end; i++)
        {
            float v = xs[i];
            ys[i] = 0.5f * v * (1f + MathF.Tanh(S * (v + K * v * v * v)));
        }
    });

    /// dy/dx = 0.5 (1 + th) + 0.5 x (1 - th^2) sqrt(2/pi) (1 + 3 K x^2), with th the forward's tanh.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Derivative(Vector256<float> v, Vector256<float> v2, Vector256<float> th)
    {
        var half = Vector256.Create(0.5f);
        var sech2 = Vector256<float>.One - th * th;
        return half * (Vector256<float>.One + th)
            + half * v * sech2 * Vector256.Create(S) * (Vector256<float>.One + Vector256.Create(3f * K) * v2);
    }

    static float Derivative(float v, float th) => 0.5f * (1f + th) + 0.5f * v * (1f - th * th) * S * (1f + 3f * K * v * v);

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
            var th = Tanh(Vector256.Create(S) * (v + Vector256.Create(K) * v2 * v));
            var d = Derivative(v, v2, th) * Vector256.Load(dy + i);
            (assign ? d : Vector256.Load(dx + i) + d).Store(dx + i);
        }
        for (; i < end; i++)
        {
            float v = xs[i];
            float th = MathF.Tanh(S * (v + K * v * v * v));
            dx[i] = (assign ? 0f : dx[i]) + Derivative(v, th) * dy[i];
        }
    });
}
