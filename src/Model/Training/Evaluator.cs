using DistGpt.Model.Data;

namespace DistGpt.Model.Training;

/// <summary>nanoGPT's estimate_loss: mean loss over eval_iters random batches of each split, dropout off.</summary>
public sealed class Evaluator(GptGraph graph, TextCorpus corpus, ulong seed, int evalIters)
{
    public (float Train, float Val) Estimate(long step) => (Mean(DataSplit.Train, step), Mean(DataSplit.Val, step));

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
