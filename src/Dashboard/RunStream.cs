using System.Text.Json;
using System.Text.Json.Nodes;
using DistGpt.Model.IO;
using DistGpt.Model.Training;

namespace DistGpt.Dashboard;

/// <summary>What the page shows about one run besides its records: where it came from and how it was set up. Never holds
/// a secret: built field by field from the model config and the recipe, not from the command line.</summary>
public sealed record RunInfo
{
    public required string Label { get; init; }
    public string? RunId { get; init; }
    /// <summary>train, dev, coordinator (live), or finished (read from an --out).</summary>
    public required string Mode { get; init; }
    public JsonNode? Config { get; init; }
    public JsonNode? Settings { get; init; }
    public int? WorldSize { get; init; }
    public string? WireDtype { get; init; }
    /// <summary>--trace-link: a URL with {trace_id} (and optionally {step}) for the OTLP UI the traces go to.</summary>
    public string? TraceLink { get; init; }
}

/// <summary>The page's data: every run's metrics.jsonl records, in one sequence numbered across runs, so a page that
/// reconnects asks for what it missed by the last number it saw (SSE's Last-Event-ID). Live and finished runs go through
/// the same records: a live run's lines are the ones its MetricsLog writes, a finished run's are read back from the file.</summary>
public sealed class RunStream
{
    /// <summary>One server-sent event: <paramref name="Kind"/> is `record` or `state`, <paramref name="Json"/> its data.</summary>
    public sealed record Entry(long Id, string Kind, string Json);

    readonly object gate = new();
    readonly List<RunInfo> runs = new();
    readonly List<Entry> entries = new();
    TaskCompletionSource changed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public int AddRun(RunInfo info)
    {
        lock (gate)
        {
            runs.Add(info);
            return runs.Count - 1;
        }
    }

    public IReadOnlyList<RunInfo> Runs() { lock (gate) return runs.ToArray(); }

    /// <summary>A record exactly as metrics.jsonl holds it (the same serializer and options as <see cref="MetricsLog"/>).</summary>
    public void Add(int run, StepMetrics metrics) => AddLine(run, JsonSerializer.Serialize(metrics, Json.Options));

    /// <summary>A metrics.jsonl line; one that is not a JSON object (a line cut by a crash) is skipped.</summary>
    public bool AddLine(int run, string line)
    {
        if (line.Length == 0 || line[0] != '{') return false;
        try { using var _ = JsonDocument.Parse(line); }
        catch (JsonException) { return false; }
        Append("record", $"{{\"run\":{run},\"record\":{line}}}");
        return true;
    }

    /// <summary>The run's state: live, finished or failed.</summary>
    public void SetState(int run, string state) => Append("state", $"{{\"run\":{run},\"state\":{JsonSerializer.Serialize(state)}}}");

    void Append(string kind, string json)
    {
        TaskCompletionSource wake;
        lock (gate)
        {
            entries.Add(new Entry(entries.Count + 1, kind, json));
            wake = changed;
            changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        wake.TrySetResult();
    }

    /// <summary>The entries after <paramref name="lastId"/>, and a task that completes when there are more.</summary>
    public (Entry[] Entries, Task More) After(long lastId)
    {
        lock (gate)
        {
            int from = (int)Math.Clamp(lastId, 0, entries.Count);
            return (entries.GetRange(from, entries.Count - from).ToArray(), changed.Task);
        }
    }
}
