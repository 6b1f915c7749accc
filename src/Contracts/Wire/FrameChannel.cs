using System.Runtime.CompilerServices;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Json;
using DistGpt.Model.IO;
using DistGpt.Model.Training;

namespace DistGpt.Contracts.Wire;

/// <summary>A received frame's header; its payload (PayloadLength bytes) must be read or skipped next.</summary>
public sealed record Frame(MessageKind Kind, byte[] Header, long PayloadLength)
{
    /// <summary>The frame's size: prefix, header and payload.</summary>
    public long Size => FrameChannel.PrefixBytes + Header.Length + PayloadLength;

    public T Read<T>()
    {
        try { return JsonSerializer.Deserialize<T>(Header, Json.Options) ?? throw new ProtocolException($"{Kind} frame has an empty header"); }
        catch (JsonException e) { throw new ProtocolException($"{Kind} frame header is not a valid {typeof(T).Name}: {Untrusted.Escape(e.Message)}"); }
    }
}

/// <summary>Framing for the coordinator↔worker connection: 16-byte prefix (magic "DG", kind, flags, header length,
/// payload length), a JSON header, then a raw payload streamed in bounded chunks straight from/to tensor memory; or,
/// once both ends have mapped a <see cref="SharedMemoryRegion"/> per direction (same host), large payloads go through
/// those (flag 1) and only the prefix and header through the socket.</summary>
public sealed class FrameChannel(Stream input, Stream output) : IAsyncDisposable
{
    const ushort Magic = 0x4744;
    internal const int PrefixBytes = 16;
    const int MaxHeaderBytes = 1 << 20, ChunkBytes = 1 << 20;
    const byte PayloadInSharedMemory = 1;
    const long SharedPayloadMinBytes = 64 << 10; // smaller payloads are cheaper on the socket than a second copy
    readonly SemaphoreSlim sendLock = new(1, 1);
    readonly byte[] prefix = new byte[PrefixBytes];
    SharedMemoryRegion? sharedSend, sharedReceive;
    long sharedPayload = -1, sharedCursor; // the received frame's payload length when it is in shared memory, else -1

    /// <summary>From now on, payloads of at least 64 KiB that fit go through <paramref name="send"/>, and frames flagged
    /// so are read from <paramref name="receive"/>. The channel does not own the regions.</summary>
    public void UseSharedMemory(SharedMemoryRegion send, SharedMemoryRegion receive) => (sharedSend, sharedReceive) = (send, receive);

    /// <summary>Large payloads go through shared-memory regions (see <see cref="UseSharedMemory"/>).</summary>
    public bool HasSharedMemory => sharedSend != null;

    /// <summary>Called after each payload chunk is written (fault injection in tests; null otherwise).</summary>
    public Action? AfterPayloadChunk { get; set; }

    /// <summary>Bytes written to / read from the stream (the socket): prefixes, headers and payloads sent on it.</summary>
    public long BytesSent { get; private set; }
    public long BytesReceived { get; private set; }
    /// <summary>Payload bytes that crossed through the shared-memory regions instead (counted whether or not a copy was
    /// needed: a payload already in the region, as dev mode's weights and gradients are, still counts).</summary>
    public long SharedBytesSent { get; private set; }
    public long SharedBytesReceived { get; private set; }

    /// <summary>The size of the frame <see cref="SendAsync"/> would send.</summary>
    public static long FrameSize<T>(T header, long payloadLength) => PrefixBytes + JsonSerializer.SerializeToUtf8Bytes(header, Json.Options).Length + payloadLength;

    /// <summary>Sends one frame; returns its size (prefix, header and payload, wherever the payload went).</summary>
    public async Task<long> SendAsync<T>(MessageKind kind, T header, CancellationToken cancel = default, params ReadOnlyMemory<byte>[] payload)
    {
        byte[] json = JsonSerializer.SerializeToUtf8Bytes(header, Json.Options);
        long payloadLength = payload.Sum(p => (long)p.Length);
        // Prefix and header in one buffer, so one write: each write to a socket is a system call, ~40 us on loopback
        // with the peer's wake-up, and dev mode's steps wait for two of these frames each.
        var head = new byte[PrefixBytes + json.Length];
        BinaryPrimitives.WriteUInt16LittleEndian(head, Magic);
        head[2] = (byte)kind;
        BinaryPrimitives.WriteInt32LittleEndian(head.AsSpan(4), json.Length);
        BinaryPrimitives.WriteInt64LittleEndian(head.AsSpan(8), payloadLength);
        json.CopyTo(head, PrefixBytes);
        bool shared = sharedSend != null && payloadLength >= SharedPayloadMinBytes && payloadLength <= sharedSend.Capacity;
        if (shared) head[3] = PayloadInSharedMemory;
        await sendLock.WaitAsync(cancel);
        try
        {
            if (shared) CopyToShared(payload); // before the header: the peer reads the region only after it
            await output.WriteAsync(head, cancel);
            if (!shared)
                foreach (var part in payload)
                    for (int o = 0; o < part.Length; o += ChunkBytes)
                    {
                        await output.WriteAsync(part.Slice(o, Math.Min(ChunkBytes, part.Length - o)), cancel);
                        if (AfterPayloadChunk is { } hook) { await output.FlushAsync(cancel); hook(); }
                    }
            await output.FlushAsync(cancel);
            BytesSent += head.Length + (shared ? 0 : payloadLength);
            if (shared) SharedBytesSent += payloadLength;
        }
        finally { sendLock.Release(); }
        return head.Length + payloadLength;
    }

