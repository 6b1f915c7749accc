using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using DistGpt.Model.Engine;

namespace DistGpt.Model.Training;

public static unsafe class GradientOps
{
    /// <summary>Values per chunk of the norm's sums of squares.</summary>
    public const int NormChunk = 1 << 16;

    /// <summary>The norm's chunks in <paramref name="length"/> values.</summary>
    public static int NormChunks(long length) => (int)((length + NormChunk - 1) / NormChunk);

    /// <summary>Global L2 norm of a gradient buffer: double sums of squares over 64K-value chunks, split between cores
    /// and added in chunk order (the result does not depend on the number of cores).</summary>
    public static double Norm(NativeBuffer grads)
    {
        var squares = new double[NormChunks(grads.Length)];
        ForNormChunks(0, grads.Length, (c, o, n) => squares[c] = TensorPrimitives.SumOfSquares(new ReadOnlySpan<float>(grads.Pointer + o, n)));
        return NormOfChunkSquares(squares);
    }

    /// <summary>body(c, offset, length) for each norm chunk c of [offset, offset + length), split between cores.</summary>
    static void ForNormChunks(long offset, long length, Action<int, long, int> body) =>
        Compute.For(NormChunks(length), c =>
        {
            long o = offset + (long)c * NormChunk;
            body(c, o, (int)Math.Min(NormChunk, offset + length - o));
        });

    /// <summary>The L2 norm from the chunks' sums of squares, added in chunk order (<see cref="Norm"/>'s order: however the
    /// chunks were computed, on whichever cores or parameter shards, the bits are Norm's).</summary>
    public static double NormOfChunkSquares(ReadOnlySpan<double> squares)
    {
        double sum = 0;
        foreach (double s in squares) sum += s;
        return Math.Sqrt(sum);
    }

    /// <summary>nanoGPT's step on a gradient SUM over <paramref name="tokens"/> tokens, without touching it: the global L2
    /// norm of the mean gradient, and the one factor that turns the sum into the mean clipped as
    /// torch.nn.utils.clip_grad_norm_ does (times min(1, maxNorm / (norm + 1e-6)); maxNorm &lt;= 0: no clipping), which
    /// AdamW applies as it reads each gradient. One pass over the buffer instead of three.</summary>
    public static (double Norm, float Scale) MeanClipScale(NativeBuffer sum, long tokens, float maxNorm) =>
        MeanClipScale(Norm(sum), tokens, maxNorm);

    /// <summary><see cref="MeanClipScale(NativeBuffer, long, float)"/> from the sum's L2 norm, already known.</summary>
    public static (double Norm, float Scale) MeanClipScale(double sumNorm, long tokens, float maxNorm)
    {
        double norm = sumNorm / tokens;
        double scale = 1.0 / tokens;
        if (maxNorm > 0)
        {
            double coef = maxNorm / (norm + 1e-6);
            if (coef < 1) scale *= coef;
        }
        return (norm, (float)scale);
    }

    /// <summary>destination = addends[0] + addends[1] + ... + addends[count - 1], added in that order whatever the number of
    /// cores (chunks of the buffer are split between them). destination may be addends[0] itself.</summary>
    public static void SumInOrder(NativeBuffer destination, IReadOnlyList<NativeBuffer> addends, int count)
    {
        if (count < 1) throw new ArgumentOutOfRangeException(nameof(count), "nothing to add");
        if (count == 1 && ReferenceEquals(destination, addends[0])) return;
        const long Chunk = 1 << 15;
        long length = destination.Length;
        Compute.For((int)((length + Chunk - 1) / Chunk), c =>
        {
            long start = c * Chunk;
            SumRange(destination, addends, count, start, Math.Min(Chunk, length - start));
        });
    }

    /// <summary><see cref="SumInOrder"/>, and in the same pass (each chunk while it is in cache) the sum's L2 norm as
    /// <see cref="Norm"/> gives it, bit for bit; false when the sum holds a NaN or an infinity, which it does whenever an
    /// addend does (or the addition overflowed), so checking the sum checks every addend.</summary>
    public static bool SumInOrderWithNorm(NativeBuffer destination, IReadOnlyList<NativeBuffer> addends, int count, out double norm)
    {
        var squares = new double[NormChunks(destination.Length)];
        bool finite = SumRangeWithSquares(destination, addends, count, 0, destination.Length, squares);
        norm = NormOfChunkSquares(squares);
        return finite;
    }

