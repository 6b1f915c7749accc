using System.Runtime.InteropServices;
using DistGpt.Contracts;
using DistGpt.Contracts.Wire;
using DistGpt.Model.Engine;
using DistGpt.Model.Training;
using Xunit;

namespace DistGpt.Tests;

/// <summary>The float32 ↔ bfloat16 conversion of `--wire-dtype bf16` gradient payloads.</summary>
public sealed class BFloat16Tests
{
    static float F(uint bits) => BitConverter.UInt32BitsToSingle(bits);
    static uint Bits(float f) => BitConverter.SingleToUInt32Bits(f);

    [Theory]
    // exact values and plain rounding
    [InlineData(0x3F80_0000u, 0x3F80)] // 1.0
    [InlineData(0x3F80_7FFFu, 0x3F80)] // just below half an ulp: down
    [InlineData(0x3F80_8001u, 0x3F81)] // just above half an ulp: up
    [InlineData(0x4049_0FDBu, 0x4049)] // pi
    // ties go to the even neighbour
    [InlineData(0x3F80_8000u, 0x3F80)] // tie, 0x3F80 even: down
    [InlineData(0x3F81_8000u, 0x3F82)] // tie, 0x3F81 odd: up
    [InlineData(0xBF81_8000u, 0xBF82)] // negative tie, odd: away from zero
    [InlineData(0xBF82_8000u, 0xBF82)] // negative tie, even: toward zero
    // zeros, infinities, overflow of the largest finite floats
    [InlineData(0x0000_0000u, 0x0000)]
    [InlineData(0x8000_0000u, 0x8000)]
    [InlineData(0x7F80_0000u, 0x7F80)] // +Inf
    [InlineData(0xFF80_0000u, 0xFF80)] // -Inf
    [InlineData(0x7F7F_FFFFu, 0x7F80)] // float.MaxValue rounds to +Inf
    [InlineData(0xFF7F_FFFFu, 0xFF80)] // float.MinValue rounds to -Inf
    [InlineData(0x7F7F_8000u, 0x7F80)] // tie above the largest finite bf16 (odd): Inf
    [InlineData(0x7F7F_7FFFu, 0x7F7F)] // below that tie: the largest finite bf16
    // subnormals
    [InlineData(0x0000_0001u, 0x0000)] // smallest float subnormal: +0
    [InlineData(0x8000_0001u, 0x8000)] // and its negative: -0
    [InlineData(0x0000_8000u, 0x0000)] // tie, even: down to 0
    [InlineData(0x0001_8000u, 0x0002)] // tie, odd: up
    [InlineData(0x0000_8001u, 0x0001)] // above the tie: smallest bf16 subnormal
    [InlineData(0x007F_FFFFu, 0x0080)] // largest float subnormal rounds up to the smallest normal
    [InlineData(0x0040_0000u, 0x0040)] // exact subnormal
    // NaNs stay NaN (quieted), whatever their payload, even one that only has low bits
    [InlineData(0x7FC0_0000u, 0x7FC0)]
    [InlineData(0xFFC0_0000u, 0xFFC0)]
    [InlineData(0x7F80_0001u, 0x7FC0)] // signalling NaN with a low payload: would truncate/round to Inf
    [InlineData(0xFF80_0001u, 0xFFC0)]
    [InlineData(0x7FFF_FFFFu, 0x7FFF)] // would carry into the sign bit when rounded naively
    [InlineData(0x7FBF_FFFFu, 0x7FFF)] // signalling NaN keeps its top payload bits, quieted
    public void NarrowingRoundsToNearestEvenAndKeepsSpecialValues(uint input, int expected)
    {
        Assert.Equal((ushort)expected, BFloat16.FromSingle(F(input)));
        // The vector path gives the same for the value in every lane position (16 + 3 scalar tail).
        var source = Enumerable.Repeat(F(input), 19).ToArray();
        var narrowed = new ushort[source.Length];
        BFloat16.Narrow(source, narrowed);
        Assert.All(narrowed, h => Assert.Equal((ushort)expected, h));
        float back = BFloat16.ToSingle((ushort)expected);
        if (float.IsNaN(F(input))) Assert.True(float.IsNaN(back), "NaN must widen back to NaN");
        else Assert.Equal(float.IsInfinity(back), float.IsInfinity(F(input)) || (expected & 0x7FFF) == 0x7F80);
    }

