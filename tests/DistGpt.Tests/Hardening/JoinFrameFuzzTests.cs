using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using DistGpt.Contracts;
using Xunit;
using Xunit.Abstractions;

namespace DistGpt.Tests.Hardening;

/// <summary>Review #15, the join-frame surface: generated garbage on the coordinator's data-plane, silo and gateway ports
/// leaves it running, logging a few lines, and a real worker still joins.</summary>
[Collection(ProcessHeavy.Name)]
public sealed class JoinFrameFuzzTests(ITestOutputHelper output)
{
    const int Connections = 200;

    [Fact]
    public void GeneratedGarbageOnEveryPortLeavesTheCoordinatorRunningAndAWorkerStillJoins()
    {
        using var tmp = new TempDirectory("fuzz-join");
        int port = DistributedTests.FreePort();
        var env = DistributedTests.Env("fuzz-token");
        string outDir = tmp.Combine("out");
        using var coordinator = UserErrors.WaitingCoordinator(port, env, outDir, ["--join-timeout", "120", "--max-iters", "5"]);

        var random = new Random(15);
        var clock = Stopwatch.StartNew();
        int sent = 0;
        for (; sent < Connections && clock.Elapsed < TimeSpan.FromSeconds(20); sent++)
        {
            bool dataPlane = sent % 4 != 0; // a quarter to the silo and gateway ports
            Send(dataPlane ? port : port + 1 + sent % 8 / 4, dataPlane ? DataPlaneGarbage(random, sent) : ClusterGarbage(random, sent));
        }
        output.WriteLine($"{sent} garbage connections in {clock.Elapsed.TotalSeconds:F1} s");
        Thread.Sleep(TimeSpan.FromSeconds(1));
        Assert.False(coordinator.HasExited, coordinator.StdOut + coordinator.StdErr);

        var worker = CliRunner.Run($"worker --coordinator http://127.0.0.1:{port} --name survivor --threads 1", env, TimeSpan.FromSeconds(90));
        var r = coordinator.WaitForExit(TimeSpan.FromSeconds(60));
        output.WriteLine(r.ToString());
        Assert.True(worker.ExitCode == 0, $"{worker}\ncoordinator:\n{r}");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(5, DistributedTests.Metrics(outDir).Count);
        Assert.DoesNotContain("unexpected", r.StdOut + r.StdErr);
        Assert.DoesNotContain("   at ", r.StdOut + r.StdErr);
        Assert.True(r.StdOut.Split('\n').Length < 40, "refusals are throttled, not one line per connection");
    }

    static void Send(int port, byte[] bytes)
    {
        using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.Connect(IPAddress.Loopback, port);
            socket.Send(bytes);
            socket.Shutdown(SocketShutdown.Send);
        }
        catch (SocketException) { } // closed by the coordinator before all was sent: fine
    }

    /// <summary>Not a frame; a frame with random fields; out-of-range lengths; a join frame with random JSON (wrong
    /// types, nulls, control characters, huge strings); a cut-off hello; a hello with a made-up ticket and more frames.</summary>
    static byte[] DataPlaneGarbage(Random random, int i) => (i % 6) switch
    {
        0 => Bytes(random, random.Next(0, 64)),
        1 => DataPlaneFrames.Raw((byte)random.Next(256), Bytes(random, random.Next(0, 200)), random.NextInt64(long.MinValue, long.MaxValue), (byte)random.Next(256)),
        2 => DataPlaneFrames.Raw((byte)MessageKind.Join, Bytes(random, 8), payloadLength: random.Next(2) == 0 ? -1 : long.MaxValue,
            headerLength: random.Next(3) switch { 0 => -1, 1 => int.MaxValue, _ => 1 << 20 }),
        3 => Join($"{{\"WorkerName\": {Value(random)}, \"Ticket\": {Value(random)}, \"SharedMemory\": {Value(random)}}}"),
        4 => Join($"{{\"WorkerName\": \"w\", \"Ticket\": \"{Convert.ToHexString(Bytes(random, 32))}\", \"SharedMemory\": false}}"[..random.Next(1, 40)]),
        _ => [.. Join($"{{\"WorkerName\": \"w{i}\", \"Ticket\": \"{Convert.ToHexString(Bytes(random, 32))}\", \"SharedMemory\": true}}"),
              .. DataPlaneFrames.Raw((byte)MessageKind.Gradients, "{}"u8.ToArray(), payloadLength: 16), .. Bytes(random, 16)],
    };

    /// <summary>Random bytes; the token handshake's magic with a made-up nonce and proof, or cut short; a TLS hello's first bytes.</summary>
    static byte[] ClusterGarbage(Random random, int i) => (i / 4 % 4) switch
    {
        0 => Bytes(random, random.Next(1, 128)),
        1 => [.. "DGPT-AUTH-1"u8, .. Bytes(random, 64)],
        2 => [.. "DGPT-AUTH-1"u8, .. Bytes(random, random.Next(0, 32))],
        _ => [0x16, 0x03, 0x01, .. Bytes(random, random.Next(0, 100))],
    };

    static byte[] Join(string json) => DataPlaneFrames.Raw((byte)MessageKind.Join, Encoding.UTF8.GetBytes(json));

    static string Value(Random random) => random.Next(8) switch
    {
        0 => "null",
        1 => random.NextInt64().ToString(),
        2 => "1e999",
        3 => "[1, {\"a\": []}]",
        4 => "true",
        5 => System.Text.Json.JsonSerializer.Serialize(new string('x', random.Next(10_000, 100_000))),
        6 => System.Text.Json.JsonSerializer.Serialize(string.Concat(Enumerable.Range(0, 40).Select(_ => (char)random.Next(0, 0x3000)))),
        _ => "{\"nested\": {\"deeper\": [null]}}",
    };

    static byte[] Bytes(Random random, int count)
    {
        var bytes = new byte[count];
        random.NextBytes(bytes);
        return bytes;
    }
}
