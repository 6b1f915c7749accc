using System.Buffers;
using DistGpt.Model.Engine;

namespace DistGpt.Contracts.Wire;

/// <summary>Exposes native memory as Memory&lt;byte&gt; so async stream I/O reads and writes tensors in place, without copies.</summary>
public sealed unsafe class NativeMemoryManager(byte* pointer, int length) : MemoryManager<byte>
{
    public static Memory<byte> Bytes(NativeBuffer buffer) =>
        new NativeMemoryManager((byte*)buffer.Pointer, checked((int)buffer.Length * sizeof(float))).Memory;

    /// <summary>The bytes of values [offset, offset + count) of the buffer.</summary>
    public static Memory<byte> Bytes(NativeBuffer buffer, long offset, long count) =>
        Bytes(buffer).Slice(checked((int)(offset * sizeof(float))), checked((int)(count * sizeof(float))));

    public override Span<byte> GetSpan() => new(pointer, length);
    public override MemoryHandle Pin(int elementIndex = 0) => new(pointer + elementIndex);
    public override void Unpin() { }
    protected override void Dispose(bool disposing) { }
}
