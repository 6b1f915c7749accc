using DistGpt.Model;
using DistGpt.Model.Layers;
using DistGpt.Model.Training;
using Xunit;

namespace DistGpt.Tests;

/// <summary>Transfers overlapped with the computation, as DDP does. Gradient buckets: the plan covers the gradient buffer
/// exactly, in the order a GPT's backward finishes it, and a bucket handed on during the backward already holds its
/// final sum, bit for bit the whole-buffer result. Weights arriving during the forward: each op waits for the values it
/// reads, the result is the one computed with all weights in place, and a transfer that breaks off stops the forward
/// with its reason.</summary>
[Collection(nameof(GemmTests))] // sets Compute.Threads
public sealed class TransferOverlapTests
{
    static GptConfig Config(float dropout) => new(VocabSize: 65, BlockSize: 16, NLayer: 3, NHead: 2, NEmbd: 32, Dropout: dropout, Bias: true);


    [Theory]
    [InlineData(1)]          // a bucket per tensor
    [InlineData(8_000)]      // about a block each
    [InlineData(1_000_000)]  // everything in one
    public void PlanCoversTheBufferFromItsEndInTheOrderTheBackwardFinishesIt(long capFloats)
    {
        using var model = new Gpt(Config(dropout: 0.1f));
        using var graph = model.Build(2, 16, withGrad: true);
        var plan = GradientBuckets.Plan(model.Parameters, graph.Graph, capFloats);
        long end = model.Parameters.Count;
        var starts = model.Parameters.Slots.Select(s => s.Offset).ToHashSet();
        foreach (var b in plan)
        {
            Assert.Equal(end, b.Offset + b.Count);
            Assert.Contains(b.Offset, starts); // whole tensors only
            Assert.True(b.Count >= capFloats || b.Offset == 0, $"bucket {b.Index} holds {b.Count} values, cap {capFloats}");
            end = b.Offset;
        }
        Assert.Equal(0, end);
        Assert.Equal(Enumerable.Range(0, plan.Count), plan.Select(b => b.Index));
        // Backward runs the tape in reverse, so buckets further down the buffer complete at smaller op indices: the
        // embeddings (wte is also lm_head's weight) only after the Embedding op, the tape's first.
        Assert.True(plan.Zip(plan.Skip(1)).All(p => p.First.CompleteAfterOp >= p.Second.CompleteAfterOp));
        Assert.IsType<Embedding>(graph.Graph.Ops[plan[^1].CompleteAfterOp]);
        if (capFloats == 1) Assert.Equal(model.Parameters.Slots.Count, plan.Count);
        if (capFloats == 1_000_000) Assert.Single(plan);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void BucketsHandedOnDuringTheBackwardHoldTheWholeSumBitForBit(int replicas)
    {
        int saved = Compute.Threads;
        Compute.Threads = Math.Max(2, replicas);
        try
        {
            using var model = new Gpt(Config(dropout: 0.1f));
            model.Initialize(7);
            var data = TestData.Corpus.Train;
            using var plain = new GradientWorker(model, data, seed: 3, sequences: 5, replicas: replicas);
            plain.Compute(step: 4, first: 10);
            var expected = model.Parameters.Grads.Span.ToArray();

            using var streamed = new GradientWorker(model, data, seed: 3, sequences: 5, replicas: replicas);
            var plan = streamed.UseBuckets(capFloats: 6_000);
            Assert.True(plan.Count >= 4, $"{plan.Count} buckets");
            var handed = new List<(int Index, float[] Values)>();
            var embeddings = plan[^1];
            bool embeddingsUnfinishedAtFirstBucket = false;
            streamed.Compute(step: 4, first: 10, bucketReady: b =>
            {
                var grads = model.Parameters.Grads.Span;
                if (b.Index == 0) // the embeddings' gradient (wte's from the Embedding op, the tape's first) is still to come
                    embeddingsUnfinishedAtFirstBucket = !grads.Slice((int)embeddings.Offset, (int)embeddings.Count)
                        .SequenceEqual(expected.AsSpan((int)embeddings.Offset, (int)embeddings.Count));
                lock (handed) handed.Add((b.Index, grads.Slice((int)b.Offset, (int)b.Count).ToArray()));
            });
            Assert.Equal(Enumerable.Range(0, plan.Count), handed.Select(h => h.Index)); // each once, in plan order
            Assert.True(embeddingsUnfinishedAtFirstBucket, "the first bucket was handed on only after the whole backward");
            Assert.Equal(expected, model.Parameters.Grads.Span.ToArray());
            foreach (var (index, values) in handed)
                Assert.Equal(expected.AsSpan((int)plan[index].Offset, (int)plan[index].Count).ToArray(), values);
        }
        finally { Compute.Threads = saved; }
    }


    [Fact]
    public async Task AForwardFedWeightsInPiecesWaitsForEachAndGivesTheSameGradients()
    {
        int saved = Compute.Threads;
        Compute.Threads = 2;
        try
        {
            using var model = new Gpt(Config(dropout: 0f));
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
            await feeder;
            Assert.Equal(whole.LossSum, streamed.LossSum);
            Assert.Equal(expected, model.Parameters.Grads.Span.ToArray());
        }
        finally { Compute.Threads = saved; }
    }

    [Fact]
    public void ATransferThatBreaksOffStopsTheForwardWithItsReason()
    {
        using var model = new Gpt(Config(dropout: 0f));
        model.Initialize(5);
        using var worker = new GradientWorker(model, TestData.Corpus.Train, seed: 9, sequences: 2, replicas: 1);
        var arrival = new WeightsArrival();
        arrival.Advance(10); // not even the token embeddings
        _ = Task.Run(() => { Thread.Sleep(20); arrival.Fail(new IOException("connection reset by peer")); });
        var error = Assert.Throws<IOException>(() => worker.Compute(step: 1, first: 0, weights: arrival));
        Assert.Contains("the weights stopped arriving: connection reset by peer", error.Message);
    }
}