    /// <summary>An independent reference: the nearer of the two bf16 neighbours in double arithmetic, ties to even,
    /// with the value above the largest finite bf16 taken as 2^128 (IEEE overflow rounding).</summary>
    static ushort Reference(float x)
    {
        if (float.IsNaN(x)) return (ushort)((Bits(x) >> 16) | 0x40);
        uint down = Bits(x) >> 16, up = down + 1;
        double Value(uint h) => (h & 0x7FFF) == 0x7F80 ? ((h & 0x8000) != 0 ? -Math.Pow(2, 128) : Math.Pow(2, 128)) : BitConverter.UInt32BitsToSingle(h << 16);
        if (float.IsInfinity(x) || Value(down) == x) return (ushort)down;
        double dDown = Math.Abs(x - Value(down)), dUp = Math.Abs(Value(up) - x);
        return (ushort)(dDown < dUp ? down : dUp < dDown ? up : (down & 1) == 0 ? down : up);
    }

    [Fact]
    public void NarrowingMatchesADoubleArithmeticReferenceOnRandomAndBoundaryFloats()
    {
        var rng = new Random(7);
        var values = new List<float>();
        for (int i = 0; i < 200_000; i++) values.Add(F((uint)rng.NextInt64(0, 1L << 32)));
        for (int i = 0; i < 20_000; i++) values.Add((float)(rng.NextDouble() * 2 - 1) * MathF.Pow(10, rng.Next(-40, 39)));
        foreach (uint low in new uint[] { 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x0000, 0x0001 })
            for (uint high = 0; high < 0x10000; high += 0x0101)
                values.Add(F((high << 16) | low));
        foreach (var x in values) Assert.True(Reference(x) == BFloat16.FromSingle(x), $"0x{Bits(x):X8}: got 0x{BFloat16.FromSingle(x):X4}, expected 0x{Reference(x):X4}");
    }

