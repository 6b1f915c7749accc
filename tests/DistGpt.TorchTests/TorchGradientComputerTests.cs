using DistGpt.Model;
using DistGpt.Model.Training;
using DistGpt.Tests;
using DistGpt.TorchBackend;
using Xunit;

namespace DistGpt.TorchTests;

/// <summary>The torch backend's <see cref="IGradientComputer"/> against the engine's <see cref="GradientWorker"/> on the same
/// weights, the same slice of a step's batch and dropout on: the same sequences, masks and gradient SUM.</summary>
public sealed class TorchGradientComputerTests
{
    [Theory]
    [InlineData(0f)]
    [InlineData(0.2f)]
    public void GivesTheEnginesGradientSumOnTheSameSliceWithTheSameDropout(float dropout)
    {
        var config = new GptConfig(TestData.Corpus.Tokenizer.VocabSize, 16, 2, 2, 32, dropout, true);
        const int sequences = 4, step = 7, first = 3; // a worker's share in the middle of the global batch
        using var engineModel = new Gpt(config);
        engineModel.Initialize(1337);
        using var torchModel = new Gpt(config);
        engineModel.Parameters.Values.Span.CopyTo(torchModel.Parameters.Values.Span);
        Compute.Threads = 1;

        using var engine = EngineBackend.Instance.Create(engineModel, TestData.Corpus.Train, 42, sequences);
        using var torch = new TorchGradientBackend(TestDevice.Name).Create(torchModel, TestData.Corpus.Train, 42, sequences);
        torchModel.Parameters.Grads.Span.Fill(123f); // Compute zeroes them first
        var expected = engine.Compute(step, first);
        var actual = torch.Compute(step, first);

        Assert.Equal(expected.Tokens, actual.Tokens);
        Assert.True(Math.Abs(expected.LossSum - actual.LossSum) <= 1e-5 * Math.Abs(expected.LossSum),
            $"loss sum: engine {expected.LossSum}, torch {actual.LossSum}");
        foreach (var slot in engineModel.Parameters.Slots)
        {
            var e = engineModel.Parameters.GradsOf(slot);
            var a = torchModel.Parameters.GradsOf(slot);
            float scale = 0, worst = 0;
            for (int i = 0; i < e.Length; i++)
            {
                scale = Math.Max(scale, Math.Abs(e[i]));
                worst = Math.Max(worst, Math.Abs(e[i] - a[i]));
            }
            Assert.True(scale > 0, $"{slot.Name}: the engine's gradient is zero");
            Assert.True(worst <= 1e-4 * scale, $"{slot.Name}: max |engine - torch| {worst:E3} (scale {scale:E3})");
        }
    }

    [Fact]
    public void ADifferentStepDrawsDifferentDropoutMasks()
    {
        var config = new GptConfig(TestData.Corpus.Tokenizer.VocabSize, 16, 1, 2, 32, 0.5f, false);
        using var model = new Gpt(config);
        model.Initialize(1);
        Compute.Threads = 1;
        using var torch = new TorchGradientBackend(TestDevice.Name).Create(model, TestData.Corpus.Train, 42, 2);
        // Same sequences (the coordinator's windows) at two steps: only the dropout key differs.
        var windows = Enumerable.Range(0, 2 * 17).Select(i => i % config.VocabSize).ToArray();
        double a = torch.ComputeOnWindows(1, 0, windows).LossSum, b = torch.ComputeOnWindows(2, 0, windows).LossSum;
        double again = torch.ComputeOnWindows(1, 0, windows).LossSum;
        Assert.NotEqual(a, b);
        Assert.Equal(a, again);
    }
}
