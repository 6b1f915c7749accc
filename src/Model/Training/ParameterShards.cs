namespace DistGpt.Model.Training;

/// <summary>One parameter shard's contiguous range of the flat parameter, gradient and moment buffers.</summary>
public sealed record ShardRange(int Index, long Offset, long Length)
{
    public long End => Offset + Length;
}

/// <summary>The flat parameter buffer cut into K contiguous ranges, one per parameter shard (ZeRO's partitioned optimizer
/// state). The cuts fall on the norm's 64K-value chunks, so a shard's chunk sums of squares are <see cref="GradientOps.Norm"/>'s
/// own and the norm added up from every shard's, in chunk order, has its bits; the sum of shares is elementwise and so is
/// AdamW, so a shard that sums and updates its range gives exactly the unsharded values there.</summary>
public static class ParameterShards
{
    /// <summary>K ranges of whole norm chunks, as even as the chunks allow, in buffer order.</summary>
    public static IReadOnlyList<ShardRange> Plan(long count, int shards)
    {
        int chunks = GradientOps.NormChunks(count);
        if (count < 1 || shards < 1 || shards > chunks)
            throw new ArgumentOutOfRangeException(nameof(shards), $"{shards} shards for {count} parameters: between 1 and {chunks} (one per {GradientOps.NormChunk} values)");
        return Enumerable.Range(0, shards).Select(k =>
        {
            long first = (long)chunks * k / shards * GradientOps.NormChunk;
            long end = Math.Min(count, (long)chunks * (k + 1) / shards * GradientOps.NormChunk);
            return new ShardRange(k, first, end - first);
        }).ToList();
    }
}
