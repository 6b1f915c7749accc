using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Connections;

namespace DistGpt.Fabric;

/// <summary>Only holders of the cluster token get in: every Orleans connection (silo to silo, client to gateway) opens
/// with a mutual challenge-response over the token before Orleans sees a byte. Each side sends a fresh nonce and proves
/// it knows the token with an HMAC over both nonces and its role; the token itself never crosses the wire, and a
/// recorded handshake cannot be replayed. Orleans' own endpoints are otherwise open to anyone who can reach them, so
/// connections that have not passed the handshake yet are bounded in number and time (<see cref="Strangers"/>).</summary>
public sealed class ClusterAuthentication(string? token, Action<string>? log = null)
{
    static readonly byte[] Magic = "DGPT-AUTH-1"u8.ToArray();
    const int NonceBytes = 32, MacBytes = 32;
    const byte Accepted = 1, Rejected = 0;
    static readonly TimeSpan HandshakeTimeout = TimeSpan.FromSeconds(5);

    readonly byte[] key = SHA256.HashData(Encoding.UTF8.GetBytes(token ?? ""));
    readonly FailedAttempts failures = new();
    readonly ThrottledLog refusals = new(log ?? (_ => { }));

    /// <summary>Inbound connections that have not passed the handshake yet (see <see cref="ScreenedListenerFactory"/>).</summary>
    public UnauthenticatedConnections Strangers { get; } = new("cluster ports (silo and gateway)", log ?? (_ => { }));

    /// <summary>Why this process's last outbound connection was refused, for a worker to report instead of retrying.</summary>
    public string? Refusal { get; private set; }
    public event Action<string>? Refused;
    /// <summary>An outbound connection was closed before the other side answered the handshake: a silo restarting, or one
    /// that speaks TLS when this one does not (see WorkerSilo.SchemeProbe).</summary>
    public event Action<EndPoint>? Unanswered;

    /// <summary>Inbound (silo and gateway listeners, inside TLS): the peer must prove the token first.</summary>
    public async Task AcceptAsync(ConnectionContext connection, ConnectionDelegate next)
    {
        var peer = (connection.RemoteEndPoint as IPEndPoint)?.Address;
        using var timeout = new CancellationTokenSource(HandshakeTimeout);
        try
        {
            if (peer != null) await failures.DelayAsync(peer, timeout.Token);
            var hello = await ReadAsync(connection.Transport.Input, Magic.Length + NonceBytes, timeout.Token);
            if (hello == null || !hello.AsSpan(0, Magic.Length).SequenceEqual(Magic))
            {
                refusals.Write($"refused a cluster connection from {connection.RemoteEndPoint}: no DistGpt token handshake");
                if (peer != null) failures.Record(peer);
                connection.Abort();
                return;
            }
            var clientNonce = hello[Magic.Length..];
            var serverNonce = RandomNumberGenerator.GetBytes(NonceBytes);
            await WriteAsync(connection.Transport.Output, [.. serverNonce, .. Mac("server", clientNonce, serverNonce)], timeout.Token);
            var proof = await ReadAsync(connection.Transport.Input, MacBytes, timeout.Token);
            bool ok = proof != null && CryptographicOperations.FixedTimeEquals(proof, Mac("client", clientNonce, serverNonce));
            await WriteAsync(connection.Transport.Output, [ok ? Accepted : Rejected], timeout.Token);
            if (!ok)
            {
                refusals.Write($"refused a cluster connection from {connection.RemoteEndPoint}: {(proof == null ? "it closed before proving the cluster token" : "wrong cluster token")}");
                if (peer != null) failures.Record(peer);
                connection.Abort();
                return;
            }
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or ConnectionAbortedException or ConnectionResetException or InvalidOperationException)
        {
            connection.Abort();
            return;
        }
        (connection.Items[typeof(UnauthenticatedConnections.Entry)] as UnauthenticatedConnections.Entry)?.Authenticated();
        await next(connection);
    }

