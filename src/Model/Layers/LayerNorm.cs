using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
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

    public override IEnumerable<Tensor> Parameters => bias == null ? [weight] : [weight, bias];

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
        float* w = weight.Data, bs = bias == null ? null : bias.Data;
        int full = c & ~7;
        for (int r = start; r < end; r++)
        {
            float* xr = x.Data + (long)r * c, yr = y.Data + (long)r * c;
            var acc = Vector256<float>.Zero;
            int i = 0;
            for (; i < full; i += 8) acc += Vector256.Load(xr + i);
            float sum = Vector256.Sum(acc);
            for (; i < c; i++) sum += xr[i];
            float m = sum / c;
            var vm = Vector256.Create(m);
            acc = Vector256<float>.Zero;
            for (i = 0; i < full; i += 8)
            {
                var d = Vector256.Load(xr + i) - vm;
                acc = Vector256.FusedMultiplyAdd(d, d, acc);
            }
            float sq = Vector256.Sum(acc);
            for (; i < c; i++) sq += (xr[i] - m) * (xr[i] - m);
            float s = 1f / MathF.Sqrt(sq / c + Eps);
            mean[r] = m;
            rstd[r] = s;
            var vs = Vector256.Create(s);
            for (i = 0; i < full; i += 8)
            {
                var n = (Vector256.Load(xr + i) - vm) * vs;
                var o = bs != null ? Vector256.FusedMultiplyAdd(n, Vector256.Load(w + i), Vector256.Load(bs + i)) : n * Vector256.Load(w + i);
                o.Store(yr + i);
            }
            for (; i < c; i++) yr[i] = (xr[i] - m) * s * w[i] + (bs != null ? bs[i] : 0f);
        }
    });

    public override void Backward(StepContext step)
    {
        Compute.For(chunks, chunk =>
        {
            var (start, end) = RowChunks.Range(chunk, chunks, rows);
            float* dw = partialDw + (long)chunk * c, db = partialDb + (long)chunk * c, w = weight.Data;
            new Span<float>(dw, c).Clear();
            new Span<float>(db, c).Clear();
            int full = c & ~7;
            for (int r = start; r < end; r++)
            {
                float* xr = x.Data + (long)r * c, dy = y.Grad + (long)r * c, dx = x.Grad + (long)r * c;
                float m = mean[r], s = rstd[r];
                var vm = Vector256.Create(m);
                var vs = Vector256.Create(s);
                // pass 1: sums of dnorm = dy * w and dnorm * norm; dw += dy * norm, db += dy
                Vector256<float> aD = Vector256<float>.Zero, aDN = Vector256<float>.Zero;
                int i = 0;
                for (; i < full; i += 8)
                {
                    var n = (Vector256.Load(xr + i) - vm) * vs;
                    var g = Vector256.Load(dy + i);
                    var dn = g * Vector256.Load(w + i);
                    aD += dn;
                    aDN = Vector256.FusedMultiplyAdd(dn, n, aDN);
                    Vector256.FusedMultiplyAdd(g, n, Vector256.Load(dw + i)).Store(dw + i);
                    (Vector256.Load(db + i) + g).Store(db + i);
                }
                float sD = Vector256.Sum(aD), sDN = Vector256.Sum(aDN);
                for (; i < c; i++)
                {
                    float n = (xr[i] - m) * s, dn = dy[i] * w[i];
                    sD += dn;
                    sDN += dn * n;
                    dw[i] += dy[i] * n;
                    db[i] += dy[i];
                }
                float meanD = sD / c, meanDN = sDN / c;
                // pass 2: dx += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
                var vmd = Vector256.Create(meanD);
                var vmdn = Vector256.Create(meanDN);
                for (i = 0; i < full; i += 8)
                {
                    var n = (Vector256.Load(xr + i) - vm) * vs;
                    var dn = Vector256.Load(dy + i) * Vector256.Load(w + i);
                    Vector256.FusedMultiplyAdd(vs, dn - vmd - n * vmdn, Vector256.Load(dx + i)).Store(dx + i);
                }
                for (; i < c; i++)
                {
                    float n = (xr[i] - m) * s, dn = dy[i] * w[i];
                    dx[i] += s * (dn - meanD - n * meanDN);
                }
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
