using DistGpt.Model;
using DistGpt.Model.Training;
using Xunit;

namespace DistGpt.Tests.Hardening;

/// <summary>A share's gradient sum is a function of its sequences and the replica count the coordinator fixes, not of
/// the cores of the worker computing it (finding 12): otherwise a share recomputed by a worker with another --threads
/// would differ in the last bits.</summary>
[Collection(nameof(GemmTests))] // sets Compute.Threads
public sealed class ShareSumTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void AShareHasTheSameGradientSumOnOneCoreAndOnThree(int replicas)
    {
        int saved = Compute.Threads;
        try
        {
            float[] SumOn(int threads)
            {
                Compute.Threads = threads;
                using var model = new Gpt(new GptConfig(TestData.Corpus.Tokenizer.VocabSize, 32, 2, 2, 32, 0.1f, false));
                model.Initialize(11);
                using var worker = new GradientWorker(model, TestData.Corpus.Train, seed: 5, sequences: 6, replicas: replicas);
                worker.Compute(step: 3, first: 6);
                return model.Parameters.Grads.Span.ToArray();
            }
            Assert.Equal(SumOn(1), SumOn(3));
        }
        finally { Compute.Threads = saved; }
    }
}
