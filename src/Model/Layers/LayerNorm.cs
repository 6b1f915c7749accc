using System.Numerics.Tensors;
using DistGpt.Model.Engine;
using Tensor = DistGpt.Model.Engine.Tensor;

namespace DistGpt.Model.Layers;

/// <summary>y = (x - mean) / sqrt(var + 1e-5) * weight + bias, over the last dimension; bias optional.</summary>
public sealed unsafe class LayerNorm : Op
{
    const float Eps = 1e-5f;
    readonly Tensor x, weight, y;
    readonly Tensor? bias;
    readonly float* mean, rstd;
    readonly float* partialDw, partialDb; // one row of weight/bias grads per chunk, summed after the parallel pass
    readonly int rows, c, chunks;

    public LayerNorm(Graph g, Tensor x, Tensor weight, Tensor? bias, Tensor y)
    {
        (this.x, this.weight, this.bias, this.y) = (x, weight, bias, y);
        c = x.LastDim;
        rows = x.Rows;
        mean = g.Allocate(rows).Pointer;
        rstd = g.Allocate(rows).Pointer;
        chunks = RowChunks.Count(rows);
        if (g.WithGrad)
        {
            partialDw = g.Allocate((long)chunks * c).Pointer;
            partialDb = g.Allocate((long)chunks * c).Pointer;
        }
    }

    public override void Forward(StepContext step) => Compute.For(chunks, chunk =>
    {
        var (start, end) = RowChunks.Range(chunk, chunks, rows);
        var w = new ReadOnlySpan<float>(weight.Data, c);
        for (int r = start; r < end; r++)
        {
            var xr = new ReadOnlySpan<float>(x.Data + (long)r * c, c);
            var yr = new Span<float>(y.Data + (long)r * c, c);
            float m = TensorPrimitives.Sum(xr) / c;
            TensorPrimitives.Subtract(xr, m, yr);
            float variance = TensorPrimitives.SumOfSquares(yr) / c;
            float s = 1f / MathF.Sqrt(variance + Eps);
            mean[r] = m;
            rstd[r] = s;
            TensorPrimitives.Multiply(yr, s, yr);
            if (bias != null) TensorPrimitives.FusedMultiplyAdd(yr, w, new ReadOnlySpan<float>(bias.Data, c), yr);
            else TensorPrimitives.Multiply(yr, w, yr);
        }
    });

    public override void Backward(StepContext step)
    {
        Compute.For(chunks, chunk =>
        {
            var (start, end) = RowChunks.Range(chunk, chunks, rows);
            var dw = new Span<float>(partialDw + (long)chunk * c, c);
            var db = new Span<float>(partialDb + (long)chunk * c, c);
            dw.Clear();
            db.Clear();
            var w = new ReadOnlySpan<float>(weight.Data, c);
            Span<float> norm = stackalloc float[c];
            Span<float> dnorm = stackalloc float[c];
            for (int r = start; r < end; r++)
            {
                var xr = new ReadOnlySpan<float>(x.Data + (long)r * c, c);
                var dy = new ReadOnlySpan<float>(y.Grad + (long)r * c, c);
                var dx = new Span<float>(x.Grad + (long)r * c, c);
                TensorPrimitives.Subtract(xr, mean[r], norm);
                TensorPrimitives.Multiply(norm, rstd[r], norm);
                TensorPrimitives.Multiply(dy, w, dnorm);
                float meanD = TensorPrimitives.Sum(dnorm) / c;
                float meanDN = TensorPrimitives.Dot(dnorm, norm) / c;
                // dx += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
                for (int i = 0; i < c; i++) dx[i] += rstd[r] * (dnorm[i] - meanD - norm[i] * meanDN);
                TensorPrimitives.FusedMultiplyAdd(dy, norm, dw, dw);
                TensorPrimitives.Add(db, dy, db);
            }
        });
        var dWeight = new Span<float>(weight.Grad, c);
        for (int chunk = 0; chunk < chunks; chunk++)
        {
            TensorPrimitives.Add(dWeight, new ReadOnlySpan<float>(partialDw + (long)chunk * c, c), dWeight);
            if (bias != null)
            {
                var dBias = new Span<float>(bias.Grad, c);
                TensorPrimitives.Add(dBias, new ReadOnlySpan<float>(partialDb + (long)chunk * c, c), dBias);
            }
        }
    }
}
