using System.CommandLine;
using DistGpt.Coordinator.Cli;

// distgpt: train GPTs with data parallelism. Each subcommand lives in Cli/; hosting for dev/cluster mode in Hosting/.
var root = new RootCommand("DistGpt: data-parallel GPT training in .NET (nanoGPT's architecture).")
{
    TrainCommand.Create(),
    SampleCommand.Create(),
    BenchCommand.Create(),
    BenchCommand.CreateGemm(),
    DevCommand.Create(),
    CoordinatorCommand.Create(),
    WorkerCommand.Create(),
    ExchangeBenchCommand.Create(),
    ExchangeBenchCommand.CreatePeer(),
};
var parse = root.Parse(args);
if (parse.Errors.Count > 0)
{
    foreach (var e in parse.Errors) Console.Error.WriteLine($"error: {e.Message}");
    var command = parse.CommandResult.Command;
    Console.Error.WriteLine(command == root ? "see 'distgpt --help'" : $"see 'distgpt {command.Name} --help'");
    return ExitCodes.BadInput;
}
return await parse.InvokeAsync();
