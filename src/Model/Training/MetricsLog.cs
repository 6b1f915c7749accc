using System.Text.Json;
using System.Text.Json.Serialization;
using DistGpt.Model.IO;

namespace DistGpt.Model.Training;

/// <summary>One line of metrics.jsonl. Names are fixed: tools read the file while training runs.</summary>
public sealed record StepMetrics
{
    public long Step { get; init; }
    public float Loss { get; init; }
    public float Lr { get; init; }
    public double StepMs { get; init; }
    public double TokensPerS { get; init; }
    public double GradNorm { get; init; }
    public float? TrainLoss { get; init; }
    public float? ValLoss { get; init; }
    /// <summary>Last step only: the loss over the whole validation split (ValLoss samples eval_iters batches).</summary>
    public float? ValLossFull { get; init; }
    public int? Workers { get; init; }
    public double? CommMs { get; init; }
    [JsonExtensionData] public Dictionary<string, object>? Extra { get; init; }
}

/// <summary>Appends one JSON object per step to &lt;out&gt;/metrics.jsonl and flushes it every line.</summary>
public sealed class MetricsLog : IDisposable
{
    readonly StreamWriter writer;

    public string Path { get; }

    /// <summary>Opens the log; when resuming from step s, lines after s (written past the checkpoint) are dropped
    /// so the step numbers stay contiguous.</summary>
    public MetricsLog(string path, long resumeStep)
    {
        Path = path;
        try
        {
            if (resumeStep > 0 && File.Exists(path)) KeepUpTo(path, resumeStep);
            else if (resumeStep == 0 && File.Exists(path)) File.Delete(path);
            writer = new StreamWriter(new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.Read)) { AutoFlush = true };
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw OutputWriteException.Writing(path, e);
        }
    }

    static void KeepUpTo(string path, long step)
    {
        var kept = File.ReadLines(path).Where(line =>
        {
            try { return JsonDocument.Parse(line).RootElement.GetProperty("step").GetInt64() <= step; }
            catch (JsonException) { return false; }
        }).ToList();
        string tmp = path + ".tmp";
        try
        {
            File.WriteAllLines(tmp, kept);
            File.Move(tmp, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            try { File.Delete(tmp); } catch (IOException) { }
            throw OutputWriteException.Writing(tmp, e);
        }
    }

    public void Write(StepMetrics m)
    {
        try { writer.WriteLine(JsonSerializer.Serialize(m, Json.Options)); }
        catch (IOException e) { throw OutputWriteException.Writing(Path, e); }
    }

    public static IEnumerable<StepMetrics> Read(string path) =>
        File.ReadLines(path).Where(l => l.Length > 0).Select(l => JsonSerializer.Deserialize<StepMetrics>(l, Json.Options)!);

    public void Dispose()
    {
        try { writer.Dispose(); }
        catch (IOException) { } // a line that could not be written has already been reported by Write
    }
}