    unsafe void CopyToShared(ReadOnlyMemory<byte>[] payload)
    {
        long at = 0;
        foreach (var part in payload)
            for (int o = 0; o < part.Length; o += ChunkBytes)
            {
                var chunk = part.Span.Slice(o, Math.Min(ChunkBytes, part.Length - o));
                var target = new Span<byte>(sharedSend!.Pointer + at, chunk.Length);
                if (!SameMemory(chunk, target)) chunk.CopyTo(target); // a worker's gradients may live in the region already
                at += chunk.Length;
                AfterPayloadChunk?.Invoke();
            }
    }

    /// <summary>The next <paramref name="length"/> bytes of the current frame's payload in the receive region.</summary>
    unsafe ReadOnlySpan<byte> TakeShared(int length)
    {
        if (sharedCursor + length > sharedPayload)
            throw new ProtocolException($"read past the end of a {sharedPayload}-byte shared-memory payload");
        var span = new ReadOnlySpan<byte>(sharedReceive!.Pointer + sharedCursor, length);
        sharedCursor += length;
        SharedBytesReceived += length;
        return span;
    }

    /// <summary>Reads the next frame's prefix and header; null when the peer closed the connection cleanly.</summary>
    public async Task<Frame?> ReceiveAsync(CancellationToken cancel = default)
    {
        int got = 0;
        while (got < PrefixBytes)
        {
            int n = await input.ReadAsync(prefix.AsMemory(got), cancel);
            if (n == 0)
            {
                if (got == 0) return null;
                throw new ProtocolException($"connection closed inside a frame prefix ({got} of {PrefixBytes} bytes)");
            }
            got += n;
        }
        if (BinaryPrimitives.ReadUInt16LittleEndian(prefix) != Magic) throw new ProtocolException("not a DistGpt frame (bad magic): is this the coordinator's address?");
        var kind = (MessageKind)prefix[2];
        int headerLength = BinaryPrimitives.ReadInt32LittleEndian(prefix.AsSpan(4));
        long payloadLength = BinaryPrimitives.ReadInt64LittleEndian(prefix.AsSpan(8));
        if (headerLength is < 0 or > MaxHeaderBytes) throw new ProtocolException($"frame header length {headerLength} is out of range");
        if (payloadLength < 0) throw new ProtocolException($"frame payload length {payloadLength} is negative");
        sharedPayload = -1;
        if (prefix[3] == PayloadInSharedMemory)
        {
            if (sharedReceive == null) throw new ProtocolException("frame payload is in shared memory, but this connection has none");
            if (payloadLength > sharedReceive.Capacity) throw new ProtocolException($"shared-memory payload of {payloadLength} bytes exceeds the region's {sharedReceive.Capacity}");
            (sharedPayload, sharedCursor) = (payloadLength, 0);
        }
        var header = new byte[headerLength];
        await ReadExactlyAsync(header, cancel);
        BytesReceived += PrefixBytes + headerLength;
        return new Frame(kind, header, payloadLength);
    }

    /// <summary>Reads exactly destination.Length payload bytes, in bounded chunks; <paramref name="landed"/>, when given, is
    /// told how many bytes are in place after each chunk.</summary>
    public async Task ReadPayloadAsync(Memory<byte> destination, CancellationToken cancel = default, Action<long>? landed = null)
    {
        if (sharedPayload >= 0)
        {
            var source = TakeShared(destination.Length);
            if (!SameMemory(source, destination.Span)) source.CopyTo(destination.Span); // weights mapped in place need no copy
            landed?.Invoke(destination.Length);
            return;
        }
        for (int o = 0; o < destination.Length; o += ChunkBytes)
        {
            int n = Math.Min(ChunkBytes, destination.Length - o);
            await ReadExactlyAsync(destination.Slice(o, n), cancel);
            landed?.Invoke(o + n);
        }
        BytesReceived += destination.Length;
    }

