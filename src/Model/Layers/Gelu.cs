using System.Runtime.Intrinsics;
using DistGpt.Model.Engine;

namespace DistGpt.Model.Layers;

/// <summary>GPT-2's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
/// Vectorised 8 wide with tanh(u) = 1 - 2 / (exp(2u) + 1); the backward recomputes tanh rather than storing it.</summary>
public sealed unsafe class Gelu : Op
{
    readonly Tensor x, y;
    readonly bool assign; // the only consumer of x: dx = ... rather than dx += ...

    public Gelu(Tensor x, Tensor y, bool soleConsumer = false)
    {
        (this.x, this.y, assign) = (x, y, soleConsumer);
        if (soleConsumer) x.GradAssignedByConsumer = true;
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

    public override void Backward(StepContext step) => Compute.For(chunks, chunk =>
    {
        var (start, end) = RowChunks.Range(chunk, chunks, x.Length);
        float* xs = x.Data, dy = y.Grad, dx = x.Grad;
        int i = start;
        var half = Vector256.Create(0.5f);
        for (; i + 8 <= end; i += 8)
        {
            var v = Vector256.Load(xs + i);
            var v2 = v * v;
            var th = Tanh(Vector256.Create(S) * (v + Vector256.Create(K) * v2 * v));
            var sech2 = Vector256<float>.One - th * th;
            var local = half * (Vector256<float>.One + th)
                + half * v * sech2 * Vector256.Create(S) * (Vector256<float>.One + Vector256.Create(3f * K) * v2);
            var d = local * Vector256.Load(dy + i);
            (assign ? d : Vector256.Load(dx + i) + d).Store(dx + i);
        }
        for (; i < end; i++)
        {
            float v = xs[i];
            float th = MathF.Tanh(S * (v + K * v * v * v));
            float sech2 = 1f - th * th;
            float local = 0.5f * (1f + th) + 0.5f * v * sech2 * S * (1f + 3f * K * v * v);
            dx[i] = (assign ? 0f : dx[i]) + local * dy[i];
        }
    });
}
