using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using DistGpt.Contracts;
using DistGpt.Contracts.Wire;

namespace DistGpt.WorkerSilo;

/// <summary>The worker's data-plane connection, and the addresses it runs between (the local one is what this worker's
/// silo advertises; the remote one is the coordinator's host, where its silo is).</summary>
public sealed record DataPlaneLink(FrameChannel Channel, System.Net.IPAddress Local, System.Net.IPAddress Remote);

/// <summary>Opens the worker's data-plane connection to the coordinator, retrying with exponential backoff until a deadline.</summary>
public static class CoordinatorConnector
{
    public static async Task<DataPlaneLink> ConnectAsync(WorkerOptions options, DateTime deadline, CancellationToken cancel)
    {
        var uri = options.Coordinator;
        var delay = TimeSpan.FromMilliseconds(200);
        for (int attempt = 1; ; attempt++)
        {
            var client = new TcpClient { NoDelay = true, SendBufferSize = 4 << 20, ReceiveBufferSize = 4 << 20 };
            try
            {
                using var attemptTimeout = CancellationTokenSource.CreateLinkedTokenSource(cancel);
                attemptTimeout.CancelAfter(TimeSpan.FromSeconds(5));
                await client.ConnectAsync(uri.Host, uri.Port, attemptTimeout.Token);
                Stream stream = client.GetStream();
                var local = Unmapped(((System.Net.IPEndPoint)client.Client.LocalEndPoint!).Address);
                var peer = (System.Net.IPEndPoint)client.Client.RemoteEndPoint!;
                peer = new System.Net.IPEndPoint(Unmapped(peer.Address), peer.Port);
                if (uri.Scheme == "https") // bounded: a silent peer must not hold the worker
                {
                    try { stream = await AuthenticateTlsAsync(stream, uri.Host, options.TlsCaPath, attemptTimeout.Token); }
                    catch (IOException) // closed during the handshake: a plain coordinator does that
                    {
                        if (await SchemeProbe.MismatchAsync(uri, peer) is not { } mismatch) throw;
                        client.Dispose();
                        throw new Model.ConfigException(mismatch);
                    }
                }
                return new DataPlaneLink(new FrameChannel(stream, stream), local, peer.Address);
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException or IOException && !cancel.IsCancellationRequested)
            {
                client.Dispose();
                if (DateTime.UtcNow + delay > deadline)
                    throw new RunFailedException($"cannot reach the coordinator at {uri} ({e.Message}); gave up after {options.ConnectTimeout.TotalSeconds:F0} s and {attempt} attempts");
                if (attempt == 1 || attempt % 10 == 0) options.Log($"{options.Name}: coordinator at {uri} not reachable ({e.Message}); retrying");
                await Task.Delay(delay, cancel);
                delay = TimeSpan.FromMilliseconds(Math.Min(delay.TotalMilliseconds * 2, 5000));
            }
            catch (System.Security.Authentication.AuthenticationException e)
            {
                client.Dispose();
                throw new JoinRefusedException($"TLS with the coordinator at {uri} failed: {e.Message}");
            }
        }
    }

    static System.Net.IPAddress Unmapped(System.Net.IPAddress a) => a.IsIPv4MappedToIPv6 ? a.MapToIPv4() : a;

    static async Task<Stream> AuthenticateTlsAsync(Stream stream, string host, string? caPath, CancellationToken cancel)
    {
        var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
        var options = new SslClientAuthenticationOptions { TargetHost = host };
        if (caPath != null)
        {
            var ca = X509CertificateLoader.LoadCertificateFromFile(caPath);
            options.RemoteCertificateValidationCallback = (_, cert, _, errors) =>
            {
                if (cert == null) return false;
                using var chain = new X509Chain();
                chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
                chain.ChainPolicy.CustomTrustStore.Add(ca);
                chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
                bool nameOk = (errors & SslPolicyErrors.RemoteCertificateNameMismatch) == 0;
                return nameOk && chain.Build(new X509Certificate2(cert));
            };
        }
        await ssl.AuthenticateAsClientAsync(options, cancel);
        return ssl;
    }
}
