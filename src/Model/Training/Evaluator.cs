using DistGpt.Model.Data;

namespace DistGpt.Model.Training;

/// <summary>nanoGPT's estimate_loss: mean loss over eval_iters random batches of each split, dropout off.</summary>
public sealed class Evaluator(GptGraph graph, TextCorpus corpus, ulong seed, int evalIters)
{
    public (float Train, float Val) Estimate(long step) => (Mean(DataSplit.Train, step), Mean(DataSplit.Val, step));

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
            BatchSampler.Fill(corpus.Split(split), seed, split, BatchSampler.EvalStep(step, k), 0, graph.Batch, graph.Time, graph.Tokens, graph.Targets);
            sum += graph.Forward();
        }
        return (float)(sum / evalIters);
    }
}
