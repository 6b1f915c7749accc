using System.Net;
using System.Reflection;
using System.Text;
using System.Text.Json;
using DistGpt.Model;
using DistGpt.Model.IO;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace DistGpt.Dashboard;

/// <summary>The training page: Kestrel in the process that trains (or in `distgpt dashboard`), serving the page's three
/// embedded files (and its icon), the runs' descriptions (/api/runs) and their records as server-sent events (/api/events). Read-only:
/// GET only, no request changes anything. Bound to loopback unless a host is given; on loopback, a request naming
/// another host (a DNS-rebinding page in the user's browser) is refused.</summary>
public sealed class DashboardServer : IAsyncDisposable
{
    /// <summary>A connection waits this long after new records before sending them, so a browser gets one write a second
    /// however fast the steps go.</summary>
    static readonly TimeSpan Coalesce = TimeSpan.FromSeconds(1);
    static readonly TimeSpan KeepAlive = TimeSpan.FromSeconds(15);

    static readonly Dictionary<string, string> Assets = new()
    {
        ["/"] = "index.html", ["/dashboard.js"] = "dashboard.js", ["/dashboard.css"] = "dashboard.css", ["/favicon.svg"] = "favicon.svg",
    };

    readonly WebApplication app;
    readonly CancellationTokenSource stopping;

    DashboardServer(WebApplication app, CancellationTokenSource stopping, Uri url) => (this.app, this.stopping, Url) = (app, stopping, url);

    /// <summary>The page's address (with the port Kestrel took when 0 was asked).</summary>
    public Uri Url { get; }

    public static async Task<DashboardServer> StartAsync(DashboardAddress address, RunStream stream)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Listen(address.Host, address.Port);
        });
        var app = builder.Build();
        var stopping = new CancellationTokenSource();
        if (address.IsLoopback) app.Use(LoopbackHostsOnly);
        app.Use(Headers);
        foreach (var (path, file) in Assets)
        {
            byte[] body = Asset(file);
            string type = Path.GetExtension(file) switch { ".js" => "text/javascript", ".css" => "text/css", ".svg" => "image/svg+xml", _ => "text/html" };
            app.MapGet(path, () => Results.Bytes(body, $"{type}; charset=utf-8"));
        }
        app.MapGet("/api/runs", () => Results.Text(JsonSerializer.Serialize(stream.Runs(), Json.Options), "application/json; charset=utf-8"));
        app.MapGet("/api/events", (HttpContext http) => SendEvents(http, stream, stopping.Token));
        try { await app.StartAsync(); }
        catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException)
        {
            await app.DisposeAsync();
            stopping.Dispose();
            throw new ConfigException($"--dashboard {address}: cannot listen there ({e.Message})");
        }
        var bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return new DashboardServer(app, stopping, new Uri(bound.Replace("://0.0.0.0:", "://127.0.0.1:").Replace("://[::]:", "://[::1]:") + "/"));
    }

    /// <summary>Every record after the Last-Event-ID the browser sends on a reconnect (all of them on the first
    /// connection), then new ones as they come, a few times a second at most.</summary>
    static async Task SendEvents(HttpContext http, RunStream stream, CancellationToken stopping)
    {
        using var both = CancellationTokenSource.CreateLinkedTokenSource(http.RequestAborted, stopping);
        var cancel = both.Token;
        http.Response.ContentType = "text/event-stream";
        http.Response.Headers.CacheControl = "no-store";
        long last = long.TryParse(http.Request.Headers["Last-Event-ID"], out long id) ? id : 0;
        var text = new StringBuilder();
        try
        {
            while (!cancel.IsCancellationRequested)
            {
                var (entries, more) = stream.After(last);
                text.Clear();
                foreach (var e in entries) text.Append("id: ").Append(e.Id).Append("\nevent: ").Append(e.Kind).Append("\ndata: ").Append(e.Json).Append("\n\n");
                if (entries.Length > 0) last = entries[^1].Id;
                else text.Append(": keep-alive\n\n");
                await http.Response.WriteAsync(text.ToString(), cancel);
                await http.Response.Body.FlushAsync(cancel);
                await Task.WhenAny(more, Task.Delay(KeepAlive, cancel));
                if (more.IsCompleted) await Task.Delay(Coalesce, cancel);
            }
        }
        catch (OperationCanceledException) { } // the page closed, or the server stops
    }

    static Task LoopbackHostsOnly(HttpContext http, Func<Task> next)
    {
        string host = http.Request.Host.Host;
        if (host is "localhost" or "127.0.0.1" or "[::1]" or "::1") return next();
        http.Response.StatusCode = StatusCodes.Status400BadRequest;
        return http.Response.WriteAsync("this dashboard answers only to localhost, 127.0.0.1 and [::1]\n");
    }

    /// <summary>No script, style or connection from anywhere but this server; no framing; no inline script.</summary>
    static Task Headers(HttpContext http, Func<Task> next)
    {
        var h = http.Response.Headers;
        h.ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
        h.XContentTypeOptions = "nosniff";
        h.XFrameOptions = "DENY";
        h["Referrer-Policy"] = "no-referrer";
        h.CacheControl = "no-store";
        return next();
    }

    static byte[] Asset(string file)
    {
        using var s = Assembly.GetExecutingAssembly().GetManifestResourceStream("wwwroot/" + file)
                      ?? throw new InvalidOperationException($"the page's {file} is not embedded in {typeof(DashboardServer).Assembly.GetName().Name}");
        using var copy = new MemoryStream();
        s.CopyTo(copy);
        return copy.ToArray();
    }

    public async ValueTask DisposeAsync()
    {
        stopping.Cancel(); // ends the event streams, which would otherwise hold the stop up
        using var patience = new CancellationTokenSource(TimeSpan.FromSeconds(2));
        try { await app.StopAsync(patience.Token); }
        catch (OperationCanceledException) { }
        await app.DisposeAsync();
        stopping.Dispose();
    }
}
