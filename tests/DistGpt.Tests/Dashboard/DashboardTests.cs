using System.Net;
using System.Text.Json;
using DistGpt.Dashboard;
using DistGpt.Model;
using Microsoft.Playwright;
using Xunit;
using Xunit.Abstractions;

namespace DistGpt.Tests.Dashboard;

/// <summary>The training page (`--dashboard`, `distgpt dashboard`): its address rules, its refusals, its API, and the
/// page itself in a real Chromium during a real `dev --workers 2` run and over finished runs.</summary>
[Collection(ProcessHeavy.Name)]
public sealed class DashboardTests(FinishedRunsFixture runs, ITestOutputHelper output) : IClassFixture<FinishedRunsFixture>
{
    static readonly TimeSpan Startup = TimeSpan.FromSeconds(60);

    [Fact]
    public void AddressIsLoopbackUnlessAHostIsGiven()
    {
        Assert.Equal(new DashboardAddress(IPAddress.Loopback, 8080), DashboardAddress.Parse("8080"));
        Assert.Equal(new DashboardAddress(IPAddress.Loopback, 0), DashboardAddress.Parse("localhost:0"));
        Assert.Equal(new DashboardAddress(IPAddress.Any, 80), DashboardAddress.Parse("0.0.0.0:80"));
        Assert.Equal(new DashboardAddress(IPAddress.IPv6Loopback, 8080), DashboardAddress.Parse("[::1]:8080"));
        Assert.True(DashboardAddress.Parse("8080").IsLoopback);
        Assert.False(DashboardAddress.Parse("0.0.0.0:8080").IsLoopback);
        foreach (string bad in new[] { "", "abc", "70000", "-1", "example.com:8080", "::1:8080", "1.2.3.4:", "8080:1.2.3.4" })
            Assert.Throws<ConfigException>(() => DashboardAddress.Parse(bad));
    }

    [Fact]
    public void BadInputGetsOneLineNamingItAndExitCode2()
    {
        using var tmp = new TempDirectory("dashboard-bad");
        string empty = tmp.Subdirectory("empty");
        using var taken = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        int takenPort = ((IPEndPoint)taken.LocalEndpoint).Port;
        var cases = new (string Args, string Expect)[]
        {
            ($"dashboard --out {tmp.Combine("missing")}", "does not exist"),
            ($"dashboard --out {empty}", "has no metrics.jsonl"),
            ($"dashboard --out {runs.A} --dashboard abc", "--dashboard 'abc' is not [HOST:]PORT"),
            ($"dashboard --out {runs.A} --dashboard example.com:8080", "the host must be an IP address"),
            ($"dashboard --out {runs.A} --trace-link ftp://x/{{trace_id}}", "--trace-link"),
            ($"dashboard --out {runs.A} --dashboard {takenPort}", "cannot listen"),
            ($"train --dashboard 99999 --out {tmp.Combine("t")}", "--dashboard '99999'"),
            ($"dev --workers 2 --trace-link http://x/no-placeholder --out {tmp.Combine("d")}", "{trace_id}"),
        };
        foreach (var (args, expect) in cases)
        {
            var r = CliRunner.Run(args, DistributedTests.Env(), TimeSpan.FromSeconds(60));
            Assert.True(r.ExitCode == 2, $"{args}\n{r}");
            var line = Assert.Single(r.StdErrLines);
            Assert.StartsWith("error: ", line);
            Assert.Contains(expect, line);
        }
    }