    [Fact]
    public void EveryBFloat16WidensExactlyAndNarrowsBackToItself()
    {
        var all = Enumerable.Range(0, 1 << 16).Select(i => (ushort)i).ToArray();
        var wide = new float[all.Length];
        BFloat16.Widen(all, wide);
        var back = new ushort[all.Length];
        BFloat16.Narrow(wide, back);
        for (int i = 0; i < all.Length; i++)
        {
            Assert.Equal((uint)all[i] << 16, Bits(wide[i]));
            bool nan = (all[i] & 0x7FFF) > 0x7F80;
            Assert.Equal(nan ? (ushort)(all[i] | 0x40) : all[i], back[i]);
            Assert.Equal(nan, float.IsNaN(BFloat16.ToSingle(back[i])));
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(8)]
    [InlineData(15)]
    [InlineData(16)]
    [InlineData(17)]
    [InlineData(31)]
    [InlineData(33)]
    [InlineData(1003)]
    public void VectorPathEqualsScalarPathOnLengthsThatAreNotMultiplesOfTheVectorWidth(int length)
    {
        var rng = new Random(length);
        float[] specials = [float.NaN, float.PositiveInfinity, float.NegativeInfinity, float.MaxValue, float.MinValue, 0f, -0f, F(1), F(0x7F800001), F(0x3F808000), F(0x3F818000)];
        // Offset by one element, so the vector loads and stores are not aligned to anything.
        var source = new float[length + 1];
        for (int i = 0; i < source.Length; i++)
            source[i] = rng.Next(4) == 0 ? specials[rng.Next(specials.Length)] : F((uint)rng.NextInt64(0, 1L << 32));
        var src = source.AsSpan(1);
        ushort[] vector = new ushort[length + 1], scalar = new ushort[length];
        vector[0] = 0xABCD;
        BFloat16.Narrow(src, vector.AsSpan(1));
        BFloat16.NarrowScalar(src, scalar);
        Assert.Equal(0xABCD, vector[0]); // nothing written outside the destination
        Assert.Equal(scalar, vector[1..]);

        float[] wideVector = new float[length + 2], wideScalar = new float[length];
        wideVector[^1] = 42f;
        BFloat16.Widen(scalar, wideVector.AsSpan(1, length));
        BFloat16.WidenScalar(scalar, wideScalar);
        Assert.Equal(42f, wideVector[^1]);
        Assert.Equal(wideScalar.Select(Bits), wideVector.Skip(1).Take(length).Select(Bits));
    }

    [Fact]
    public void LengthMismatchIsRefused()
    {
        Assert.Throws<ArgumentException>(() => BFloat16.Narrow(new float[17], new ushort[16]));
        Assert.Throws<ArgumentException>(() => BFloat16.Widen(new ushort[16], new float[17]));
    }

    /// <summary>The coordinator's receive path: a bf16 payload longer than one 1 MiB chunk, widened chunk by chunk into a
    /// float32 buffer; a NaN or Inf sent by the worker is still a NaN or Inf there, so the payload check rejects it.</summary>
    [Fact]
    public async Task FramedBFloat16PayloadWidensAcrossChunksAndNaNStillFailsTheFiniteCheck()
    {
        const int n = 700_001; // 1.4 MB as bf16: two chunks, the second partial
        var rng = new Random(3);
        var grads = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1) * 1e-3f).ToArray();
        var narrowed = new byte[n * 2];
        BFloat16.Narrow(grads, MemoryMarshal.Cast<byte, ushort>(narrowed.AsSpan()));

        var expected = grads.Select(g => BFloat16.ToSingle(BFloat16.FromSingle(g))).ToArray();

        var wire = new MemoryStream();
        var sender = new FrameChannel(Stream.Null, wire);
        await sender.SendAsync(MessageKind.Gradients, new Heartbeat("run", 1), default, narrowed);
        grads[n - 1] = float.NaN;
        grads[12345] = float.PositiveInfinity;
        BFloat16.Narrow(grads, MemoryMarshal.Cast<byte, ushort>(narrowed.AsSpan()));
        await sender.SendAsync(MessageKind.Gradients, new Heartbeat("run", 2), default, narrowed);

        wire.Position = 0;
        var receiver = new FrameChannel(wire, Stream.Null);
        using var buffer = new NativeBuffer(n);
        var frame = await receiver.ReceiveAsync();
        Assert.Equal(2L * n, frame!.PayloadLength);
        await receiver.ReadBFloat16PayloadAsync(NativeMemoryManager.Bytes(buffer));
        Assert.Equal(expected, buffer.Span.ToArray());
        Assert.True(GradientOps.AllFinite(buffer.Span));
        Assert.All(expected.Zip(grads.Take(n - 1)).Take(12345), p => Assert.True(Math.Abs(p.First - p.Second) <= Math.Abs(p.Second) / 256));

        frame = await receiver.ReceiveAsync();
        Assert.Equal(2L * n, frame!.PayloadLength);
        await receiver.ReadBFloat16PayloadAsync(NativeMemoryManager.Bytes(buffer));
        Assert.True(float.IsNaN(buffer.Span[n - 1]));
        Assert.True(float.IsPositiveInfinity(buffer.Span[12345]));
        Assert.False(GradientOps.AllFinite(buffer.Span));
        Assert.Null(await receiver.ReceiveAsync());
        Assert.Equal(wire.Length, receiver.BytesReceived);
    }
}
