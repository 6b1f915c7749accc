using Orleans.Runtime;

namespace DistGpt.Fabric;

/// <summary>Replaces Orleans' fatal error handler, which ends the process: a worker silo whose coordinator restarted
/// (development clustering's table then goes back in version, and Orleans declares this silo's state unrecoverable)
/// must not take the worker process down with it. The silo is marked broken and its host restarts it.</summary>
public sealed class FabricFailure : IFatalErrorHandler
{
    readonly TaskCompletionSource<string> failed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Completes with the reason once Orleans gave up on this silo.</summary>
    public Task<string> Failed => failed.Task;

    public bool IsUnexpected(Exception exception) => exception is not ThreadInterruptedException;

    public void OnFatalException(object? sender, string? context, Exception? exception) =>
        failed.TrySetResult(Contracts.Untrusted.Escape($"{context ?? "fatal error"}{(exception != null ? ": " + exception.Message : "")}"));
}
