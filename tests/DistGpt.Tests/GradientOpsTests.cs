using DistGpt.Model.Training;
using Xunit;

namespace DistGpt.Tests;

[Collection(nameof(GemmTests))] // sets Compute.Threads
public sealed class GradientOpsTests
{
    [Fact]
    public void AllFiniteFindsANonFiniteValueAtEveryPositionOfEveryLength()
    {
        float[] extremes = [float.MaxValue, -float.MaxValue, float.Epsilon, -0f, 1e-40f, 3.5f];
        foreach (int length in Enumerable.Range(0, 41).Append(1000).Append(1 << 16))
        {
            var values = Enumerable.Range(0, length).Select(i => extremes[i % extremes.Length]).ToArray();
            Assert.True(GradientOps.AllFinite(values), $"length {length}: all finite");
            foreach (float bad in new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity })
                foreach (int at in length <= 40 ? Enumerable.Range(0, length) : [0, 15, 16, length / 2, length - 1])
                {
                    float saved = values[at];
                    values[at] = bad;
                    Assert.False(GradientOps.AllFinite(values), $"length {length}: {bad} at {at}");
                    values[at] = saved;
                }
        }
    }

    /// <summary>The copy is exact, and a NaN or Inf in any chunk (first, last, either side of a chunk edge) is reported.</summary>
    [Fact]
    public void CopyAllFiniteCopiesExactlyAndFindsANonFiniteValueInAnyChunk()
    {
        const int chunk = 1 << 15;
        foreach (int length in new[] { 0, 1, 17, chunk - 1, chunk, 3 * chunk + 5 })
        {
            var rng = new Random(length);
            var source = Enumerable.Range(0, length).Select(_ => (float)(rng.NextDouble() * 2e30 - 1e30)).ToArray();
            var destination = new float[length];
            Assert.True(GradientOps.CopyAllFinite(source, destination), $"length {length}: all finite");
            Assert.Equal(source, destination);
            foreach (float bad in new[] { float.NaN, float.NegativeInfinity })
                foreach (int at in new[] { 0, chunk - 1, chunk, length - 1 }.Where(i => i >= 0 && i < length).Distinct())
                {
                    float saved = source[at];
                    source[at] = bad;
                    Assert.False(GradientOps.CopyAllFinite(source, destination), $"length {length}: {bad} at {at}");
                    Assert.Equal(BitConverter.SingleToInt32Bits(bad), BitConverter.SingleToInt32Bits(destination[at]));
                    source[at] = saved;
                }
        }
        Assert.Throws<ArgumentException>(() => GradientOps.CopyAllFinite(new float[3], new float[2]));
    }
    /// <summary>The fused pass gives SumInOrder's sum and Norm's norm bit for bit, whatever the number of cores, and says
    /// when the sum is not finite: a NaN or an infinity in any addend, in any chunk, or an addition that overflowed.</summary>
    [Fact]
    public void SumInOrderWithNormMatchesTheSumAndNormPassesAndFlagsNonFiniteSums()
    {
        int saved = DistGpt.Model.Compute.Threads;
        try
        {
            foreach (long length in new long[] { 1, 1000, (1 << 16) - 1, 1 << 16, 3 * (1 << 16) + 12345 })
            {
                var rng = new Random((int)length);
                var addends = Enumerable.Range(0, 3).Select(_ => Buffer(length, _ => (float)(rng.NextDouble() * 2 - 1) * 1e3f)).ToList();
                using var expected = new DistGpt.Model.Engine.NativeBuffer(length);
                GradientOps.SumInOrder(expected, addends, 3);
                double expectedNorm = GradientOps.Norm(expected);
                foreach (int threads in new[] { 1, 2, 3 })
                {
                    DistGpt.Model.Compute.Threads = threads;
                    using var sum = new DistGpt.Model.Engine.NativeBuffer(length);
                    Assert.True(GradientOps.SumInOrderWithNorm(sum, addends, 3, out double norm), $"length {length}");
                    Assert.Equal(expected.Span.ToArray(), sum.Span.ToArray());
                    Assert.Equal(BitConverter.DoubleToInt64Bits(expectedNorm), BitConverter.DoubleToInt64Bits(norm));
                }
                foreach (float bad in new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity })
                    foreach (long at in new[] { 0, length / 2, length - 1 })
                    {
                        float kept = addends[1].Span[(int)at];
                        addends[1].Span[(int)at] = bad;
                        using var sum = new DistGpt.Model.Engine.NativeBuffer(length);
                        Assert.False(GradientOps.SumInOrderWithNorm(sum, addends, 3, out _), $"length {length}: {bad} at {at}");
                        addends[1].Span[(int)at] = kept;
                    }
                foreach (var a in addends) a.Dispose();
            }
            using var big = Buffer(100, _ => float.MaxValue);
            using var overflow = new DistGpt.Model.Engine.NativeBuffer(100);
            Assert.False(GradientOps.SumInOrderWithNorm(overflow, [big, big], 2, out _), "MaxValue + MaxValue overflows");
        }
        finally { DistGpt.Model.Compute.Threads = saved; }
    }

    static DistGpt.Model.Engine.NativeBuffer Buffer(long length, Func<long, float> value)
    {
        var b = new DistGpt.Model.Engine.NativeBuffer(length);
        for (long i = 0; i < length; i++) b.Span[(int)i] = value(i);
        return b;
    }
}
