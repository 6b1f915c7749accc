using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Xunit;

namespace DistGpt.Tests.Hardening;

/// <summary>Review #15, findings 2 and 11: who may open a cluster, and a worker facing a coordinator that never answers.</summary>
[Collection(ProcessHeavy.Name)]
public sealed class ClusterEntryTests
{
    [Fact]
    public void ACoordinatorReachableBeyondLoopbackWithoutATokenRefusesToStartUnlessTold()
    {
        using var tmp = new TempDirectory("notoken");
        var env = DistributedTests.Env(token: "");
        var r = CliRunner.Run($"coordinator --listen http://0.0.0.0:{DistributedTests.FreePort()} --out {tmp.Path}", env, TimeSpan.FromSeconds(60));
        UserErrors.AssertOneLineError(r, 2, "no cluster token", "--allow-unauthenticated");
        Assert.False(File.Exists(Path.Combine(tmp.Path, "metrics.jsonl")));
    }

    [Fact]
    public void AWorkerFacingACoordinatorThatAcceptsButNeverAnswersGivesUpAfterItsConnectTimeout()
    {
        int port = DistributedTests.FreePort();
        // The data plane and the silo port both accept connections and never send a byte.
        using var silent = new SilentListeners(port, port + 1);
        var clock = Stopwatch.StartNew();
        var r = CliRunner.Run($"worker --coordinator http://127.0.0.1:{port} --name patient --threads 1 --connect-timeout 3",
            DistributedTests.Env("t"), TimeSpan.FromSeconds(90));
        Assert.False(r.TimedOut, r.ToString());
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"gave up after {clock.Elapsed.TotalSeconds:F0} s\n{r}");
        UserErrors.AssertOneLineError(r, 1, "gave up after 3 s");
        Assert.True(silent.Accepted > 0, "the worker never even connected");
    }

    sealed class SilentListeners : IDisposable
    {
        readonly List<TcpListener> listeners = new();
        readonly List<Socket> held = new();
        int accepted;

        public SilentListeners(params int[] ports)
        {
            foreach (int port in ports)
            {
                var l = new TcpListener(IPAddress.Loopback, port);
                l.Start();
                listeners.Add(l);
                _ = Task.Run(async () =>
                {
                    try
                    {
                        while (true)
                        {
                            var s = await l.AcceptSocketAsync();
                            Interlocked.Increment(ref accepted);
                            lock (held) held.Add(s);
                        }
                    }
                    catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
                });
            }
        }

        public int Accepted => Volatile.Read(ref accepted);

        public void Dispose()
        {
            foreach (var l in listeners) l.Stop();
            lock (held) foreach (var s in held) s.Dispose();
        }
    }
}
