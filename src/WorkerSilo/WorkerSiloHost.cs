using System.Net;
using DistGpt.Contracts;
using DistGpt.Fabric;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Orleans.Runtime;

namespace DistGpt.WorkerSilo;

/// <summary>The worker's Orleans silo in the coordinator's cluster, named after the worker so that its worker grain lives
/// here. Started fresh for every (re)join: a silo the cluster has declared dead can never come back, and one whose
/// coordinator restarted is refused by the new membership table; the worker process itself carries on.</summary>
public sealed class WorkerSiloHost(WorkerOptions options, WorkerSilo worker)
{
    IHost? host;

    public IGrainFactory Grains => host?.Services.GetRequiredService<IGrainFactory>() ?? throw new InvalidOperationException("the silo is not running");

    /// <summary>This silo's address as Orleans membership names it.</summary>
    public string Address => host!.Services.GetRequiredService<ILocalSiloDetails>().SiloAddress.ToParsableString();

    /// <summary>Starts a new silo (stopping the previous one) that joins the cluster whose primary is the coordinator's silo
    /// at <paramref name="coordinator"/>; it advertises <paramref name="local"/>, the address this host reaches it from.</summary>
    public async Task RestartAsync(IPAddress local, IPAddress coordinator, DateTime deadline, CancellationToken cancel)
    {
        await StopAsync();
        var advertise = options.Advertise ?? local;
        var endpoints = new SiloEndpoints(options.Name, advertise, options.SiloPort != 0 ? options.SiloPort : FabricHosting.FreePort(advertise), GatewayPort: 0,
            new IPEndPoint(coordinator, options.CoordinatorSiloPort), ListenOnAnyAddress: !IPAddress.IsLoopback(advertise));
        var authentication = new ClusterAuthentication(options.ClusterToken);
        var failure = new FabricFailure();
        bool givenUp = false; // refused, or the wrong scheme: Orleans' complaints about the cancelled start would only hide the one line that matters
        var silo = FabricHosting.BuildSilo(endpoints, authentication, failure, TimeSpan.FromSeconds(10), line => { if (!givenUp) options.Log(line); },
            services => services.AddSingleton(worker), options.SiloTls);
        using var start = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        start.CancelAfter(deadline - DateTime.UtcNow is var left && left > TimeSpan.Zero ? left : TimeSpan.Zero);
        void GiveUp()
        {
            givenUp = true;
            try { start.Cancel(); } catch (ObjectDisposedException) { }
        }
        authentication.Refused += _ => GiveUp();
        string? mismatch = null;
        int probing = 0;
        authentication.Unanswered += endpoint =>
        {
            if (Interlocked.Exchange(ref probing, 1) == 1) return;
            _ = Task.Run(async () =>
            {
                mismatch = await SchemeProbe.MismatchAsync(options.Coordinator, endpoint);
                if (mismatch == null) probing = 0;
                else GiveUp();
            });
        };
        try { await silo.StartAsync(start.Token); }
        catch (Exception e)
        {
            silo.Dispose();
            cancel.ThrowIfCancellationRequested();
            if (mismatch != null) throw new Model.ConfigException(mismatch);
            if (authentication.Refusal is { } refusal) throw new JoinRefusedException($"the coordinator's cluster refused {options.Name}: {refusal}");
            if (e is OperationCanceledException)
                throw new RunFailedException($"cannot join the coordinator's cluster at {endpoints.Primary} (its silo port, --coordinator-silo-port); gave up after {options.ConnectTimeout.TotalSeconds:F0} s");
            if (e.GetBaseException() is System.Net.Sockets.SocketException { SocketErrorCode: System.Net.Sockets.SocketError.AddressAlreadyInUse })
                throw new Model.ConfigException($"this worker's silo port {endpoints.SiloPort} is in use (--silo-port; leave it out to take a free one)");
            throw new IOException($"the worker silo could not join the cluster at {endpoints.Primary}: {Untrusted.Escape(e.GetBaseException().Message)}", e);
        }
        host = silo;
        _ = failure.Failed.ContinueWith(t => options.Log($"{options.Name}: Orleans gave up on this silo ({t.Result}); it will be replaced at the next join"),
            TaskContinuationOptions.OnlyOnRanToCompletion);
    }

    /// <summary>Leaves the cluster gracefully if that fits in <paramref name="patience"/> (default 3 s), else stops ungracefully.</summary>
    public async Task StopAsync(TimeSpan? patience = null)
    {
        if (host is not { } running) return;
        host = null;
        using var bounded = new CancellationTokenSource(patience ?? TimeSpan.FromSeconds(3));
        try { await running.StopAsync(bounded.Token); }
        catch (Exception e) when (e is OperationCanceledException or OrleansException or TimeoutException or IOException) { }
        running.Dispose();
    }

    /// <summary>For a process about to exit (signalled): the silo is not taken down at all, since even an ungraceful stop
    /// costs ~0.6 s. The exit closes its sockets, the coordinator learns of the leave from the data plane, and Orleans'
    /// probes declare the silo dead.</summary>
    public void Abandon() => host = null;
}