    /// <summary>Outbound: prove the token, and check that the other side knows it too.</summary>
    public async Task ConnectAsync(ConnectionContext connection, ConnectionDelegate next)
    {
        using var timeout = new CancellationTokenSource(HandshakeTimeout);
        try
        {
            var clientNonce = RandomNumberGenerator.GetBytes(NonceBytes);
            await WriteAsync(connection.Transport.Output, [.. Magic, .. clientNonce], timeout.Token);
            var answer = await ReadAsync(connection.Transport.Input, NonceBytes + MacBytes, timeout.Token);
            if (answer == null)
            {
                if (connection.RemoteEndPoint is { } remote) Unanswered?.Invoke(remote);
                connection.Abort();
                return;
            }
            var serverNonce = answer[..NonceBytes];
            if (!CryptographicOperations.FixedTimeEquals(answer.AsSpan(NonceBytes), Mac("server", clientNonce, serverNonce)))
            {
                Refuse($"authentication failed: the cluster at {connection.RemoteEndPoint} has another cluster token (--cluster-token or DISTGPT_CLUSTER_TOKEN), or is no DistGpt silo");
                connection.Abort();
                return;
            }
            await WriteAsync(connection.Transport.Output, Mac("client", clientNonce, serverNonce), timeout.Token);
            var verdict = await ReadAsync(connection.Transport.Input, 1, timeout.Token);
            if (verdict is not [Accepted])
            {
                Refuse("authentication failed: wrong cluster token");
                connection.Abort();
                return;
            }
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or ConnectionAbortedException or ConnectionResetException or InvalidOperationException)
        {
            connection.Abort();
            return;
        }
        Refusal = null;
        await next(connection);
    }

    void Refuse(string why)
    {
        Refusal = why;
        Refused?.Invoke(why);
    }

    byte[] Mac(string role, byte[] clientNonce, byte[] serverNonce) =>
        HMACSHA256.HashData(key, (byte[])[.. Encoding.ASCII.GetBytes(role), .. clientNonce, .. serverNonce]);

    static async Task WriteAsync(PipeWriter output, byte[] bytes, CancellationToken cancel)
    {
        await output.WriteAsync(bytes, cancel);
    }

    /// <summary>Exactly <paramref name="count"/> bytes, leaving whatever follows for Orleans; null when the peer closed first.</summary>
    static async Task<byte[]?> ReadAsync(PipeReader input, int count, CancellationToken cancel)
    {
        while (true)
        {
            var result = await input.ReadAsync(cancel);
            var buffer = result.Buffer;
            if (buffer.Length >= count)
            {
                var bytes = buffer.Slice(0, count).ToArray();
                input.AdvanceTo(buffer.GetPosition(count));
                return bytes;
            }
            if (result.IsCompleted || result.IsCanceled)
            {
                input.AdvanceTo(buffer.End);
                return null;
            }
            input.AdvanceTo(buffer.Start, buffer.End);
        }
    }

    /// <summary>Slows down token guessing: after a failed proof from an address, its next attempts wait, doubling with
    /// each failure up to a few seconds; a success does not reset it, an hour of quiet does.</summary>
    sealed class FailedAttempts
    {
        readonly Dictionary<IPAddress, (int Count, DateTime Last)> byAddress = new();

        public void Record(IPAddress peer)
        {
            lock (byAddress)
            {
                if (byAddress.Count > 10_000) byAddress.Clear();
                var (count, _) = byAddress.GetValueOrDefault(peer);
                byAddress[peer] = (count + 1, DateTime.UtcNow);
            }
        }

        public Task DelayAsync(IPAddress peer, CancellationToken cancel)
        {
            (int Count, DateTime Last) entry;
            lock (byAddress)
                if (!byAddress.TryGetValue(peer, out entry)) return Task.CompletedTask;
            if (DateTime.UtcNow - entry.Last > TimeSpan.FromHours(1)) return Task.CompletedTask;
            var wait = TimeSpan.FromMilliseconds(Math.Min(4000, 50 * Math.Pow(2, Math.Min(entry.Count, 10))));
            return Task.Delay(wait, cancel);
        }
    }
}
