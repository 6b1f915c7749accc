using DistGpt.Model;
using DistGpt.Model.Layers;
using DistGpt.Model.Training;
using Xunit;

namespace DistGpt.Tests;

/// <summary>DDP-style buckets: the plan covers the gradient buffer exactly, in the order a GPT's backward finishes it, and
/// a bucket handed on during the backward already holds its final sum, bit for bit the whole-buffer result.</summary>
[Collection(nameof(GemmTests))] // sets Compute.Threads
public sealed class GradientBucketTests
{
    static readonly GptConfig Config = new(VocabSize: 65, BlockSize: 16, NLayer: 3, NHead: 2, NEmbd: 32, Dropout: 0.1f, Bias: true);

    [Theory]
    [InlineData(1)]          // a bucket per tensor
    [InlineData(8_000)]      // about a block each
    [InlineData(1_000_000)]  // everything in one
    public void PlanCoversTheBufferFromItsEndInTheOrderTheBackwardFinishesIt(long capFloats)
    {
        using var model = new Gpt(Config);
        using var graph = model.Build(2, Config.BlockSize, withGrad: true);
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
            using var model = new Gpt(Config);
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
}
