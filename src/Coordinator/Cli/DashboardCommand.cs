using System.CommandLine;
using DistGpt.Dashboard;

namespace DistGpt.Coordinator.Cli;

/// <summary>`distgpt dashboard --out A --out B`: the training page for finished runs, their curves overlaid.</summary>
public static class DashboardCommand
{
    public static Command Create()
    {
        var outs = new Option<string[]>("--out") { Description = "a run's output directory (its metrics.jsonl); repeat to overlay runs", Required = true, Arity = ArgumentArity.OneOrMore };
        var options = new DashboardOptions();
        var command = new Command("dashboard", "Serve the training page for finished runs (--out DIR, repeatable), read from their metrics.jsonl.") { outs };
        options.AddTo(command);
        command.SetAction((r, cancel) => ExitCodes.GuardAsync(async () =>
        {
            var address = options.ReadAddress(r) ?? DashboardAddress.Parse("8080");
            string? traceLink = options.ReadTraceLink(r);
            var stream = new RunStream();
            foreach (string dir in r.GetValue(outs)!) FinishedRun.Load(dir, stream, traceLink);
            await using var server = await DashboardServer.StartAsync(address, stream);
            DashboardOptions.Announce(server.Url, address);
            Console.WriteLine($"{stream.Runs().Count} run(s); Ctrl-C to stop");
            try { await Task.Delay(Timeout.Infinite, cancel); }
            catch (OperationCanceledException) { } // Ctrl-C: the way to stop it
            return ExitCodes.Ok;
        }));
        return command;
    }
}
