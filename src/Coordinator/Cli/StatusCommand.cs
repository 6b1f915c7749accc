using System.CommandLine;
using System.Net;
using System.Text.Json;
using DistGpt.Contracts;
using DistGpt.Fabric;
using DistGpt.Model;
using Microsoft.Extensions.DependencyInjection;
using Orleans.Runtime;

namespace DistGpt.Coordinator.Cli;

/// <summary>`distgpt status`: the run as the coordinator grain reports it and every silo as Orleans' management view sees
/// it, through the coordinator's gateway as an Orleans client holding the cluster token.</summary>
public static class StatusCommand
{
    public static Command Create()
    {
        var coordinator = new Option<string>("--coordinator") { Description = "the coordinator's address, as workers are given it (http://HOST:PORT)", Required = true };
        var gatewayPort = new Option<int?>("--gateway-port") { Description = "the coordinator's Orleans gateway port (its --gateway-port; default: --coordinator's port + 2)" };
        var token = new Option<string>("--cluster-token") { Description = $"shared secret (else ${ClusterOptions.TokenEnvVar})" };
        var json = new Option<bool>("--json") { Description = "one JSON object instead of the table" };
        var tlsCa = new Option<string>("--tls-ca") { Description = "PEM CA certificate of the cluster (with an https:// coordinator)" };
        var timeout = new Option<double>("--timeout") { Description = "seconds to wait for the coordinator", DefaultValueFactory = _ => 10 };
        var command = new Command("status", "Show a running cluster: run, step, losses, tokens/s and every silo.") { coordinator, gatewayPort, token, json, timeout, tlsCa };
        command.SetAction((r, cancel) => ExitCodes.GuardAsync(async () =>
        {
            var uri = CoordinatorCommand.ParseUri(r.GetValue(coordinator)!, "--coordinator");
            int port = CoordinatorCommand.Port(r.GetValue(gatewayPort) ?? FabricHosting.GatewayPortOf(uri.Port), "--gateway-port");
            double seconds = r.GetValue(timeout);
            if (!(seconds > 0 && double.IsFinite(seconds))) throw new ConfigException($"--timeout must be a positive number of seconds (got {seconds})");
            string? secret = r.GetValue(token);
            if (string.IsNullOrEmpty(secret)) secret = Environment.GetEnvironmentVariable(ClusterOptions.TokenEnvVar);
            var gateway = new IPEndPoint(await ResolveAsync(uri.Host), port);

            var authentication = new ClusterAuthentication(string.IsNullOrEmpty(secret) ? null : secret);
            FabricTls? tls = uri.Scheme == "https"
                ? FabricTls.Load(null, null, r.GetValue(tlsCa) ?? throw new ConfigException($"the coordinator {uri} uses TLS: give --tls-ca (the cluster's CA)"))
                : r.GetValue(tlsCa) != null ? throw new ConfigException($"--tls-ca is given but --coordinator {uri} is plain http://") : null;
            using var client = FabricHosting.BuildClient(gateway, authentication, _ => { }, tls);
            using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancel);
            deadline.CancelAfter(TimeSpan.FromSeconds(seconds));
            authentication.Refused += _ => deadline.Cancel();
            RunStatus status;
            Orleans.MembershipEntry[] silos;
            try
            {
                await client.StartAsync(deadline.Token);
                var grains = client.Services.GetRequiredService<IClusterClient>();
                status = await grains.GetGrain<ICoordinatorGrain>(FabricHosting.CoordinatorSilo).GetStatus().WaitAsync(deadline.Token);
                silos = await grains.GetGrain<IManagementGrain>(0).GetDetailedHosts(onlyActive: false).WaitAsync(deadline.Token);
            }
            catch (Exception e) when (!cancel.IsCancellationRequested)
            {
                if (authentication.Refusal is { } refusal) throw new JoinRefusedException($"the coordinator at {gateway} refused: {refusal}");
                throw new RunFailedException($"no DistGpt coordinator answers at {gateway} (its gateway port, --gateway-port): {(e is OperationCanceledException ? $"nothing within {seconds:F0} s" : Untrusted.Escape(e.GetBaseException().Message))}");
            }
            finally
            {
                using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(2));
                try { await client.StopAsync(stop.Token); } catch (Exception) { /* the answer is in; a slow goodbye does not matter */ }
            }
            Console.WriteLine(r.GetValue(json) ? Json(status, silos) : Table(status, silos));
            return ExitCodes.Ok;
        }));
        return command;
    }

    static async Task<IPAddress> ResolveAsync(string host)
    {
        if (IPAddress.TryParse(host, out var ip)) return ip;
        try { return (await Dns.GetHostAddressesAsync(host)).First(a => a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork); }
        catch (Exception e) when (e is System.Net.Sockets.SocketException or InvalidOperationException)
        { throw new ConfigException($"--coordinator host '{host}' does not resolve to an IPv4 address"); }
    }

    static IEnumerable<(Orleans.MembershipEntry Silo, WorkerStatus? Worker)> Rows(RunStatus status, Orleans.MembershipEntry[] silos) =>
        silos.OrderBy(s => s.SiloName != FabricHosting.CoordinatorSilo).ThenBy(s => s.SiloName, StringComparer.Ordinal).ThenBy(s => s.StartTime)
            .Select(s => (s, status.Workers.FirstOrDefault(w => w.Silo == s.SiloAddress.ToParsableString())));

    static string Json(RunStatus status, Orleans.MembershipEntry[] silos) => JsonSerializer.Serialize(new Dictionary<string, object?>
    {
        ["run_id"] = status.RunId,
        ["step"] = status.Step,
        ["max_iters"] = status.MaxIters,
        ["loss"] = status.Loss,
        ["val_loss"] = status.ValLoss,
        ["tokens_per_s"] = status.TokensPerSecond,
        ["silos"] = Rows(status, silos).Select(row => new Dictionary<string, object?>
        {
            ["name"] = row.Silo.SiloName,
            ["address"] = row.Silo.SiloAddress.ToString(),
            ["status"] = row.Silo.Status.ToString(),
            ["rank"] = row.Worker?.Rank,
            ["compute_ms"] = row.Worker?.ComputeMs,
            ["comm_ms"] = row.Worker?.CommMs,
        }).ToList(),
    });

    /// <summary>What the coordinator's grain and Orleans' membership return is printed escaped: a rogue coordinator could
    /// fill it with terminal escapes (--json escapes them as JSON does).</summary>
    static string Table(RunStatus status, Orleans.MembershipEntry[] silos)
    {
        var lines = new List<string>
        {
            $"run {Untrusted.Escape(status.RunId, Untrusted.IdLength)}: step {status.Step}/{status.MaxIters}, loss {Figure(status.Loss, "F4")}, val loss {Figure(status.ValLoss, "F4")}, {Figure(status.TokensPerSecond, "N0")} tokens/s",
            $"{"silo",-20} {"address",-28} {"status",-12} {"rank",4} {"compute ms",10} {"comm ms",8}",
        };
        foreach (var (silo, worker) in Rows(status, silos))
            lines.Add($"{Untrusted.Escape(silo.SiloName, Untrusted.IdLength),-20} {silo.SiloAddress,-28} {silo.Status,-12} {worker?.Rank.ToString() ?? "",4} {Figure(worker?.ComputeMs, "F1"),10} {Figure(worker?.CommMs, "F1"),8}");
        return string.Join(Environment.NewLine, lines);
    }

    static string Figure(double? value, string format) => value is { } v ? v.ToString(format) : "-";
}
