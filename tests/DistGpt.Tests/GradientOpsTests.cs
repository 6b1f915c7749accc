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
}
