using System.Text.Json;
using System.Text.Json.Nodes;
using DistGpt.Model;

namespace DistGpt.Dashboard;

/// <summary>A run read back from its --out: metrics.jsonl's lines as they are, and the config, recipe and run id from its
/// checkpoint when it has one.</summary>
public static class FinishedRun
{
    /// <summary>Adds the run in <paramref name="outDir"/> to <paramref name="stream"/>; a missing directory or one without
    /// a metrics.jsonl is bad input (one line naming it).</summary>
    public static void Load(string outDir, RunStream stream, string? traceLink)
    {
        if (!Directory.Exists(outDir))
            throw new ConfigException($"--out '{outDir}' {(File.Exists(outDir) ? "is a file, not a run's output directory" : "does not exist")}");
        string metrics = Path.Combine(outDir, "metrics.jsonl");
        if (!File.Exists(metrics)) throw new ConfigException($"--out '{outDir}' has no metrics.jsonl: not the output of a training run");
        string[] lines;
        try { lines = File.ReadAllLines(metrics); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new ConfigException($"'{metrics}' cannot be read: {e.Message}"); }

        var checkpoint = ReadCheckpoint(Path.Combine(outDir, "ckpt", "checkpoint.json"));
        int run = stream.AddRun(new RunInfo
        {
            Label = Path.TrimEndingDirectorySeparator(outDir), Mode = "finished",
            RunId = checkpoint?["run_id"]?.GetValue<string>(), Config = checkpoint?["config"]?.DeepClone(),
            Settings = checkpoint?["settings"]?.DeepClone(), TraceLink = traceLink,
        });
        int kept = lines.Count(line => stream.AddLine(run, line));
        if (kept == 0) throw new ConfigException($"'{metrics}' holds no metrics records");
        stream.SetState(run, "finished");
    }

    /// <summary>checkpoint.json as JSON, or null when absent or unreadable: the page then shows the records alone.</summary>
    static JsonNode? ReadCheckpoint(string path)
    {
        try { return File.Exists(path) ? JsonNode.Parse(File.ReadAllText(path)) : null; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException or InvalidOperationException) { return null; }
    }
}
