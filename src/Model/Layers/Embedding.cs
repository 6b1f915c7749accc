using DistGpt.Model.Engine;
using Tensor = DistGpt.Model.Engine.Tensor;

namespace DistGpt.Model.Layers;

/// <summary>x[b,t,:] = wte[idx[b,t],:] + wpe[t,:]   (B,T) ints -> (B,T,C)</summary>
public sealed unsafe class Embedding(int[] tokens, Tensor wte, Tensor wpe, Tensor output, int batch, int time) : Op
{
    public override IEnumerable<Tensor> Parameters => [wte, wpe];

    public override void Forward(StepContext step)
    {
        int c = wte.LastDim;
        for (int b = 0; b < batch; b++)
            for (int t = 0; t < time; t++)
            {
                int token = tokens[b * time + t];
                var dst = new Span<float>(output.Data + ((long)b * time + t) * c, c);
                System.Numerics.Tensors.TensorPrimitives.Add(
                    new ReadOnlySpan<float>(wte.Data + (long)token * c, c),
                    new ReadOnlySpan<float>(wpe.Data + (long)t * c, c), dst);
            }
    }

    public override void Backward(StepContext step)
    {
        int c = wte.LastDim;
        for (int b = 0; b < batch; b++)
            for (int t = 0; t < time; t++)
            {
                int token = tokens[b * time + t];
                var d = new ReadOnlySpan<float>(output.Grad + ((long)b * time + t) * c, c);
                var dTok = new Span<float>(wte.Grad + (long)token * c, c);
                var dPos = new Span<float>(wpe.Grad + (long)t * c, c);
                System.Numerics.Tensors.TensorPrimitives.Add(dTok, d, dTok);
                System.Numerics.Tensors.TensorPrimitives.Add(dPos, d, dPos);
            }
    }
}
