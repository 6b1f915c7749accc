using DistGpt.Model.Training;
using Xunit;

namespace DistGpt.Tests;

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
}
