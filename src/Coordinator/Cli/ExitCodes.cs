using DistGpt.Contracts;
using DistGpt.Model;
using DistGpt.Model.Data;
using DistGpt.Model.IO;
using DistGpt.Model.Training;

namespace DistGpt.Coordinator.Cli;

/// <summary>0 success, 1 runtime failure, 2 bad input (one line naming the problem, no stack trace), 130 cancelled.
/// Every exception ends here as one stderr line; one we did not expect also goes, with its stack trace, to
/// <see cref="CrashLog"/>, and the line names that file.</summary>
public static class ExitCodes
{
    public const int Ok = 0, Failure = 1, BadInput = 2, Cancelled = 130;

    public static Task<int> Guard(Func<int> body) => Task.Run(() => Run(body));

    public static Task<int> GuardAsync(Func<Task<int>> body) => Task.Run(() => Run(() => body().GetAwaiter().GetResult()));

    public static int Run(Func<int> body)
    {
        try { return body(); }
        catch (Exception e) { return Report(e); }
    }

    /// <summary>Prints the one line for <paramref name="e"/> and returns the exit code.</summary>
    public static int Report(Exception e)
    {
        while (e is AggregateException { InnerExceptions.Count: 1 } a) e = a.InnerExceptions[0];
        switch (e)
        {
            case JoinRefusedException or ConfigException or DataException or CheckpointException:
                Console.Error.WriteLine($"error: {OneLine(e.Message)}");
                return BadInput;
            case OperationCanceledException:
                Console.Error.WriteLine("cancelled");
                return Cancelled;
            case TrainingDivergedException or RunFailedException or WorkerLostException or Contracts.Wire.ProtocolException or OutputWriteException:
                Console.Error.WriteLine($"error: {OneLine(e.Message)}");
                return Failure;
            case OutOfMemoryException:
                Console.Error.WriteLine($"error: out of memory ({Describe(e)}); try a smaller --batch-size, --block-size or --n-embd{CrashLog.Mention(e)}");
                return Failure;
            default:
                Console.Error.WriteLine($"error: unexpected {Describe(e)}{CrashLog.Mention(e)}");
                return Failure;
        }
    }

    static string Describe(Exception e) => $"{e.GetType().Name}: {OneLine(e.Message)}";

    /// <summary>Messages may carry a peer's words (a refusal reason, a path given on the command line): one line, escaped.</summary>
    static string OneLine(string message) => Untrusted.Escape(message, 2000);
}
