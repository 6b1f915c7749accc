using DistGpt.Model;
using DistGpt.Model.Training;
using Xunit;

namespace DistGpt.Tests;

/// <summary>The forward started while the weights are still arriving: each op waits for the values it reads, the result
/// is the one computed with all weights in place, and a transfer that breaks off stops the forward with its reason.</summary>
[Collection(nameof(GemmTests))] // sets Compute.Threads
public sealed class WeightsArrivalTests
{
    static readonly GptConfig Config = new(VocabSize: 65, BlockSize: 16, NLayer: 3, NHead: 2, NEmbd: 32, Dropout: 0f, Bias: true);

    [Fact]
    public void AForwardFedWeightsInPiecesWaitsForEachAndGivesTheSameGradients()
    {
        int saved = Compute.Threads;
        Compute.Threads = 2;
        try
        {
            using var model = new Gpt(Config);
            model.Initialize(5);
            var weights = model.Parameters.Values.Span.ToArray();
            using var worker = new GradientWorker(model, TestData.Corpus.Train, seed: 9, sequences: 4);
            var whole = worker.Compute(step: 2, first: 0);
            var expected = model.Parameters.Grads.Span.ToArray();

            // Scramble the weights, then let them "arrive" a tenth at a time from another thread.
            model.Parameters.Values.Span.Fill(float.NaN);
            var arrival = new WeightsArrival();
            long total = model.Parameters.Count, landed = 0;
            var feeder = Task.Run(() =>
            {
                for (int part = 1; part <= 10; part++)
                {
                    Thread.Sleep(5);
                    long end = total * part / 10;
                    weights.AsSpan((int)landed, (int)(end - landed)).CopyTo(model.Parameters.Values.Span.Slice((int)landed));
                    Interlocked.Exchange(ref landed, end);
                    arrival.Advance(end);
                }
            });
            var streamed = worker.Compute(step: 2, first: 0, weights: arrival);
            feeder.Wait();
            Assert.Equal(whole.LossSum, streamed.LossSum);
            Assert.Equal(expected, model.Parameters.Grads.Span.ToArray());
        }
        finally { Compute.Threads = saved; }
    }

    [Fact]
    public void ATransferThatBreaksOffStopsTheForwardWithItsReason()
    {
        using var model = new Gpt(Config);
        model.Initialize(5);
        using var worker = new GradientWorker(model, TestData.Corpus.Train, seed: 9, sequences: 2, replicas: 1);
        var arrival = new WeightsArrival();
        arrival.Advance(10); // not even the token embeddings
        _ = Task.Run(() => { Thread.Sleep(20); arrival.Fail(new IOException("connection reset by peer")); });
        var error = Assert.Throws<IOException>(() => worker.Compute(step: 1, first: 0, weights: arrival));
        Assert.Contains("the weights stopped arriving: connection reset by peer", error.Message);
    }
}
