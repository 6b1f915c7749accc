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
        var dtype = new ClusterOptions().WireDType;
        var command = new Command("bench-exchange", "Time a weights-down + gradients-up exchange with a worker process, next to raw TCP.") { config, rounds, dtype };
        command.SetAction((r, _) => ExitCodes.GuardAsync(() =>
        {
            Check.InRange(r.GetValue(rounds), 1, 1 << 16, "--rounds");
            return RunAsync(BenchCommand.Find(r.GetValue(config)!), r.GetValue(rounds),
                WireDTypes.Parse(r.GetValue(dtype)) ?? throw new ConfigException($"--wire-dtype must be fp32 or bf16 (got '{r.GetValue(dtype)}')"));
        }));
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

    static async Task<int> RunAsync(BenchCommand.Preset preset, int rounds, WireDType dtype)
    {
        long parameters;
        using (var model = new Gpt(preset.Model with { VocabSize = 65 })) parameters = model.Parameters.Count;
        long bytes = parameters * sizeof(float), upBytes = parameters * dtype.Size();
        Console.WriteLine($"{preset.Name}: {parameters:N0} parameters = {bytes / 1e6:F1} MB down (fp32 weights), {upBytes / 1e6:F1} MB up ({dtype.Name()} gradients), {rounds} rounds per transport");
        using var buffer = new NativeBuffer(parameters);
        var framed = await TimeFramedAsync(buffer, rounds, dtype);
        var raw = await TimeRawAsync(bytes, upBytes, rounds);
        double f = Median(framed), t = Median(raw);
        Console.WriteLine($"framed (coordinator host + FrameChannel)   : median {f:F1} ms per round trip ({(bytes + upBytes) / (f / 1000) / 1e9:F2} GB/s)");
        Console.WriteLine($"raw TCP socket, same bytes:                        median {t:F1} ms per round trip ({(bytes + upBytes) / (t / 1000) / 1e9:F2} GB/s)");
        Console.WriteLine($"ratio framed / raw: {f / t:F2}");
        Console.WriteLine(JsonSerializer.Serialize(new { config = preset.Name, parameters, wire_dtype = dtype.Name(), bytes_down = bytes, bytes_up = upBytes, framed_ms = Math.Round(f, 2), raw_tcp_ms = Math.Round(t, 2), ratio = Math.Round(f / t, 3) }, Json.Options));
        return 0;
    }

    static double Median(List<double> xs)
    {
        xs.Sort();
        return xs.Count % 2 == 1 ? xs[xs.Count / 2] : (xs[xs.Count / 2 - 1] + xs[xs.Count / 2]) / 2;
    }

    static async Task<List<double>> TimeFramedAsync(NativeBuffer buffer, int rounds, WireDType dtype)
    {
        var times = new List<double>();
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        using var child = StartPeer($"127.0.0.1:{port}", "framed-" + dtype.Name(), buffer.Length * sizeof(float));
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
            if (dtype == WireDType.Bf16) await channel.ReadBFloat16PayloadAsync(NativeMemoryManager.Bytes(buffer)); // widened as it arrives
            else await channel.ReadPayloadAsync(NativeMemoryManager.Bytes(buffer));
            if (i >= 2) times.Add(clock.Elapsed.TotalMilliseconds); // two warm-up rounds
        }
        await channel.SendAsync(MessageKind.Shutdown, new Shutdown("bench", "done"));
        await child.WaitForExitAsync();
        return times;
    }

    static async Task<List<double>> TimeRawAsync(long bytes, long upBytes, int rounds)
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        using var child = StartPeer($"127.0.0.1:{port}", upBytes == bytes ? "raw" : "raw-half", bytes);
        var socket = await listener.AcceptSocketAsync();
        using var stream = CoordinatorHost.Tune(socket);
        var data = GC.AllocateUninitializedArray<byte>((int)bytes, pinned: true);
        var times = new List<double>();
        for (int i = 0; i < rounds + 2; i++)
        {
            var clock = Stopwatch.StartNew();
            await stream.WriteAsync(data);
            await stream.ReadExactlyAsync(data.AsMemory(0, (int)upBytes));
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
        if (mode is "raw" or "raw-half")
        {
            var data = GC.AllocateUninitializedArray<byte>((int)bytes, pinned: true);
            var up = data.AsMemory(0, mode == "raw" ? data.Length : data.Length / 2);
            while (true)
            {
                try { await stream.ReadExactlyAsync(data); }
                catch (EndOfStreamException) { return 0; }
                await stream.WriteAsync(up);
            }
        }
        bool bf16 = mode == "framed-bf16";
        await using var channel = new FrameChannel(stream, stream);
        using var buffer = new NativeBuffer(bytes / sizeof(float));
        var narrowed = bf16 ? GC.AllocateUninitializedArray<byte>((int)(bytes / 2), pinned: true) : null;
        while (await channel.ReceiveAsync() is { } frame && frame.Kind == MessageKind.Compute)
        {
            await channel.ReadPayloadAsync(NativeMemoryManager.Bytes(buffer));
            var reply = new GradientsReply("bench", 0, 0, "bench", 0, 0, 0, 0, 0, 0);
            ReadOnlyMemory<byte> payload = NativeMemoryManager.Bytes(buffer);
            if (narrowed != null)
            {
                BFloat16.Narrow(buffer.Span, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(narrowed.AsSpan())); // as a worker does
                payload = narrowed;
            }
            await channel.SendAsync(MessageKind.Gradients, reply, default, payload);
        }
        return 0;
    }
}
