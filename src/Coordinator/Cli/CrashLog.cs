namespace DistGpt.Coordinator.Cli;

/// <summary>Where an unexpected exception's stack trace goes, so the terminal gets one line: &lt;out&gt;/crash.log once the
/// run has claimed its output directory, else a file in the temp directory.</summary>
public static class CrashLog
{
    /// <summary>The run's claimed --out directory, if any (set by <see cref="OutputDirectory"/>).</summary>
    public static string? OutDir { get; set; }

    /// <summary>Writes the exception and returns " (details in PATH)", or "" when no file could be written.</summary>
    public static string Mention(Exception e)
    {
        string text = $"{DateTime.UtcNow:O} distgpt {string.Join(' ', Environment.GetCommandLineArgs().Skip(1))}\n{e}\n\n";
        foreach (string? path in new[] { OutDir == null ? null : Path.Combine(OutDir, "crash.log"),
                     Path.Combine(Path.GetTempPath(), $"distgpt-crash-{Environment.ProcessId}-{DateTime.UtcNow:yyyyMMddTHHmmss}.log") })
        {
            if (path == null) continue;
            try
            {
                File.AppendAllText(path, text);
                return $" (details in {path})";
            }
            catch (Exception) { } // a full or read-only disk: try the next place
        }
        return "";
    }
}
