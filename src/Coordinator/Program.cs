using System.CommandLine;
using DistGpt.Coordinator.Cli;

// distgpt: train GPTs with data parallelism. Each subcommand lives in Cli/; hosting for dev/cluster mode in Hosting/.
var root = new RootCommand("DistGpt: data-parallel GPT training in .NET (nanoGPT's architecture).")
{
    TrainCommand.Create(),
    SampleCommand.Create(),
    PrepareCommand.Create(),
    BenchCommand.Create(),
    BenchCommand.CreateGemm(),
    DevCommand.Create(),
    CoordinatorCommand.Create(),
    WorkerCommand.Create(),
    StatusCommand.Create(),
    DashboardCommand.Create(),
    ExchangeBenchCommand.Create(),
    ExchangeBenchCommand.CreatePeer(),
};
// DISTGPT_GEMM picks the matmul kernel (portable, avx2, avx512; default the widest the CPU has); dev mode's workers inherit it.
if (Environment.GetEnvironmentVariable("DISTGPT_GEMM") is { Length: > 0 } gemm)
{
    try { DistGpt.Model.Gemm.Kernel = DistGpt.Model.Gemm.ParseKernel(gemm); }
    catch (ArgumentException e)
    {
        Console.Error.WriteLine($"error: DISTGPT_GEMM: {e.Message}");
        return ExitCodes.BadInput;
    }
}
// An exception on a thread no command awaits would otherwise end the process with a stack trace.
AppDomain.CurrentDomain.UnhandledException += (_, e) => Environment.Exit(ExitCodes.Report((Exception)e.ExceptionObject));
var parse = root.Parse(args);
if (parse.Errors.Count > 0)
{
    var command = parse.CommandResult.Command;
    string help = command == root ? "see 'distgpt --help'" : $"see 'distgpt {command.Name} --help'";
    Console.Error.WriteLine($"error: {string.Join("; ", parse.Errors.Select(e => e.Message))} ({help})");
    return ExitCodes.BadInput;
}
try { return await parse.InvokeAsync(); }
catch (Exception e) { return ExitCodes.Report(e); }
