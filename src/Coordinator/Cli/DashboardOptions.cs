using System.CommandLine;
using System.Text.Json;
using DistGpt.Dashboard;
using DistGpt.Model;
using DistGpt.Model.IO;

namespace DistGpt.Coordinator.Cli;

/// <summary>--dashboard and --trace-link, on train, dev and coordinator (the live page) and on `distgpt dashboard`.</summary>
public sealed class DashboardOptions
{
    public readonly Option<string> Address = new("--dashboard")
    {
        Description = "serve a read-only training page at [HOST:]PORT (loopback unless HOST is given; port 0: any free one)",
    };
    public readonly Option<string> TraceLink = new("--trace-link")
    {
        Description = "link each step on the page to its trace: a URL template with {trace_id} (and {step}), e.g. http://localhost:16686/trace/{trace_id} for Jaeger",
    };

    public void AddTo(Command command)
    {
        command.Options.Add(Address);
        command.Options.Add(TraceLink);
    }

    /// <summary>Refuses a bad --dashboard or --trace-link up front, before a run sets anything up.</summary>
    public void Check(ParseResult r)
    {
        ReadAddress(r);
        ReadTraceLink(r);
    }

    public DashboardAddress? ReadAddress(ParseResult r) =>
        r.GetResult(Address) is { Implicit: false } ? DashboardAddress.Parse(r.GetValue(Address)) : null;

    public string? ReadTraceLink(ParseResult r)
    {
        string? template = r.GetValue(TraceLink);
        if (template == null) return null;
        string sample = template.Replace("{trace_id}", new string('0', 32)).Replace("{step}", "1");
        if (!template.Contains("{trace_id}") || !Uri.TryCreate(sample, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
            throw new ConfigException($"--trace-link '{template}' is not an http(s) URL template with {{trace_id}}, e.g. http://localhost:16686/trace/{{trace_id}}");
        return template;
    }

    /// <summary>The live page of a run this process trains, when --dashboard is given (null otherwise); prints its URL.</summary>
    public LiveRun? Start(ParseResult r, RunSetup setup, string mode, int worldSize, string? wireDType)
    {
        var address = ReadAddress(r);
        string? traceLink = ReadTraceLink(r);
        if (address == null) return null;
        var info = new RunInfo
        {
            Label = setup.OutDir, RunId = setup.RunId, Mode = mode, WorldSize = worldSize, WireDtype = wireDType, TraceLink = traceLink,
            Config = JsonSerializer.SerializeToNode(setup.Model.Config, Json.Options), Settings = JsonSerializer.SerializeToNode(setup.Settings, Json.Options),
        };
        var live = LiveRun.StartAsync(address, info).GetAwaiter().GetResult();
        Announce(live.Url, address);
        return live;
    }

    public static void Announce(Uri url, DashboardAddress address) =>
        Console.WriteLine($"[dashboard] {url} (read-only{(address.IsLoopback ? "; from another machine: ssh -L " + url.Port + ":127.0.0.1:" + url.Port + " THIS-HOST" : "; reachable by anyone who can reach this host")})");
}
