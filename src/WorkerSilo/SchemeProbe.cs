using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using DistGpt.Contracts;
using DistGpt.Contracts.Wire;

namespace DistGpt.WorkerSilo;

/// <summary>Tells a worker whose --coordinator scheme does not match what the coordinator serves. Either side just closes a
/// connection that opens in the other protocol, which looks like a coordinator going away; so once a connection closes
/// unanswered, the other protocol is tried on the same port, and only a positive answer (a TLS handshake from an http://
/// coordinator, a DistGpt frame from an https:// one) ends the join with the fix.</summary>
public static class SchemeProbe
{
    static readonly TimeSpan Timeout = TimeSpan.FromSeconds(3);

    /// <summary>The one-line fix when <paramref name="endpoint"/> speaks the other protocol than <paramref name="coordinator"/>'s
    /// scheme says; null when it does not (or cannot be asked).</summary>
    public static async Task<string?> MismatchAsync(Uri coordinator, EndPoint endpoint)
    {
        if (coordinator.Scheme == "http" && await SpeaksTlsAsync(endpoint))
            return $"the coordinator at {endpoint} serves TLS but --coordinator {coordinator} is plain http://: use https://{coordinator.Authority} " +
                   "with --tls-ca (the cluster's CA) and --tls-cert/--tls-key (this worker's certificate, signed by that CA)";
        if (coordinator.Scheme == "https" && await SpeaksPlainDataPlaneAsync(endpoint))
            return $"the coordinator at {endpoint} does not serve TLS but --coordinator {coordinator} is https://: use http://{coordinator.Authority} " +
                   "without --tls-ca/--tls-cert/--tls-key (or start the coordinator with --tls-cert, --tls-key and --tls-ca)";
        return null;
    }

    /// <summary>Whether a TLS handshake gets a TLS record back (a handshake or an alert), rather than a closed connection or
    /// some other protocol. No certificate is checked: nothing is sent over it.</summary>
    static async Task<bool> SpeaksTlsAsync(EndPoint endpoint)
    {
        using var timeout = new CancellationTokenSource(Timeout);
        using var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
        FirstByteSeen? answer = null;
        try
        {
            await client.ConnectAsync(endpoint, timeout.Token);
            answer = new FirstByteSeen(client);
            await using var tls = new SslStream(answer, leaveInnerStreamOpen: false);
            await tls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
            {
                TargetHost = (endpoint as IPEndPoint)?.Address.ToString(),
                RemoteCertificateValidationCallback = (_, _, _, _) => true,
            }, timeout.Token);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException
            or System.Security.Authentication.AuthenticationException) { }
        return answer?.First is 0x16 or 0x15; // TLS record types: handshake, alert
    }

    sealed class FirstByteSeen(Socket socket) : NetworkStream(socket, ownsSocket: false)
    {
        public int First { get; private set; } = -1;

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancel = default)
        {
            int n = await base.ReadAsync(buffer, cancel);
            if (First < 0 && n > 0) First = buffer.Span[0];
            return n;
        }
    }

    /// <summary>Whether the port answers a plain data-plane hello (with no ticket) with a DistGpt frame.</summary>
    static async Task<bool> SpeaksPlainDataPlaneAsync(EndPoint endpoint)
    {
        using var timeout = new CancellationTokenSource(Timeout);
        using var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
        try
        {
            await client.ConnectAsync(endpoint, timeout.Token);
            await using var stream = new NetworkStream(client);
            var channel = new FrameChannel(stream, stream);
            await channel.SendAsync(MessageKind.Join, new DataPlaneHello("scheme-probe", "", false), timeout.Token);
            return await channel.ReceiveAsync(timeout.Token) is { Kind: MessageKind.JoinRefused };
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException or ProtocolException) { return false; }
    }
}
