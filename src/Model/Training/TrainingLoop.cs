using System.Diagnostics;
using DistGpt.Model.Data;
using DistGpt.Model.IO;

namespace DistGpt.Model.Training;

/// <summary>The recipe, as nanoGPT's train.py: per step set the lr from the schedule, get the gradient sum, average it
/// over the tokens, clip, AdamW; evaluate every eval_interval steps; checkpoint; log a metrics line. Steps count 1..max_iters.</summary>
public sealed class TrainingLoop(
    Gpt model, AdamW optimizer, Corpus corpus, TrainSettings settings, IGradientSource gradients,
    Evaluator evaluator, string outDir, string runId, long startStep)
{
    /// <summary>Called after every step with its metrics (progress display).</summary>
    public Action<StepMetrics>? OnStep { get; init; }
    /// <summary>Set when the optimizer runs on the parameter shards: it takes the updates, and the weights come back from it
    /// before an evaluation or a checkpoint.</summary>
    public IRemoteOptimizer? Remote { get; init; }
    /// <summary>Called around evaluation and checkpointing (telemetry spans).</summary>
    public Func<string, long, IDisposable?>? OnPhase { get; init; }

    readonly long firstStep = startStep;

    public long Step { get; private set; } = startStep;

    /// <summary>The step of the checkpoint in outDir (the one the run started from, or the last one written).</summary>
    public long CheckpointStep { get; private set; } = startStep;

    public float? LastValLoss { get; private set; }

    /// <summary>The whole validation split's loss, measured once after the last step.</summary>
    public float? FinalValLossFull { get; private set; }

    public void Run(CancellationToken cancel = default)
    {
        using var log = new MetricsLog(Path.Combine(outDir, "metrics.jsonl"), firstStep);
        using var sampler = new EvalSample(model, corpus.Tokenizer, settings.Seed);
        while (Step < settings.MaxIters)
        {
            cancel.ThrowIfCancellationRequested();
            long step = Step + 1;
            // One trace per step: this root span, its phases below, and the workers' spans (W3C context on each call).
            using var span = TrainingTelemetry.StartStep(step, runId);
            try { RunStep(step, span, log, sampler, cancel); }
            catch (Exception e)
            {
                TrainingTelemetry.RecordError(span, e);
                throw;
            }
        }
    }

    void RunStep(long step, Activity? span, MetricsLog log, EvalSample sampler, CancellationToken cancel)
    {
        var clock = Stopwatch.StartNew();
        float lr = settings.Schedule.At(step - 1);
        span?.SetTag(TrainingTelemetry.Attr.LearningRate, (double)lr);
        StepGradients result;
        using (TrainingTelemetry.Start("gather gradients", step)) result = gradients.Compute(step, cancel);
        var sum = result.Sum;
        if (!double.IsFinite(sum.LossSum)) throw new TrainingDivergedException($"loss is {sum.LossSum} at step {step}; lower --learning-rate");
        double norm;
        float gradScale;
        using (var clipping = TrainingTelemetry.Start("clip gradients", step))
        {
            // The mean over tokens and the clip are one factor, applied by AdamW as it reads the gradient sum.
            (norm, gradScale) = result.SumNorm is { } sumNorm ? GradientOps.MeanClipScale(sumNorm, sum.Tokens, settings.GradClip)
                : GradientOps.MeanClipScale(model.Parameters.Grads, sum.Tokens, settings.GradClip);
            clipping?.SetTag(TrainingTelemetry.Attr.Tokens, sum.Tokens).SetTag(TrainingTelemetry.Attr.GradNorm, norm)
                .SetTag(TrainingTelemetry.Attr.GradClip, (double)settings.GradClip);
        }
        using (var update = TrainingTelemetry.Start("update weights", step))
        {
            update?.SetTag("distgpt.optimizer", "adamw").SetTag(TrainingTelemetry.Attr.LearningRate, (double)lr);
            if (Remote != null) Remote.Step(step, lr, gradScale);
            else optimizer.Step(lr, gradScale);
        }
        Step = step;
        double ms = clock.Elapsed.TotalMilliseconds;

        float? trainLoss = null, valLoss = null, valLossFull = null;
        string? sample = null;
        bool checkpointDue = (settings.CheckpointInterval > 0 && step % settings.CheckpointInterval == 0) || step == settings.MaxIters;
        if (step % settings.EvalInterval == 0 || step == settings.MaxIters)
        {
            using (var evaluation = TrainingTelemetry.Start("evaluate model", step))
            using (OnPhase?.Invoke("evaluate", step))
            {
                Remote?.Gather(moments: checkpointDue); // the checkpoint after it then needs nothing more
                (trainLoss, valLoss) = evaluator.Estimate(step);
                if (step == settings.MaxIters && corpus.Val.Length <= Evaluator.WholeSplitMaxTokens) valLossFull = evaluator.WholeSplit(DataSplit.Val);
                sample = sampler.Generate(step);
                evaluation?.SetTag(TrainingTelemetry.Attr.TrainLoss, (double)trainLoss).SetTag(TrainingTelemetry.Attr.ValLoss, (double)valLoss)
                    .SetTag(TrainingTelemetry.Attr.EvalIters, settings.EvalIters).SetTag(TrainingTelemetry.Attr.ValLossFull, (double?)valLossFull);
            }
            LastValLoss = valLoss;
            FinalValLossFull = valLossFull;
        }
        var metrics = new StepMetrics
        {
            Step = step, Loss = sum.MeanLoss, Lr = lr, StepMs = Math.Round(ms, 3),
            TokensPerS = Math.Round(sum.Tokens / (ms / 1000.0), 1), GradNorm = Math.Round(norm, 6),
            TrainLoss = trainLoss, ValLoss = valLoss, ValLossFull = valLossFull, Workers = result.Workers, CommMs = result.CommMs,
            Sample = sample, TraceId = span?.Recorded == true ? span.TraceId.ToHexString() : null,
            Extra = result.Extra?.ToDictionary(kv => kv.Key, kv => kv.Value),
        };
        log.Write(metrics);
        TrainingTelemetry.RecordStep(span, metrics, sum.Tokens);
        OnStep?.Invoke(metrics);

        // After the step's metrics line: a crash between the two leaves metrics past the checkpoint, which a resumed run
        // drops; the other order could leave a checkpoint whose step has no metrics line, a gap after the resume.
        if (checkpointDue)
        {
            using var checkpoint = TrainingTelemetry.Start("save checkpoint", step);
            checkpoint?.SetTag(TrainingTelemetry.Attr.CheckpointDir, outDir);
            using (OnPhase?.Invoke("checkpoint", step)) SaveCheckpoint();
        }
    }

    public void SaveCheckpoint()
    {
        Remote?.Gather(moments: true);
        Checkpoint.Save(outDir, model, optimizer, corpus.Tokenizer, settings, Step, runId, corpus.Sha256);
        CheckpointStep = Step;
    }

    /// <summary>After Run stopped (cancelled between or inside steps: the weights are those of the last whole step), a
    /// checkpoint of that step unless the last one is already of it; false when there was nothing new to save.</summary>
    public bool CheckpointOnStop()
    {
        if (Step == CheckpointStep) return false;
        SaveCheckpoint();
        return true;
    }
}

public sealed class TrainingDivergedException(string message) : Exception(message);
