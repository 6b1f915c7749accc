namespace DistGpt.Model.Engine;

/// <summary>Counter-based randomness: every random draw in training is a pure function of (seed, step, index…),
/// so batches and dropout masks do not depend on the number of workers and a resumed run replays exactly.</summary>
public static class Rng
{
    public static ulong Mix(ulong x)
    {
        x += 0x9E3779B97F4A7C15UL;
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9UL;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBUL;
        return x ^ (x >> 31);
    }

    public static ulong Key(ulong a, ulong b) => Mix(Mix(a) ^ b);
    public static ulong Key(ulong a, ulong b, ulong c) => Mix(Key(a, b) ^ c);
    public static ulong Key(ulong a, ulong b, ulong c, ulong d) => Mix(Key(a, b, c) ^ d);

    /// <summary>Uniform integer in [0, range) from a 64-bit hash (Lemire's multiply-high).</summary>
    public static long Below(ulong hash, long range) => (long)(((UInt128)hash * (ulong)range) >> 64);
}

/// <summary>xoshiro128+ stream for bulk draws (dropout masks, init); seeded from a counter key.</summary>
public struct RandomStream
{
    uint s0, s1, s2, s3;

    public RandomStream(ulong seed)
    {
        ulong a = Rng.Mix(seed), b = Rng.Mix(a);
        s0 = (uint)a; s1 = (uint)(a >> 32); s2 = (uint)b; s3 = (uint)(b >> 32);
        if ((s0 | s1 | s2 | s3) == 0) s0 = 1;
    }

    public uint NextUInt()
    {
        uint result = s0 + s3;
        uint t = s1 << 9;
        s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3;
        s2 ^= t;
        s3 = (s3 << 11) | (s3 >> 21);
        return result;
    }

    /// <summary>Uniform in [0, 1).</summary>
    public float NextFloat() => (NextUInt() >> 8) * (1f / (1 << 24));

    /// <summary>Standard normal (Box–Muller, one value per call for simplicity).</summary>
    public double NextNormal()
    {
        double u1 = ((NextUInt() >> 8) + 1.0) / (1 << 24);
        double u2 = (NextUInt() >> 8) / (double)(1 << 24);
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }
}