    /// <summary><see cref="SumInOrderWithNorm"/> on one parameter shard's range [offset, offset + length), which starts on a
    /// norm chunk and ends on one or at the end of the buffer (<see cref="ParameterShards"/>): the range's chunks' sums of
    /// squares go to <paramref name="squares"/>, in order, for <see cref="NormOfChunkSquares"/> over every shard's.</summary>
    public static bool SumRangeWithSquares(NativeBuffer destination, IReadOnlyList<NativeBuffer> addends, int count, long offset, long length,
        double[] squares)
    {
        if (count < 1) throw new ArgumentOutOfRangeException(nameof(count), "nothing to add");
        if (offset < 0 || length < 0 || offset + length > destination.Length) throw new ArgumentOutOfRangeException(nameof(offset));
        if (offset % NormChunk != 0 || (offset + length) % NormChunk != 0 && offset + length != destination.Length)
            throw new ArgumentException($"range [{offset}, {offset + length}) does not start and end on the norm's {NormChunk}-value chunks");
        int chunks = NormChunks(length);
        if (squares.Length < chunks) throw new ArgumentException($"{squares.Length} places for {chunks} chunks' sums of squares");
        int bad = 0;
        ForNormChunks(offset, length, (c, o, n) =>
        {
            SumRange(destination, addends, count, o, n);
            var values = new ReadOnlySpan<float>(destination.Pointer + o, n);
            if (!AllFinite(values)) Interlocked.Exchange(ref bad, 1);
            squares[c] = TensorPrimitives.SumOfSquares(values);
        });
        return bad == 0;
    }

    /// <summary><see cref="SumInOrder"/> on [offset, offset + length) only, on the calling thread: the same additions in
    /// the same order, so summing a buffer range by range gives the whole sum bit for bit.</summary>
    public static void SumRange(NativeBuffer destination, IReadOnlyList<NativeBuffer> addends, int count, long offset, long length)
    {
        if (count < 1) throw new ArgumentOutOfRangeException(nameof(count), "nothing to add");
        if (offset < 0 || length < 0 || offset + length > destination.Length) throw new ArgumentOutOfRangeException(nameof(offset));
        if (count == 1 && ReferenceEquals(destination, addends[0])) return;
        for (long start = offset; start < offset + length; start += int.MaxValue / 2)
        {
            int n = (int)Math.Min(int.MaxValue / 2, offset + length - start);
            var chunk = new Span<float>(destination.Pointer + start, n);
            ReadOnlySpan<float> Addend(int i) => new(addends[i].Pointer + start, n);
            if (count == 1) Addend(0).CopyTo(chunk);
            else TensorPrimitives.Add(Addend(0), Addend(1), chunk); // one pass for the first two
            for (int i = 2; i < count; i++) TensorPrimitives.Add(chunk, Addend(i), chunk);
        }
    }

    /// <summary>destination = source, on every core, checking as it goes: true when every value is finite. One pass
    /// instead of a copy and a check (dev mode's coordinator lands each worker's gradients this way).</summary>
    public static bool CopyAllFinite(ReadOnlySpan<float> source, Span<float> destination)
    {
        if (source.Length != destination.Length) throw new ArgumentException($"copying {source.Length} values into {destination.Length}");
        bool inPlace = source.Overlaps(destination, out int offset) && offset == 0; // only checked where it lies
        const int Chunk = 1 << 15;
        int chunks = (source.Length + Chunk - 1) / Chunk, bad = 0;
        fixed (float* src = source, dst = destination)
        {
            nint s = (nint)src, d = (nint)dst;
            int length = source.Length;
            Compute.For(chunks, c =>
            {
                int start = c * Chunk, n = Math.Min(Chunk, length - start);
                if (!inPlace) new ReadOnlySpan<float>((float*)s + start, n).CopyTo(new Span<float>((float*)d + start, n));
                if (!AllFinite(new ReadOnlySpan<float>((float*)d + start, n))) Interlocked.Exchange(ref bad, 1); // checked while in cache
            });
        }
        return bad == 0;
    }

    /// <summary>True when every value is finite.</summary>
    public static bool AllFinite(ReadOnlySpan<float> values)
    {
        // x - x is 0 for finite x and NaN for ±Inf or NaN, so the lanes' sums stay 0 exactly when every value is finite.
        ref float first = ref MemoryMarshal.GetReference(values);
        Vector256<float> a = default, b = default;
        int i = 0;
        for (; i + 16 <= values.Length; i += 16)
        {
            var x = Vector256.LoadUnsafe(ref first, (nuint)i);
            var y = Vector256.LoadUnsafe(ref first, (nuint)i + 8);
            a += x - x;
            b += y - y;
        }
        if (!Vector256.EqualsAll(a + b, Vector256<float>.Zero)) return false;
        for (; i < values.Length; i++)
            if (!float.IsFinite(values[i])) return false;
        return true;
    }
}
