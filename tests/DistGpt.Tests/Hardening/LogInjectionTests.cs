using System.Net;
using System.Net.Sockets;
using System.Text;
using DistGpt.Contracts;
using DistGpt.Fabric;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Xunit;
using Xunit.Abstractions;

namespace DistGpt.Tests.Hardening;

/// <summary>Review #15, finding 9: a string from the network never reaches a log line raw.</summary>
[Collection(ProcessHeavy.Name)]
public sealed class LogInjectionTests(ITestOutputHelper output)
{
    const string Forged = "\n[coordinator] worker 'admin' joined as rank 0 (1 active)";
    const string Red = "\u001b[31m";

    [Theory]
    [InlineData("plain name-1.2", "plain name-1.2")]
    [InlineData("a\nb\r\tc", "a\\nb\\r\\tc")]
    [InlineData("\u001b[31mred", "\\u001b[31mred")]
    [InlineData("csi\u009b31m", "csi\\u009b31m")]              // C1 control: a terminal escape on its own
    [InlineData("rtl\u202egnp.exe", "rtl\\u202egnp.exe")]      // bidi override
    [InlineData("line\u2028sep", "line\\u2028sep")]
    [InlineData("emoji \ud83d\ude00 stays", "emoji \ud83d\ude00 stays")]
    [InlineData("quote \" and back\\slash", "quote \" and back\\slash")] // not quoted: left as they are
    public void EscapeTurnsEveryControlOrInvisibleCharacterIntoAJsonStyleEscape(string text, string escaped)
    {
        Assert.Equal(escaped, Untrusted.Escape(text));
    }

    [Fact]
    public void QuoteAlsoEscapesQuotesAndBackslashesAndCutsLongValuesWithAnEllipsis()
    {
        Assert.Equal("\"say \\\"hi\\\" \\\\ \\n\"", Untrusted.Quote("say \"hi\" \\ \n"));
        Assert.Equal("null", Untrusted.Quote(null));
        Assert.Equal("\"abcd…\"", Untrusted.Quote("abcdefgh", 4));
        Assert.Equal("ab…", Untrusted.Escape("ab\ud83d\ude00", 3)); // a pair is not cut in half
        Assert.Equal("lone \\ud800 surrogate", Untrusted.Escape($"lone {(char)0xd800} surrogate")); // not in [InlineData]: it would not survive
        string huge = Untrusted.Escape(new string('\u001b', 1 << 20));
        Assert.Equal(Untrusted.DefaultMaxLength * 6 + 1, huge.Length);
    }

    /// <summary>Join requests (through the gateway, as a token holder would send them) and data-plane hellos with newlines
    /// and ANSI escapes in every field the coordinator reports: its output shows them escaped, never raw.</summary>
    [Fact]
    public async Task ForgedLinesAndTerminalEscapesInJoinFieldsNeverReachTheCoordinatorsOutputRaw()
    {
        using var tmp = new TempDirectory("inject");
        int port = DistributedTests.FreePort();
        const string token = "inject-token";
        using var coordinator = UserErrors.WaitingCoordinator(port, DistributedTests.Env(token), tmp.Combine("out"), ["--max-iters", "5"]);

        using var client = FabricHosting.BuildClient(new IPEndPoint(IPAddress.Loopback, port + 2), new ClusterAuthentication(token), _ => { });
        await client.StartAsync().WaitAsync(TimeSpan.FromSeconds(60));
        var grain = client.Services.GetRequiredService<IClusterClient>().GetGrain<ICoordinatorGrain>(FabricHosting.CoordinatorSilo);
        string evil = Red + Forged;
        var valid = new JoinRequest("fine", BuildInfo.Version, BuildInfo.ProtocolVersion, 1, null, null, token);
        JoinRequest[] requests =
        [
            valid with { WorkerName = evil },
            valid with { WorkerName = evil, ClusterToken = "wrong" },
            valid with { BuildVersion = evil },
            valid with { ExpectedConfigHash = evil },
            valid with { DataSha256 = Red + "\n[c" },
            valid with { Silo = evil },
        ];
        foreach (var request in requests)
        {
            var decision = await grain.Join(request);
            Assert.Null(decision.Accepted);
            Assert.DoesNotContain(Red, decision.RefusedReason);
            Assert.DoesNotContain("\n", decision.RefusedReason);
        }
        // A data-plane hello whose JSON error names a property made of the forged line.
        await SendRawHelloAsync(port, $"{{\"{EscapedForJson(evil)}\": {{\"a\": }}}}");

        Thread.Sleep(500);
        coordinator.Kill();
        var r = coordinator.WaitForExit(TimeSpan.FromSeconds(10));
        output.WriteLine(r.ToString());
        string all = r.StdOut + r.StdErr;
        Assert.DoesNotContain(Red, all);
        Assert.DoesNotContain(r.StdOut.Split('\n'), line => line.StartsWith("[coordinator] worker 'admin'"));
        Assert.Equal(requests.Length, r.StdOut.Split('\n').Count(line => line.StartsWith("[coordinator] refused worker")));
        Assert.Contains("\\u001b[31m\\n[coordinator] worker 'admin'", r.StdOut); // there, escaped
    }

    static string EscapedForJson(string s) => System.Text.Json.JsonSerializer.Serialize(s)[1..^1];

    static async Task SendRawHelloAsync(int port, string header)
    {
        using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(IPAddress.Loopback, port);
        await socket.SendAsync(DataPlaneFrames.Raw((byte)MessageKind.Join, Encoding.UTF8.GetBytes(header)));
        var buffer = new byte[64];
        using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        try { while (await socket.ReceiveAsync(buffer, wait.Token) > 0) { } } // until the coordinator closes it
        catch (Exception e) when (e is SocketException or OperationCanceledException) { }
    }
}
