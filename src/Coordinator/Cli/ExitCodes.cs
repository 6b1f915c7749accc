using DistGpt.Contracts;
using DistGpt.Model;
using DistGpt.Model.Data;
using DistGpt.Model.IO;
using DistGpt.Model.Training;

namespace DistGpt.Coordinator.Cli;

/// <summary>0 success, 1 runtime failure, 2 bad input (one line naming the problem, no stack trace), 130 cancelled.</summary>
public static class ExitCodes
{
    public const int Ok = 0, Failure = 1, BadInput = 2, Cancelled = 130;

    public static Task<int> Guard(Func<int> body) => Task.Run(() => Run(body));

    public static Task<int> GuardAsync(Func<Task<int>> body) => Task.Run(() => Run(() => body().GetAwaiter().GetResult()));

    public static int Run(Func<int> body)
    {
        try { return body(); }
        catch (JoinRefusedException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return BadInput;
        }
        catch (Exception e) when (e is ConfigException or DataException or CheckpointException)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return BadInput;
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine("cancelled");
            return Cancelled;
        }
        catch (Exception e) when (e is TrainingDivergedException or RunFailedException or WorkerLostException or Contracts.Wire.ProtocolException)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return Failure;
        }
    }
}

