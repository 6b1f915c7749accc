using DistGpt.Model.Engine;

namespace DistGpt.Model.Layers;

/// <summary>GPT-2's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).</summary>
public sealed unsafe class Gelu(Tensor x, Tensor y) : Op
{
    const float S = 0.7978845608028654f; // sqrt(2/pi)
    const float K = 0.044715f;
    readonly int chunks = RowChunks.Count(x.Length, 4096);

    public override void Forward(StepContext step) => Compute.For(chunks, chunk =>
    {
        var (start, end) = RowChunks.Range(chunk, chunks, x.Length);
        float* xs = x.Data, ys = y.Data;
        for (int i = start; i < end; i++)
        {
            float v = xs[i];
            ys[i] = 0.5f * v * (1f + MathF.Tanh(S * (v + K * v * v * v)));
        }
    });

    public override void Backward(StepContext step) => Compute.For(chunks, chunk =>
    {
        var (start, end) = RowChunks.Range(chunk, chunks, x.Length);
        float* xs = x.Data, dy = y.Grad, dx = x.Grad;
        for (int i = start; i < end; i++)
        {
            float v = xs[i];
            float th = MathF.Tanh(S * (v + K * v * v * v));
            float sech2 = 1f - th * th;
            float local = 0.5f * (1f + th) + 0.5f * v * sech2 * S * (1f + 3f * K * v * v);
            dx[i] += local * dy[i];
        }
    });
}
