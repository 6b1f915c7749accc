using DistGpt.Model.Engine;

namespace DistGpt.Model.Training;

/// <summary>A contiguous range of the flat gradient buffer, final once the backward pass has run op CompleteAfterOp
/// (and every op after it on the tape).</summary>
public sealed record GradientBucket(int Index, long Offset, long Count, int CompleteAfterOp);

/// <summary>As PyTorch DDP's buckets: the flat gradient buffer cut into ranges that become final one after another during
/// the backward pass, so each can be sent while the rest is still being computed. A GPT's parameters are laid out in
/// forward order (embeddings, block 0..n-1, ln_f) and the backward finishes them in reverse, so the buckets are cut from
/// the end of the buffer and listed in that order: ln_f and the last block first, the embeddings (whose tied wte also
/// takes lm_head's gradient) last.</summary>
public static class GradientBuckets
{
    /// <summary>Buckets of whole parameter tensors, about <paramref name="capFloats"/> each (a tensor larger than the cap
    /// is a bucket of its own), from the end of the buffer to its start. A bucket is final after the backward of the
    /// first op on the tape that writes any of its tensors.</summary>
    public static IReadOnlyList<GradientBucket> Plan(FlatParameters parameters, Graph graph, long capFloats)
    {
        if (capFloats < 1) throw new ArgumentOutOfRangeException(nameof(capFloats), "a bucket holds at least one value");
        var firstWriter = new Dictionary<string, int>();
        for (int i = graph.Ops.Count - 1; i >= 0; i--)
            foreach (var t in graph.Ops[i].Parameters)
                firstWriter[t.Name] = i; // descending, so the last write leaves the smallest index
        var buckets = new List<GradientBucket>();
        long end = parameters.Count, count = 0;
        int complete = int.MaxValue;
        for (int s = parameters.Slots.Count - 1; s >= 0; s--)
        {
            var slot = parameters.Slots[s];
            count += slot.Length;
            complete = Math.Min(complete, firstWriter.GetValueOrDefault(slot.Name, 0)); // an unused tensor: final at the end
            if (count >= capFloats || s == 0)
            {
                buckets.Add(new GradientBucket(buckets.Count, end - count, count, complete));
                (end, count, complete) = (end - count, 0, int.MaxValue);
            }
        }
        return buckets;
    }
}