    /// <summary>Reads a float32 payload into destination (float32 bytes) and says whether every value is finite, checking
    /// each chunk as it lands (from the shared-memory region: copied and checked on every core in one pass).</summary>
    public async Task<bool> ReadFloatPayloadAsync(Memory<byte> destination, CancellationToken cancel = default)
    {
        if (destination.Length % sizeof(float) != 0) throw new ArgumentException($"destination of {destination.Length} bytes is not float32s");
        if (sharedPayload >= 0)
            return GradientOps.CopyAllFinite(MemoryMarshal.Cast<byte, float>(TakeShared(destination.Length)), MemoryMarshal.Cast<byte, float>(destination.Span));
        bool finite = true;
        int checkedTo = 0;
        await ReadPayloadAsync(destination, cancel, landed =>
        {
            finite &= GradientOps.AllFinite(MemoryMarshal.Cast<byte, float>(destination.Span[checkedTo..(int)landed]));
            checkedTo = (int)landed;
        });
        return finite;
    }

    /// <summary>Reads a bfloat16 payload of destination.Length / 2 bytes and widens it, chunk by chunk as it arrives,
    /// into destination (float32 bytes), through one reusable chunk buffer.</summary>
    public async Task ReadBFloat16PayloadAsync(Memory<byte> destination, CancellationToken cancel = default)
    {
        if (destination.Length % sizeof(float) != 0) throw new ArgumentException($"destination of {destination.Length} bytes is not float32s");
        int elements = destination.Length / sizeof(float), perChunk = ChunkBytes / sizeof(ushort);
        if (sharedPayload >= 0)
        {
            Widen(TakeShared(elements * sizeof(ushort)), destination.Span);
            return;
        }
        var chunk = wideningChunk ??= new byte[ChunkBytes];
        for (int e = 0; e < elements; e += perChunk)
        {
            int n = Math.Min(perChunk, elements - e);
            await ReadExactlyAsync(chunk.AsMemory(0, n * sizeof(ushort)), cancel);
            Widen(chunk.AsSpan(0, n * sizeof(ushort)), destination.Span.Slice(e * sizeof(float), n * sizeof(float)));
        }
        BytesReceived += (long)elements * sizeof(ushort);
    }

    /// <summary>Reads a gradient payload in <paramref name="dtype"/> into destination (float32 bytes), widening bfloat16;
    /// true when all finite (or, fp32 unchecked, always: the caller checks).</summary>
    public async Task<bool> ReadGradientPayloadAsync(Memory<byte> destination, Contracts.WireDType dtype, CancellationToken cancel, bool check = true)
    {
        if (dtype == Contracts.WireDType.Fp32)
        {
            if (check) return await ReadFloatPayloadAsync(destination, cancel); // checked as it lands
            await ReadPayloadAsync(destination, cancel);
            return true;
        }
        await ReadBFloat16PayloadAsync(destination, cancel);
        return GradientOps.AllFinite(MemoryMarshal.Cast<byte, float>(destination.Span));
    }

    static bool SameMemory(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b) =>
        a.Length == b.Length && Unsafe.AreSame(ref MemoryMarshal.GetReference(a), ref MemoryMarshal.GetReference(b));

    static void Widen(ReadOnlySpan<byte> bf16, Span<byte> fp32) =>
        BFloat16.Widen(MemoryMarshal.Cast<byte, ushort>(bf16), MemoryMarshal.Cast<byte, float>(fp32));

    byte[]? wideningChunk;

    public async Task SkipPayloadAsync(long length, CancellationToken cancel = default)
    {
        if (sharedPayload >= 0)
        {
            for (long left = length; left > 0; left -= ChunkBytes) TakeShared((int)Math.Min(left, ChunkBytes));
            return;
        }
        var scratch = new byte[(int)Math.Min(length, ChunkBytes)];
        for (long left = length; left > 0; left -= scratch.Length)
            await ReadExactlyAsync(scratch.AsMemory(0, (int)Math.Min(left, scratch.Length)), cancel);
        BytesReceived += length;
    }

    async Task ReadExactlyAsync(Memory<byte> buffer, CancellationToken cancel)
    {
        try { await input.ReadExactlyAsync(buffer, cancel); }
        catch (EndOfStreamException) { throw new ProtocolException("connection closed in the middle of a frame (truncated stream)"); }
    }

    public async ValueTask DisposeAsync()
    {
        await input.DisposeAsync();
        if (!ReferenceEquals(input, output)) await output.DisposeAsync();
        sendLock.Dispose();
    }
}

/// <summary>The peer broke the protocol (bad magic, truncated frame, malformed header, wrong payload size).</summary>
public sealed class ProtocolException(string message) : Exception(message);
