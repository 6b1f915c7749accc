using System.Runtime.InteropServices;

namespace DistGpt.Model.Engine;

/// <summary>A 64-byte aligned, zero-initialised block of native floats. Kernels work on raw pointers so
/// they can be captured by parallel loops and handed to the packed matmul without pinning.</summary>
public sealed unsafe class NativeBuffer : IDisposable
{
    public float* Pointer { get; private set; }
    public long Length { get; }

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
        if (Pointer == null) return;
        NativeMemory.AlignedFree(Pointer);
        if (Length > 0) GC.RemoveMemoryPressure(Length * sizeof(float));
        Pointer = null;
        GC.SuppressFinalize(this);
    }

    ~NativeBuffer() { if (Pointer != null) NativeMemory.AlignedFree(Pointer); }
}
