using System.Runtime.InteropServices;

namespace DistGpt.Model.Engine;

/// <summary>A 64-byte aligned, zero-initialised block of native floats. Kernels work on raw pointers so
/// they can be captured by parallel loops and handed to the packed matmul without pinning.</summary>
public sealed unsafe class NativeBuffer : IDisposable
{
    public float* Pointer { get; private set; }
    public long Length { get; }
    readonly bool owned = true;

    NativeBuffer(float* pointer, long length)
    {
        Pointer = pointer;
        Length = length;
        owned = false;
    }

    /// <summary>A view of memory owned elsewhere (e.g. a shared-memory mapping), never freed by this buffer; the owner
    /// must outlive it. The memory must be 64-byte aligned, as the kernels' aligned loads assume.</summary>
    public static NativeBuffer Over(float* pointer, long length)
    {
        if (((nuint)pointer & 63) != 0) throw new ArgumentException("memory is not 64-byte aligned", nameof(pointer));
        return new NativeBuffer(pointer, length);
    }

    public NativeBuffer(long length)
    {
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length));
        Length = length;
        nuint bytes = (nuint)Math.Max(1, length) * sizeof(float);
        Pointer = (float*)NativeMemory.AlignedAlloc(bytes, 64);
        NativeMemory.Clear(Pointer, bytes);
        if (length > 0) GC.AddMemoryPressure((long)bytes);
    }

    public Span<float> Span => new(Pointer, checked((int)Length));

    public void Clear() => NativeMemory.Clear(Pointer, (nuint)Length * sizeof(float));

    public void Dispose()
    {
        if (!owned)
        {
            Pointer = null;
            GC.SuppressFinalize(this);
            return;
        }
        if (Pointer == null) return;
        NativeMemory.AlignedFree(Pointer);
        if (Length > 0) GC.RemoveMemoryPressure(Length * sizeof(float));
        Pointer = null;
        GC.SuppressFinalize(this);
    }

    ~NativeBuffer() { if (owned && Pointer != null) NativeMemory.AlignedFree(Pointer); }
}
