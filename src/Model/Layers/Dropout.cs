using DistGpt.Model.Engine;

namespace DistGpt.Model.Layers;

/// <summary>Inverted dropout. Each sequence's mask comes from its own stream keyed by (step key, global sequence
/// index, site), so the masks are the same whichever worker computes the sequence. Identity in eval mode.</summary>
public sealed unsafe class Dropout : Op
{
    readonly Tensor x, y;
    readonly float p;
    readonly int site, batch, perSequence;
    readonly byte* keep;

    public Dropout(Graph g, Tensor x, Tensor y, float p, int site, int batch)
    {
        (this.x, this.y, this.p, this.site, this.batch) = (x, y, p, site, batch);
        perSequence = x.Length / batch;
        keep = (byte*)g.Allocate((x.Length + 3) / 4).Pointer;
    }

    public override void Forward(StepContext step)
    {
        if (!step.Training)
        {
            x.DataSpan.CopyTo(y.DataSpan);
            return;
        }
        float scale = 1f / (1f - p);
        Compute.For(batch, b =>
        {
            var rng = new RandomStream(Rng.Key(step.DropoutKey, (ulong)(step.FirstSequence + b), (ulong)site));
            long o = (long)b * perSequence;
            for (int i = 0; i < perSequence; i++)
            {
                bool k = rng.NextFloat() >= p;
                keep[o + i] = k ? (byte)1 : (byte)0;
                y.Data[o + i] = k ? x.Data[o + i] * scale : 0f;
            }
        });
    }

    public override void Backward(StepContext step)
    {
        if (!step.Training) { System.Numerics.Tensors.TensorPrimitives.Add(x.GradSpan, y.GradSpan, x.GradSpan); return; } // identity in eval mode, as Forward
        float scale = 1f / (1f - p);
        for (long i = 0; i < x.Length; i++)
            if (keep[i] != 0) x.Grad[i] += y.Grad[i] * scale;
    }
}
