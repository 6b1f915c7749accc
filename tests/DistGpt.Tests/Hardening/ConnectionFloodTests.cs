using System.Net;
using System.Net.Sockets;
using Xunit;
using Xunit.Abstractions;

namespace DistGpt.Tests.Hardening;

/// <summary>Review #15, finding 8: idle connections from strangers must not use up the coordinator's file descriptors.</summary>
[Collection(ProcessHeavy.Name)]
public sealed class ConnectionFloodTests(ITestOutputHelper output)
{
    /// <summary>A coordinator with the tiny model holds about 200 descriptors (.NET keeps its assemblies open), so this
    /// leaves it some 180 to spare, fewer than the idle sockets below.</summary>
    const int FileLimit = 384;
    const int SocketsPerPort = 300;

    [Fact]
    public void IdleConnectionsFloodingEveryPortLeaveRoomForAWorkerToJoinAndForTheCheckpoint()
    {
        using var tmp = new TempDirectory("flood");
        int port = DistributedTests.FreePort();
        var env = DistributedTests.Env("flood-token");
        string outDir = tmp.Combine("out");
        using var coordinator = UserErrors.WaitingCoordinator(port, env, outDir, ["--join-timeout", "60", "--max-iters", "20", "--eval-interval", "10"], FileLimit);

        // Data plane, silo and gateway ports: idle sockets until each port stops answering or has SocketsPerPort of them.
        using var flood = new IdleConnections();
        foreach (int p in (int[])[port, port + 1, port + 2]) flood.Open(p, SocketsPerPort);
        Thread.Sleep(TimeSpan.FromSeconds(1));
        output.WriteLine($"fd limit {FileLimit}: {flood.Opened} idle sockets opened, {flood.ClosedByPeer()} already closed by the coordinator");

        // The flood goes on (a new idle socket on each port every 100 ms) while the worker joins and the run checkpoints.
        flood.Drip([port, port + 1, port + 2], TimeSpan.FromMilliseconds(100));
        var worker = CliRunner.Run($"worker --coordinator http://127.0.0.1:{port} --name steadfast --threads 1 --connect-timeout 20", env, TimeSpan.FromSeconds(90));
        var r = coordinator.WaitForExit(TimeSpan.FromSeconds(60));
        output.WriteLine($"{flood.Opened} idle sockets opened in all, {flood.ClosedByPeer()} closed by the coordinator\n{r}");
        Assert.True(worker.ExitCode == 0, $"{worker}\ncoordinator:\n{r}");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.True(Directory.Exists(Path.Combine(outDir, "ckpt")), "no checkpoint");
        Assert.Equal(20, DistributedTests.Metrics(outDir).Count);
        Assert.True(flood.Opened >= 3 * SocketsPerPort, $"only {flood.Opened} idle sockets could be opened");
        // Refusals are throttled: a handful of lines, not one per socket.
        Assert.True(r.StdOut.Split('\n').Count(l => l.Contains("unauthenticated connection") || l.Contains("before joining")) < 20, r.StdOut);
    }

    /// <summary>Sockets that connect and then say nothing, as an attacker holding descriptors would.</summary>
    sealed class IdleConnections : IDisposable
    {
        readonly List<Socket> sockets = new();
        readonly CancellationTokenSource stop = new();
        Task dripping = Task.CompletedTask;

        public int Opened { get { lock (sockets) return sockets.Count; } }

        /// <summary>Up to <paramref name="count"/> sockets to <paramref name="port"/>; stops at the first connect that fails or
        /// takes over a second (a listener that no longer accepts, whose backlog is full).</summary>
        public void Open(int port, int count)
        {
            for (int i = 0; i < count && !stop.IsCancellationRequested; i++)
                if (!TryOpen(port)) return;
        }

        public void Drip(int[] ports, TimeSpan every) => dripping = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                foreach (int port in ports) TryOpen(port);
                try { await Task.Delay(every, stop.Token); } catch (OperationCanceledException) { }
            }
        });

        bool TryOpen(int port)
        {
            var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(1));
                s.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port), timeout.Token).AsTask().GetAwaiter().GetResult();
                lock (sockets) sockets.Add(s);
                return true;
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException)
            {
                s.Dispose();
                return false;
            }
        }

        /// <summary>Sockets the other side has closed: readable with nothing to read.</summary>
        public int ClosedByPeer()
        {
            lock (sockets)
                return sockets.Count(s =>
                {
                    try { return s.Poll(0, SelectMode.SelectRead) && s.Available == 0; }
                    catch (SocketException) { return true; }
                });
        }

        public void Dispose()
        {
            stop.Cancel();
            dripping.Wait(TimeSpan.FromSeconds(5));
            lock (sockets) foreach (var s in sockets) s.Dispose();
        }
    }
}
