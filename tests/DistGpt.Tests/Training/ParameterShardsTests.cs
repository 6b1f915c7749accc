using DistGpt.Model;
using DistGpt.Model.Engine;
using DistGpt.Model.Training;
using Xunit;

namespace DistGpt.Tests.Training;

/// <summary>Parameter shards (ZeRO-style partitioned optimizer state): each shard sums the shares of its range, gives its
/// chunks' sums of squares for the global norm, and applies AdamW to its range with moments of its own; together they
/// must give the unsharded step's weights and moments bit for bit.</summary>
[Collection(nameof(GemmTests))] // sets Compute.Threads
public sealed class ParameterShardsTests
{
    // Tensors of both kinds (decayed matrices, undecayed vectors) with sizes that put shard cuts inside tensors.
    static readonly (string, int[])[] Layout =
    [
        ("wte", [65, 700]), ("ln.weight", [700]), ("attn.weight", [700, 213]), ("attn.bias", [213]),
        ("mlp.weight", [213, 555]), ("mlp.bias", [555]), ("head.weight", [129, 130]),
    ];

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(6)]
    public void ShardedStepsGiveTheUnshardedWeightsAndMomentsBitForBit(int shards)
    {
        int saved = Compute.Threads;
        try
        {
            Compute.Threads = 2;
            using var whole = new FlatParameters(Layout);
            using var sharded = new FlatParameters(Layout);
            var ranges = ParameterShards.Plan(whole.Count, shards);
            var rng = new Random(7);
            for (long i = 0; i < whole.Count; i++) whole.Values.Span[(int)i] = sharded.Values.Span[(int)i] = (float)(rng.NextDouble() - 0.5);
            using var wholeAdam = new AdamW(whole, 0.9f, 0.99f, 0.1f);
            var shardAdams = ranges.Select(r => new AdamW(sharded, 0.9f, 0.99f, 0.1f, range: r)).ToList();
            var shares = Enumerable.Range(0, 3).Select(_ => new NativeBuffer(whole.Count)).ToList();
            try
            {
                for (int step = 1; step <= 4; step++)
                {
                    float magnitude = step == 2 ? 1e4f : 1f; // step 2's norm is far above the clip, the others' not
                    foreach (var share in shares)
                        for (long i = 0; i < share.Length; i++) share.Span[(int)i] = (float)(rng.NextDouble() * 2 - 1) * magnitude;
                    float lr = 1e-3f * step;

                    Assert.True(GradientOps.SumInOrderWithNorm(whole.Grads, shares, shares.Count, out double norm));
                    wholeAdam.Step(lr, GradientOps.MeanClipScale(norm, tokens: 1000, maxNorm: 1f).Scale);

                    var squares = new List<double>();
                    foreach (var r in ranges)
                    {
                        var mine = new double[GradientOps.NormChunks(r.Length)];
                        Assert.True(GradientOps.SumRangeWithSquares(sharded.Grads, shares, shares.Count, r.Offset, r.Length, mine));
                        squares.AddRange(mine);
                    }
                    double shardedNorm = GradientOps.NormOfChunkSquares(squares.ToArray());
                    Assert.Equal(BitConverter.DoubleToInt64Bits(norm), BitConverter.DoubleToInt64Bits(shardedNorm));
                    float scale = GradientOps.MeanClipScale(shardedNorm, tokens: 1000, maxNorm: 1f).Scale;
                    foreach (var adam in shardAdams) adam.Step(lr, scale);

                    Assert.Equal(whole.Values.Span.ToArray(), sharded.Values.Span.ToArray());
                    foreach (var adam in shardAdams)
                    {
                        var r = adam.Range;
                        Assert.Equal(wholeAdam.ExpAvg.Span.Slice((int)r.Offset, (int)r.Length).ToArray(), adam.ExpAvg.Span.ToArray());
                        Assert.Equal(wholeAdam.ExpAvgSq.Span.Slice((int)r.Offset, (int)r.Length).ToArray(), adam.ExpAvgSq.Span.ToArray());
                    }
                }
            }
            finally
            {
                foreach (var s in shares) s.Dispose();
                foreach (var a in shardAdams) a.Dispose();
            }
        }
        finally { Compute.Threads = saved; }
    }

    [Fact]
    public void ThePlanCutsWholeNormChunksEvenlyAndInOrder()
    {
        long count = 13 * (long)GradientOps.NormChunk - 5;
        foreach (int k in new[] { 1, 2, 3, 4, 13 })
        {
            var plan = ParameterShards.Plan(count, k);
            Assert.Equal(k, plan.Count);
            Assert.Equal(0, plan[0].Offset);
            Assert.Equal(count, plan[^1].End);
            for (int i = 0; i < k; i++)
            {
                Assert.Equal(i, plan[i].Index);
                Assert.Equal(0, plan[i].Offset % GradientOps.NormChunk);
                if (i > 0) Assert.Equal(plan[i - 1].End, plan[i].Offset);
                int chunks = GradientOps.NormChunks(plan[i].Length);
                Assert.InRange(chunks, 13 / k, (13 + k - 1) / k);
            }
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => ParameterShards.Plan(count, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => ParameterShards.Plan(count, 14)); // more shards than chunks
        using var buffer = new NativeBuffer(count);
        Assert.Throws<ArgumentException>(() => GradientOps.SumRangeWithSquares(buffer, [buffer], 1, 100, 1000, new double[1])); // not on a chunk
    }
}
