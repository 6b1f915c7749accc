namespace DistGpt.Fabric;

/// <summary>At most one line per period for events a stranger can repeat at will (refused connections, failed accepts):
/// the first of a burst is written, the rest are counted into the next line, so a flood cannot flood the log too.</summary>
public sealed class ThrottledLog(Action<string> log, TimeSpan? period = null)
{
    readonly TimeSpan period = period ?? TimeSpan.FromSeconds(10);
    readonly object gate = new();
    DateTime lastWritten = DateTime.MinValue;
    int unwritten;

    public void Write(string message)
    {
        int skipped;
        lock (gate)
        {
            var now = DateTime.UtcNow;
            if (now - lastWritten < period)
            {
                unwritten++;
                return;
            }
            (lastWritten, skipped, unwritten) = (now, unwritten, 0);
        }
        log(skipped == 0 ? message : $"{message} ({skipped} more since the previous such line, not logged)");
    }
}
