using System.CommandLine;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using DistGpt.Contracts;
using DistGpt.Contracts.Wire;
using DistGpt.Coordinator.Hosting;
using DistGpt.Model;
using DistGpt.Model.Engine;
using DistGpt.Model.IO;

namespace DistGpt.Coordinator.Cli;

/// <summary>`distgpt bench-exchange`: times one full weight set down and one full gradient set up between this
/// (coordinator) process and a child worker process, through the coordinator's real socket setup and framing,
/// next to a plain TCP socket moving the same bytes in the same run. Prints medians and their ratio; last line JSON.</summary>
public static class ExchangeBenchCommand
{
    public static Command Create()
    {
        var config = new Option<string>("--config") { Description = "tiny | cpu | shakespeare (parameter count to move)", DefaultValueFactory = _ => "shakespeare" };
        var rounds = new Option<int>("--rounds") { Description = "timed round trips per transport", DefaultValueFactory = _ => 10 };
        var command = new Command("bench-exchange", "Time a weights-down + gradients-up exchange with a worker process, next to raw TCP.") { config, rounds };
        command.SetAction((r, _) => ExitCodes.GuardAsync(() => RunAsync(BenchCommand.Find(r.GetValue(config)!), r.GetValue(rounds))));
        return command;
    }

    /// <summary>The hidden worker side of bench-exchange, started as a child process.</summary>
    public static Command CreatePeer()
    {
        var peer = new Command("bench-exchange-peer", "(internal) the worker side of bench-exchange") { Hidden = true };
        var address = new Argument<string>("address");
        var mode = new Argument<string>("mode");
        var bytes = new Argument<long>("bytes");
        peer.Arguments.Add(address);
        peer.Arguments.Add(mode);
        peer.Arguments.Add(bytes);
        peer.SetAction((r, _) => ExitCodes.GuardAsync(() => PeerAsync(r.GetValue(address)!, r.GetValue(mode)!, r.GetValue(bytes))));
        return peer;
    }

    static async Task<int> RunAsync(BenchCommand.Preset preset, int rounds)
    {
        long parameters;
        using (var model = new Gpt(preset.Model with { VocabSize = 65 })) parameters = model.Parameters.Count;
        long bytes = parameters * sizeof(float);
        Console.WriteLine($"{preset.Name}: {parameters:N0} parameters = {bytes / 1e6:F1} MB each way, {rounds} rounds per transport");
        using var buffer = new NativeBuffer(parameters);
        var framed = await TimeFramedAsync(buffer, rounds);
        var raw = await TimeRawAsync(bytes, rounds);
        double f = Median(framed), t = Median(raw);
        Console.WriteLine($"framed (coordinator host + FrameChannel)   : median {f:F1} ms per round trip ({2 * bytes / (f / 1000) / 1e9:F2} GB/s)");
        Console.WriteLine($"raw TCP socket, same bytes:                        median {t:F1} ms per round trip ({2 * bytes / (t / 1000) / 1e9:F2} GB/s)");
        Console.WriteLine($"ratio framed / raw: {f / t:F2}");
        Console.WriteLine(JsonSerializer.Serialize(new { config = preset.Name, parameters, bytes_each_way = bytes, framed_ms = Math.Round(f, 2), raw_tcp_ms = Math.Round(t, 2), ratio = Math.Round(f / t, 3) }, Json.Options));
        return 0;
    }

    static double Median(List<double> xs)
    {
        xs.Sort();
        return xs.Count % 2 == 1 ? xs[xs.Count / 2] : (xs[xs.Count / 2 - 1] + xs[xs.Count / 2]) / 2;
    }

    static async Task<List<double>> TimeFramedAsync(NativeBuffer buffer, int rounds)
    {
        var times = new List<double>();
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        using var child = StartPeer($"127.0.0.1:{port}", "framed", buffer.Length * sizeof(float));
        using var socket = await listener.AcceptSocketAsync();
        listener.Stop();
        var stream = CoordinatorHost.Tune(socket);
        await using var channel = new FrameChannel(stream, stream);
        var request = new ComputeRequest("bench", 0, 0, "bench", 0, 0);
        for (int i = 0; i < rounds + 2; i++)
        {
            var clock = Stopwatch.StartNew();
            await channel.SendAsync(MessageKind.Compute, request, default, NativeMemoryManager.Bytes(buffer));
            var frame = await channel.ReceiveAsync() ?? throw new IOException("peer closed");
            await channel.ReadPayloadAsync(NativeMemoryManager.Bytes(buffer));
            if (i >= 2) times.Add(clock.Elapsed.TotalMilliseconds); // two warm-up rounds
        }
        await channel.SendAsync(MessageKind.Shutdown, new Shutdown("bench", "done"));
        await child.WaitForExitAsync();
        return times;
    }

    static async Task<List<double>> TimeRawAsync(long bytes, int rounds)
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        using var child = StartPeer($"127.0.0.1:{port}", "raw", bytes);
        var socket = await listener.AcceptSocketAsync();
        using var stream = CoordinatorHost.Tune(socket);
        var data = GC.AllocateUninitializedArray<byte>((int)bytes, pinned: true);
        var times = new List<double>();
        for (int i = 0; i < rounds + 2; i++)
        {
            var clock = Stopwatch.StartNew();
            await stream.WriteAsync(data);
            await stream.ReadExactlyAsync(data);
            if (i >= 2) times.Add(clock.Elapsed.TotalMilliseconds);
        }
        socket.Shutdown(SocketShutdown.Both);
        await child.WaitForExitAsync();
        listener.Stop();
        return times;
    }

    static Process StartPeer(string address, string mode, long bytes)
    {
        var info = WorkerProcesses.SelfCommand(["bench-exchange-peer", address, mode, bytes.ToString()]);
        info.RedirectStandardOutput = false;
        info.RedirectStandardError = false;
        return Process.Start(info)!;
    }

    static async Task<int> PeerAsync(string address, string mode, long bytes)
    {
        var parts = address.Split(':');
        using var client = new TcpClient { NoDelay = true };
        await client.ConnectAsync(parts[0], int.Parse(parts[1]));
        var stream = client.GetStream();
        if (mode == "raw")
        {
            var data = GC.AllocateUninitializedArray<byte>((int)bytes, pinned: true);
            while (true)
            {
                try { await stream.ReadExactlyAsync(data); }
                catch (EndOfStreamException) { return 0; }
                await stream.WriteAsync(data);
            }
        }
        await using var channel = new FrameChannel(stream, stream);
        using var buffer = new NativeBuffer(bytes / sizeof(float));
        while (await channel.ReceiveAsync() is { } frame && frame.Kind == MessageKind.Compute)
        {
            await channel.ReadPayloadAsync(NativeMemoryManager.Bytes(buffer));
            var reply = new GradientsReply("bench", 0, 0, "bench", 0, 0, 0, 0, 0, 0);
            await channel.SendAsync(MessageKind.Gradients, reply, default, NativeMemoryManager.Bytes(buffer));
        }
        return 0;
    }
}
