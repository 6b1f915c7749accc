using DistGpt.Model.Data;

namespace DistGpt.Model.Training;

/// <summary>nanoGPT's estimate_loss: mean loss over eval_iters random batches of batchSize sequences of each split, dropout
/// off. The graph may hold fewer sequences than a batch (a replica of the trainer's): each batch then takes several passes.</summary>
public sealed class Evaluator(GptGraph graph, int batchSize, Corpus corpus, ulong seed, int evalIters)
{
    public (float Train, float Val) Estimate(long step) => (Mean(DataSplit.Train, step), Mean(DataSplit.Val, step));

    /// <summary>A validation split longer than this (a large token corpus) is not evaluated whole at the end.</summary>
    public const long WholeSplitMaxTokens = 1 << 24;

    /// <summary>The exact mean loss over every non-overlapping block of the split (no sampling noise; the last
    /// partial batch is padded with a repeated window whose losses are left out).</summary>
    public float WholeSplit(DataSplit split)
    {
        var data = corpus.Split(split);
        int batch = graph.Batch, time = graph.Time;
        long windows = (data.Length - 1) / time;
        double sum = 0;
        graph.Step.Training = false;
        for (long first = 0; first < windows; first += batch)
        {
            int count = (int)Math.Min(batch, windows - first);
            for (int row = 0; row < batch; row++)
                BatchSampler.CopyWindow(data, (first + Math.Min(row, count - 1)) * time, row, time, graph.Tokens, graph.Targets);
            graph.Forward();
            sum += graph.Loss.LossSum(count * time);
        }
        return (float)(sum / (windows * time));
    }

    float Mean(DataSplit split, long step)
    {
        double sum = 0;
        graph.Step.Training = false;
        for (int k = 0; k < evalIters; k++)
        {
            double batchSum = 0;
            for (int first = 0; first < batchSize; first += graph.Batch)
            {
                // sequences past the batch in the last pass are sampled too, but their losses are left out
                BatchSampler.Fill(corpus.Split(split), seed, split, BatchSampler.EvalStep(step, k), first, graph.Batch, graph.Time, graph.Tokens, graph.Targets);
                graph.Forward();
                batchSum += graph.Loss.LossSum(Math.Min(graph.Batch, batchSize - first) * graph.Time);
            }
            sum += (float)(batchSum / ((long)batchSize * graph.Time));
        }
        return (float)(sum / evalIters);
    }
}
