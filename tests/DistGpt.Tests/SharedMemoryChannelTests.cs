using System.Runtime.InteropServices;
using DistGpt.Contracts;
using DistGpt.Contracts.Wire;
using Xunit;

namespace DistGpt.Tests;

/// <summary>FrameChannel with /dev/shm regions: large payloads cross through the region and only the prefix and header
/// through the stream; small ones stay on the stream; reads, skips and bf16 widening work from the region.</summary>
public sealed class SharedMemoryChannelTests : IDisposable
{
    readonly SharedMemoryRegion down, up;

    public SharedMemoryChannelTests()
    {
        Assert.NotNull(SharedMemoryRegion.Directory); // Linux: the dev-mode transport needs /dev/shm
        string stem = Path.Combine(SharedMemoryRegion.Directory!, $"distgpt-test-{Guid.NewGuid():N}");
        down = SharedMemoryRegion.Create(stem + "-down", 4 << 20);
        up = SharedMemoryRegion.Open(stem + "-down", 4 << 20); // the peer's mapping of the same file
    }

    public void Dispose()
    {
        string path = down.Path;
        up.Dispose();
        down.Dispose();
        Assert.False(File.Exists(path), "the creator deletes the region's file");
    }

    static byte[] Pattern(int n, int seed)
    {
        var bytes = new byte[n];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    /// <summary>Dev mode's shared weights region: unlinked at creation (nothing in /dev/shm to leak), yet any number of
    /// peers map it by its /proc path and see each other's writes; a wrong announced size is refused.</summary>
    [Fact]
    public unsafe void AnUnlinkedRegionIsMappedByItsPeersThroughProc()
    {
        var before = Directory.GetFiles(SharedMemoryRegion.Directory!, "distgpt-*").ToHashSet();
        using var weights = SharedMemoryRegion.CreateUnlinked(SharedMemoryRegion.Directory!, 1 << 20);
        Assert.StartsWith($"/proc/{Environment.ProcessId}/fd/", weights.Path);
        Assert.DoesNotContain(Directory.GetFiles(SharedMemoryRegion.Directory!, "distgpt-*"), f => !before.Contains(f));
        using var first = SharedMemoryRegion.Open(weights.Path, 1 << 20);
        using var second = SharedMemoryRegion.Open(weights.Path, 1 << 20);
        weights.Pointer[12345] = 77;
        Assert.Equal(77, first.Pointer[12345]);
        Assert.Equal(77, second.Pointer[12345]);
        first.Pointer[99] = 5;
        Assert.Equal(5, weights.Pointer[99]);
        var e = Assert.Throws<ProtocolException>(() => SharedMemoryRegion.Open(weights.Path, 2 << 20));
        Assert.Contains("has 1048576 bytes, announced 2097152", e.Message);
        Assert.Throws<ProtocolException>(() => SharedMemoryRegion.Open("/proc/self/fd/999999", 1 << 20));
    }

    [Fact]
    public async Task LargePayloadsGoThroughTheRegionAndSmallOnesThroughTheStream()
    {
        var wire = new MemoryStream();
        var sender = new FrameChannel(Stream.Null, wire);
        sender.UseSharedMemory(send: down, receive: down);
        byte[] weights = Pattern(3_000_000, 1), windows = Pattern(70_000, 2), small = Pattern(1000, 3);

        await sender.SendAsync(MessageKind.Compute, new Heartbeat("run", 1), default, weights, windows);
        long afterLarge = wire.Length;
        Assert.True(afterLarge < 1000, $"{afterLarge} bytes on the stream for a 3 MB payload: it should hold only the header");
        var receiver = new FrameChannel(new MemoryStream(wire.ToArray()), Stream.Null);
        receiver.UseSharedMemory(send: up, receive: up);
        var frame = await receiver.ReceiveAsync();
        Assert.Equal(weights.Length + windows.Length, frame!.PayloadLength);
        var gotWeights = new byte[weights.Length];
        var gotWindows = new byte[windows.Length];
        await receiver.ReadPayloadAsync(gotWeights); // read in two parts, as a worker reads weights then windows
        await receiver.ReadPayloadAsync(gotWindows);
        Assert.Equal(weights, gotWeights);
        Assert.Equal(windows, gotWindows);
        await Assert.ThrowsAsync<ProtocolException>(() => receiver.ReadPayloadAsync(new byte[1])); // nothing past the end

        wire.SetLength(0);
        await sender.SendAsync(MessageKind.Compute, new Heartbeat("run", 2), default, small);
        Assert.True(wire.Length > small.Length, "a small payload stays on the stream");
        receiver = new FrameChannel(new MemoryStream(wire.ToArray()), Stream.Null);
        receiver.UseSharedMemory(send: up, receive: up);
        frame = await receiver.ReceiveAsync();
        var gotSmall = new byte[small.Length];
        await receiver.ReadPayloadAsync(gotSmall);
        Assert.Equal(small, gotSmall);
    }

    [Fact]
    public async Task Bf16PayloadsWidenAndSkippedPayloadsAreConsumedFromTheRegion()
    {
        var grads = Enumerable.Range(0, 200_000).Select(i => MathF.Sin(i) * 1e-2f).ToArray();
        var narrowed = new byte[grads.Length * 2];
        BFloat16.Narrow(grads, MemoryMarshal.Cast<byte, ushort>(narrowed.AsSpan()));
        var wire = new MemoryStream();
        var sender = new FrameChannel(Stream.Null, wire);
        sender.UseSharedMemory(send: down, receive: down);
        await sender.SendAsync(MessageKind.Gradients, new Heartbeat("run", 1), default, narrowed);
        var receiver = new FrameChannel(new MemoryStream(wire.ToArray()), Stream.Null);
        receiver.UseSharedMemory(send: up, receive: up);
        var frame = await receiver.ReceiveAsync();
        var widened = new byte[grads.Length * 4];
        await receiver.ReadBFloat16PayloadAsync(widened);
        Assert.Equal(grads.Select(g => BFloat16.ToSingle(BFloat16.FromSingle(g))), MemoryMarshal.Cast<byte, float>(widened).ToArray());

        // A stale reply's payload is skipped: the next frame after it reads correctly.
        wire.SetLength(0);
        await sender.SendAsync(MessageKind.Gradients, new Heartbeat("run", 2), default, narrowed);
        await sender.SendAsync(MessageKind.Heartbeat, new Heartbeat("run", 3));
        receiver = new FrameChannel(new MemoryStream(wire.ToArray()), Stream.Null);
        receiver.UseSharedMemory(send: up, receive: up);
        frame = await receiver.ReceiveAsync();
        await receiver.SkipPayloadAsync(frame!.PayloadLength);
        Assert.Equal(3, (await receiver.ReceiveAsync())!.Read<Heartbeat>().Step);
    }

    [Fact]
    public async Task AFrameFlaggedSharedOnAConnectionWithoutRegionsIsAProtocolError()
    {
        var wire = new MemoryStream();
        var sender = new FrameChannel(Stream.Null, wire);
        sender.UseSharedMemory(send: down, receive: down);
        await sender.SendAsync(MessageKind.Compute, new Heartbeat("run", 1), default, Pattern(100_000, 4));
        var receiver = new FrameChannel(new MemoryStream(wire.ToArray()), Stream.Null);
        var e = await Assert.ThrowsAsync<ProtocolException>(() => receiver.ReceiveAsync());
        Assert.Contains("shared memory", e.Message);
    }
}
