using System.Diagnostics;

namespace DistGpt.Model.Training;

/// <summary>Weights arriving in the flat buffer's order while the forward pass already runs: the receiver advances the
/// count of values that have landed, and each op waits (blocking, so the receiver keeps the core) only until the
/// values it reads are there. A GPT's layout is in forward order, so block 0 computes while block 1 is on the wire.</summary>
public sealed class WeightsArrival
{
    readonly object gate = new();
    long arrived, waitedTicks, waitingSince;
    int waiters;
    Exception? failed;

    /// <summary>How long some op has been blocked on values not yet landed (wall time, however many waited at once): the
    /// forward's compute time minus this is its work.</summary>
    public TimeSpan Waited { get { lock (gate) return Stopwatch.GetElapsedTime(0, waitedTicks); } }

    /// <summary>Values [0, <paramref name="values"/>) have landed.</summary>
    public void Advance(long values)
    {
        lock (gate)
        {
            arrived = Math.Max(arrived, values);
            Monitor.PulseAll(gate);
        }
    }

    /// <summary>The transfer broke off: every wait (now or later) throws instead.</summary>
    public void Fail(Exception error)
    {
        lock (gate)
        {
            failed = error;
            Monitor.PulseAll(gate);
        }
    }

    /// <summary>Blocks until values [0, <paramref name="values"/>) have landed; throws when the transfer failed first.</summary>
    public void WaitFor(long values)
    {
        if (Interlocked.Read(ref arrived) >= values) return;
        lock (gate)
        {
            if (waiters++ == 0) waitingSince = Stopwatch.GetTimestamp();
            try
            {
                while (arrived < values)
                {
                    if (failed != null) throw new IOException($"the weights stopped arriving: {failed.Message}", failed);
                    Monitor.Wait(gate);
                }
            }
            finally
            {
                if (--waiters == 0) waitedTicks += Stopwatch.GetTimestamp() - waitingSince;
            }
        }
    }
}
