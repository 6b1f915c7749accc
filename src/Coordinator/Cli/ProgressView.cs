using DistGpt.Model.Training;
using Spectre.Console;

namespace DistGpt.Coordinator.Cli;

/// <summary>Shows training progress: a Spectre.Console progress bar on a terminal, plain log lines when redirected.</summary>
public sealed class ProgressView
{
    readonly long maxIters;
    readonly bool interactive = !Console.IsOutputRedirected && AnsiConsole.Profile.Capabilities.Interactive;
    ProgressTask? task;

    public ProgressView(long maxIters) => this.maxIters = maxIters;

    /// <summary>Runs the training body inside the view.</summary>
    public void Run(long startStep, Action body)
    {
        if (!interactive)
        {
            body();
            return;
        }
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                task = ctx.AddTask("training", maxValue: maxIters);
                task.Value = startStep;
                body();
            });
    }

    public void Report(StepMetrics m, string? extra = null)
    {
        string line = $"step {m.Step}: loss {m.Loss:F4}, lr {m.Lr:E2}, {m.StepMs:F1} ms, {m.TokensPerS:F0} tok/s" +
                      (m.CommMs is { } c ? $", comm {c:F1} ms" : "") + (extra == null ? "" : ", " + extra);
        string? eval = m.ValLoss is { } v ? $"step {m.Step}: train loss {m.TrainLoss:F4}, val loss {v:F4}" : null;
        if (eval != null) eval += WholeSplit(m.ValLossFull);
        if (task != null)
        {
            task.Value = m.Step;
            task.Description = Markup.Escape($"step {m.Step} loss {m.Loss:F4} {m.TokensPerS:F0} tok/s" + (extra == null ? "" : " " + extra));
            if (eval != null) AnsiConsole.MarkupLine(Markup.Escape(eval));
            return;
        }
        if (m.Step % 10 == 0 || m.Step == 1 || m.Step == maxIters) Telemetry.TraceLog.Line("progress", line);
        if (eval != null) Telemetry.TraceLog.Line("progress", eval);
    }

    /// <summary>" (whole val split: x)" after a val loss, when the last step measured it; else empty.</summary>
    public static string WholeSplit(float? valLossFull) => valLossFull is { } full ? $" (whole val split: {full:F4})" : "";
}
