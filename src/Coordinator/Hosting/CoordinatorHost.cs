using System.Net;
using System.Security.Cryptography.X509Certificates;
using DistGpt.Contracts;
using DistGpt.Coordinator.Grains;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace DistGpt.Coordinator.Hosting;

/// <summary>Hosts the coordinator grain on Kestrel: one TCP (or TLS) endpoint, one connection per worker.</summary>
public sealed class CoordinatorHost : IAsyncDisposable
{
    readonly WebApplication app;

    CoordinatorHost(WebApplication app, Uri address) => (this.app, Address) = (app, address);

    /// <summary>The address workers should use (the bound port when 0 was asked for).</summary>
    public Uri Address { get; }

    public static async Task<CoordinatorHost> StartAsync(Uri listen, CoordinatorGrain grain, Action<string> log,
        string? tlsCert = null, string? tlsKey = null)
    {
        if (listen.Scheme is not ("http" or "https" or "tcp"))
            throw new Model.ConfigException($"--listen '{listen}' must be http://HOST:PORT (or https:// with --tls-cert/--tls-key)");
        bool tls = tlsCert != null;
        if (tls != (tlsKey != null)) throw new Model.ConfigException("--tls-cert and --tls-key go together");
        X509Certificate2? cert = null;
        if (tls)
        {
            try { cert = X509Certificate2.CreateFromPemFile(tlsCert!, tlsKey!); }
            catch (Exception e) when (e is IOException or System.Security.Cryptography.CryptographicException)
            { throw new Model.ConfigException($"cannot load --tls-cert '{tlsCert}' / --tls-key '{tlsKey}': {e.Message}"); }
        }
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton(grain);
        builder.Services.AddSingleton(log);
        IPAddress ip = listen.Host is "localhost" ? IPAddress.Loopback
            : listen.Host is "*" or "+" ? IPAddress.Any
            : IPAddress.TryParse(listen.Host, out var parsed) ? parsed
            : throw new Model.ConfigException($"--listen host '{listen.Host}' must be an IP address (e.g. 0.0.0.0 or 127.0.0.1)");
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Listen(ip, listen.Port, o =>
            {
                o.Protocols = HttpProtocols.None;
                if (cert != null) o.UseHttps(cert);
                o.UseConnectionHandler<WorkerConnectionHandler>();
            });
        });
        var app = builder.Build();
        try { await app.StartAsync(); }
        catch (IOException e) { throw new Model.ConfigException($"cannot listen on {listen}: {e.Message}"); }
        var bound = app.Services.GetRequiredService<Microsoft.AspNetCore.Hosting.Server.IServer>()
            .Features.Get<Microsoft.AspNetCore.Hosting.Server.Features.IServerAddressesFeature>()!.Addresses.First();
        var boundUri = new Uri(bound);
        string host = ip.Equals(IPAddress.Any) ? listen.Host : ip.ToString();
        var address = new UriBuilder(tls ? "https" : "http", host == "*" || host == "+" ? "0.0.0.0" : host, boundUri.Port).Uri;
        log($"coordinator listening on {address}");
        return new CoordinatorHost(app, address);
    }

    public async ValueTask DisposeAsync()
    {
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(2));
        await app.StopAsync(stop.Token);
        await app.DisposeAsync();
    }
}