    [Fact]
    public async Task FinishedRunsAreServedReadOnlyAndOnlyToLoopbackNames()
    {
        using var server = CliRunner.Start(["dashboard", "--out", runs.A, "--out", runs.B, "--dashboard", "0"], DistributedTests.Env());
        var url = PageUrl(server);
        using var http = new HttpClient { BaseAddress = url, Timeout = TimeSpan.FromSeconds(20) };

        using var list = JsonDocument.Parse(await http.GetStringAsync("api/runs"));
        Assert.Equal([runs.A, runs.B], list.RootElement.EnumerateArray().Select(r => r.GetProperty("label").GetString()));
        Assert.Equal(300, list.RootElement[1].GetProperty("settings").GetProperty("max_iters").GetInt32());

        // The event stream carries every metrics.jsonl line of both runs, each record as the file has it.
        var expected = File.ReadAllLines(Path.Combine(runs.A, "metrics.jsonl")).Select(l => (0, l))
            .Concat(File.ReadAllLines(Path.Combine(runs.B, "metrics.jsonl")).Select(l => (1, l))).ToList();
        var records = await ReadRecords(http, expected.Count);
        Assert.Equal(expected.Select(e => $"{{\"run\":{e.Item1},\"record\":{e.Item2}}}"), records);

        var page = await http.GetAsync("");
        Assert.Contains("script-src 'self'", page.Headers.GetValues("Content-Security-Policy").Single());
        foreach (var method in new[] { HttpMethod.Post, HttpMethod.Put, HttpMethod.Delete })
            Assert.Equal(HttpStatusCode.MethodNotAllowed, (await http.SendAsync(new HttpRequestMessage(method, "api/runs"))).StatusCode);
        var rebound = new HttpRequestMessage(HttpMethod.Get, "api/runs");
        rebound.Headers.Host = "attacker.example";
        Assert.Equal(HttpStatusCode.BadRequest, (await http.SendAsync(rebound)).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("../metrics.jsonl")).StatusCode);
        Assert.DoesNotContain("innerHTML", await http.GetStringAsync("dashboard.js"));
    }

    [BrowserFact]
    public async Task BrowserOverlaysFinishedRunsAndShowsHostileTextAsText()
    {
        using var server = CliRunner.Start(["dashboard", "--out", runs.A, "--out", runs.B, "--out", runs.Hostile, "--dashboard", "0"], DistributedTests.Env());
        var url = PageUrl(server);
        await using var browser = await SystemChromium.OpenAsync(url, height: 1800);
        var page = browser.Page;

        // Both real runs in the run list and the loss legend, each with all its steps.
        await page.WaitForFunctionAsync("() => document.querySelectorAll('#runs dl').length === 3");
        var titles = await page.Locator("#runs h3").AllTextContentsAsync();
        Assert.Contains(titles, t => t.StartsWith(runs.A + " — finished"));
        Assert.Contains(titles, t => t.StartsWith(runs.B + " — finished"));
        var legend = await page.Locator("#loss-legend > span").AllTextContentsAsync();
        Assert.Equal(3, legend.Count);
        Assert.Contains(legend, l => l.StartsWith(runs.B) && l.Contains("at step 300"));

        // The hostile run: its worker name and sample appear as the literal text, and create no element.
        await page.Locator("#run-select").SelectOptionAsync("2");
        await page.WaitForFunctionAsync("() => document.querySelector('#worker-table .worker-name') !== null");
        Assert.Equal(FinishedRunsFixture.HostileName, await page.Locator("#worker-table .worker-name").First.TextContentAsync());
        Assert.Equal(FinishedRunsFixture.HostileSample, await page.Locator("#samples pre").First.TextContentAsync());
        Assert.Equal(0, await page.Locator("#injected, #bold").CountAsync());
        Assert.Equal("DistGpt training", await page.TitleAsync());
        Assert.Empty(browser.Errors);
    }

    [BrowserFact]
    public async Task LiveDevRunShowsBothWorkersAndTheLossMetricsJsonlHolds()
    {
        using var tmp = new TempDirectory("dashboard-live");
        string outDir = tmp.Subdirectory("out");
        const string token = "dashboard-test-cluster-token-5f1e";
        var env = DistributedTests.Env(token);
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"; // steps are traced (so they have trace ids); the export goes nowhere
        // Long enough to still be running when the page is checked; stopped with SIGTERM after (not SIGINT: a suite started
        // in the background by a non-interactive shell passes SIGINT on ignored, and an ignored Ctrl-C stops nothing).
        using var dev = CliRunner.Start(["dev", "--workers", "2", "--worker-threads", "1", .. CliRunner.Split(FinishedRunsFixture.Model.Replace("--max-iters 300", "--max-iters 100000")),
            "--out", outDir, "--dashboard", "0", "--trace-link", "http://localhost:16686/trace/{trace_id}?step={step}"], env);
        var url = PageUrl(dev);
        await using var browser = await SystemChromium.OpenAsync(url, height: 2000);
        var page = browser.Page;

        // Both workers in the workers panel, and an evaluation step's sample, while the run goes on.
        await page.WaitForFunctionAsync("() => [...document.querySelectorAll('#worker-table .worker-name')].map(e => e.textContent).sort().join() === 'worker-0,worker-1'",
            null, new PageWaitForFunctionOptions { Timeout = 90_000 });
        await page.WaitForFunctionAsync("() => document.querySelector('#samples pre') !== null", null, new PageWaitForFunctionOptions { Timeout = 30_000 });
        Assert.Equal("connected", await page.Locator("#connection").TextContentAsync());
        string step = (await page.Locator("#latest").GetAttributeAsync("data-step"))!, loss = (await page.Locator("#latest").GetAttributeAsync("data-loss"))!;
        Assert.False(dev.HasExited, dev.StdOut + dev.StdErr);

        // The loss the page shows for its latest step is the one metrics.jsonl holds for that step.
        List<JsonElement> metrics() => File.ReadLines(Path.Combine(outDir, "metrics.jsonl")).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        var line = metrics().Single(m => m.GetProperty("step").GetRawText() == step);
        Assert.Equal(line.GetProperty("loss").GetRawText(), loss);
        Assert.Equal("2", (await page.Locator("#runs dd").AllTextContentsAsync())[2]); // world size
        Assert.Contains("fp32", await page.Locator("#runs").TextContentAsync());
        var events = new List<string>();
        foreach (var row in await page.Locator("#events tbody tr").AllAsync()) events.Add(string.Join(' ', await row.Locator("td").AllTextContentsAsync()));
        Assert.Equal(["1 worker-0 joined", "1 worker-1 joined"], events.Order());

        // Each traced step links to its trace through the --trace-link template.
        var traced = page.Locator("#steps tbody tr").Filter(new LocatorFilterOptions { Has = page.Locator("a") }).First;
        string tracedStep = (await traced.Locator("td").First.TextContentAsync())!;
        string traceId = metrics().Single(m => m.GetProperty("step").GetRawText() == tracedStep).GetProperty("trace_id").GetString()!;
        Assert.Equal($"http://localhost:16686/trace/{traceId}?step={tracedStep}", await traced.Locator("a").GetAttributeAsync("href"));

        string shot = SystemChromium.ArtifactPath("dashboard-live.png");
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = shot, FullPage = true });
        output.WriteLine($"screenshot: {shot}");

        // The cluster token is in neither the page nor its API.
        using var http = new HttpClient { BaseAddress = url, Timeout = TimeSpan.FromSeconds(20) };
        string everything = await page.ContentAsync() + await http.GetStringAsync("api/runs") + string.Join("\n", await ReadRecords(http, 50));
        Assert.Equal(token, File.ReadAllText(Path.Combine(outDir, "cluster-token")));
        Assert.DoesNotContain(token, everything);
        Assert.Empty(browser.Errors);

        Assert.True(dev.Signal(15));
        var end = dev.WaitForExit(TimeSpan.FromSeconds(60));
        Assert.False(end.TimedOut, end.ToString());
    }

    /// <summary>The URL the process printed in its `[dashboard] URL` line.</summary>
    static Uri PageUrl(CliProcess process)
    {
        var pattern = new System.Text.RegularExpressions.Regex(@"\[dashboard\] (http://\S+/)");
        Assert.True(process.WaitForOutput(o => pattern.IsMatch(o), Startup), $"no [dashboard] line\n{process.StdOut}\n{process.StdErr}");
        return new Uri(pattern.Match(process.StdOut).Groups[1].Value);
    }

    /// <summary>The data of the first <paramref name="count"/> `record` events of /api/events.</summary>
    static async Task<List<string>> ReadRecords(HttpClient http, int count)
    {
        using var stream = await http.GetStreamAsync("api/events");
        using var reader = new StreamReader(stream);
        var records = new List<string>();
        string? kind = null;
        while (records.Count < count && await reader.ReadLineAsync() is { } line)
        {
            if (line.StartsWith("event: ")) kind = line[7..];
            else if (line.StartsWith("data: ") && kind == "record") records.Add(line[6..]);
        }
        return records;
    }
}
