namespace DistGpt.Contracts;

/// <summary>Wakes whoever waits for state that others change. A waiter takes <see cref="Next"/> in the same lock as it reads
/// the state, and awaits it outside when the state is not yet what it needs (<see cref="UntilAsync"/> does both); a writer
/// changes the state, then calls <see cref="Pulse"/>, which completes that task and arms a new one.</summary>
public sealed class ChangeSignal
{
    TaskCompletionSource next = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public Task Next => Volatile.Read(ref next).Task;

    public void Pulse() => Interlocked.Exchange(ref next, new(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();

    /// <summary>Runs <paramref name="check"/> under <paramref name="gate"/> now and after every pulse until it returns a
    /// value (it may also throw); null once <paramref name="within"/> has passed (<see cref="Timeout.InfiniteTimeSpan"/>:
    /// no bound).</summary>
    public async Task<T?> UntilAsync<T>(object gate, Func<T?> check, TimeSpan within, CancellationToken cancel) where T : class
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            Task pulsed;
            lock (gate)
            {
                if (check() is { } answer) return answer;
                pulsed = Next;
            }
            var left = within == Timeout.InfiniteTimeSpan ? within : within - clock.Elapsed;
            if (left != Timeout.InfiniteTimeSpan && left <= TimeSpan.Zero) return null;
            await Task.WhenAny(pulsed, Task.Delay(left, cancel));
            cancel.ThrowIfCancellationRequested();
        }
    }
}
