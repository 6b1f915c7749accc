namespace DistGpt.Contracts;

/// <summary>Wakes whoever waits for state that others change. A waiter takes <see cref="Next"/> in the same lock as it reads
/// the state, and awaits it outside when the state is not yet what it needs; a writer changes the state, then calls
/// <see cref="Pulse"/>, which completes that task and arms a new one.</summary>
public sealed class ChangeSignal
{
    TaskCompletionSource next = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public Task Next => Volatile.Read(ref next).Task;

    public void Pulse() => Interlocked.Exchange(ref next, new(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();
}
