using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Text;

namespace DistGpt.Model;

/// <summary>Times <see cref="Gemm.Sgemm"/> on the shapes the model uses and reports GFLOPS.</summary>
public static unsafe class GemmBenchmark
{
    /// <summary>This core's measured fp32 peak at a vector width: ten independent FMA chains (enough to keep both FMA
    /// pipes busy through their latency), 2 x lanes flops per FMA, over ~0.2 s.</summary>
    public static double MeasurePeakPerCore(bool wide)
    {
        const int Steps = 200_000;
        long fmas = 0;
        float sink = 0;
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed.TotalSeconds < 0.2)
        {
            sink += wide ? FmaChains(Steps, Vector512.Create(0.9999999f), Vector512.Create(1e-7f))
                         : FmaChains(Steps, Vector256.Create(0.9999999f), Vector256.Create(1e-7f));
            fmas += 10L * Steps;
        }
        double seconds = clock.Elapsed.TotalSeconds;
        if (sink == 42f) Console.Write(""); // keeps the chains' results alive
        return fmas * 2 * (wide ? 16 : 8) / seconds / 1e9;
    }

    // In their own methods, with distinct starting values, so the chains stay in registers and are not merged as equal.
    [MethodImpl(MethodImplOptions.NoInlining)]
    static float FmaChains(int steps, Vector256<float> x, Vector256<float> y)
    {
        Vector256<float> a0 = Vector256.Create(0f), a1 = Vector256.Create(1f), a2 = Vector256.Create(2f), a3 = Vector256.Create(3f),
            a4 = Vector256.Create(4f), a5 = Vector256.Create(5f), a6 = Vector256.Create(6f), a7 = Vector256.Create(7f),
            a8 = Vector256.Create(8f), a9 = Vector256.Create(9f);
        for (int i = 0; i < steps; i++)
        {
            a0 = Vector256.FusedMultiplyAdd(a0, x, y); a1 = Vector256.FusedMultiplyAdd(a1, x, y);
            a2 = Vector256.FusedMultiplyAdd(a2, x, y); a3 = Vector256.FusedMultiplyAdd(a3, x, y);
            a4 = Vector256.FusedMultiplyAdd(a4, x, y); a5 = Vector256.FusedMultiplyAdd(a5, x, y);
            a6 = Vector256.FusedMultiplyAdd(a6, x, y); a7 = Vector256.FusedMultiplyAdd(a7, x, y);
            a8 = Vector256.FusedMultiplyAdd(a8, x, y); a9 = Vector256.FusedMultiplyAdd(a9, x, y);
        }
        return (a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9).GetElement(0);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    static float FmaChains(int steps, Vector512<float> x, Vector512<float> y)
    {
        Vector512<float> a0 = Vector512.Create(0f), a1 = Vector512.Create(1f), a2 = Vector512.Create(2f), a3 = Vector512.Create(3f),
            a4 = Vector512.Create(4f), a5 = Vector512.Create(5f), a6 = Vector512.Create(6f), a7 = Vector512.Create(7f),
            a8 = Vector512.Create(8f), a9 = Vector512.Create(9f);
        for (int i = 0; i < steps; i++)
        {
            a0 = Vector512.FusedMultiplyAdd(a0, x, y); a1 = Vector512.FusedMultiplyAdd(a1, x, y);
            a2 = Vector512.FusedMultiplyAdd(a2, x, y); a3 = Vector512.FusedMultiplyAdd(a3, x, y);
            a4 = Vector512.FusedMultiplyAdd(a4, x, y); a5 = Vector512.FusedMultiplyAdd(a5, x, y);
            a6 = Vector512.FusedMultiplyAdd(a6, x, y); a7 = Vector512.FusedMultiplyAdd(a7, x, y);
            a8 = Vector512.FusedMultiplyAdd(a8, x, y); a9 = Vector512.FusedMultiplyAdd(a9, x, y);
        }
        return (a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9).GetElement(0);
    }

    readonly record struct Shape(string Name, int M, int N, int K, bool TransA, bool TransB, float Beta, bool Parallel);

    static readonly Shape[] Generic =
    [
        new("square", 1024, 1024, 1024, false, false, 0, true),
        new("attn q*k^T (serial)", 256, 256, 64, false, true, 0, false),
        new("attn p*v (serial)", 256, 64, 256, false, false, 0, false),
    ];

    /// <summary>Every Linear of a model as training runs it on two cores: the forward split between the cores, and in
    /// backward dx and dW each on one core at the same time (see Linear.Backward).</summary>
    static IEnumerable<Shape> LinearShapes(string model, int tokens, int c, int vocab)
    {
        foreach (var (layer, inF, outF) in new[] { ("c_attn", c, 3 * c), ("attn.c_proj", c, c), ("c_fc", c, 4 * c), ("mlp.c_proj", 4 * c, c), ("lm_head", c, vocab) })
        {
            yield return new($"{model} {layer} fwd", tokens, outF, inF, false, true, 0, true);
            yield return new($"{model} {layer} dx (serial)", tokens, inF, outF, false, false, 0, false);
            yield return new($"{model} {layer} dW (serial)", outF, inF, tokens, true, false, 1, false);
        }
    }

    static IEnumerable<Shape> Shapes =>
        LinearShapes("tiny", 16 * 32, 64, 65).Concat(LinearShapes("cpu", 12 * 64, 128, 65)).Concat(LinearShapes("shakespeare", 64 * 256, 384, 65))
            .Concat(LmHeadBlockShapes("cpu-gpt2", 128, 50304)).Concat(Generic);

    /// <summary>The lm_head's products as the fused lm_head + cross-entropy runs them in training: a block of
    /// <see cref="Layers.LmHeadCrossEntropy.DefaultRowBlock"/> rows at a time, each replica on its own core.</summary>
    static IEnumerable<Shape> LmHeadBlockShapes(string model, int c, int vocab)
    {
        int rows = Layers.LmHeadCrossEntropy.DefaultRowBlock;
        yield return new($"{model} lm_head block fwd (serial)", rows, vocab, c, false, true, 0, false);
        yield return new($"{model} lm_head block dx (serial)", rows, c, vocab, false, false, 0, false);
        yield return new($"{model} lm_head block dW (serial)", vocab, c, rows, true, false, 1, false);
    }

    /// <summary>Runs every shape on every packed kernel this CPU has (and the portable one when asked) with
    /// <paramref name="threads"/> cores; each kernel's percentage is of the peak at its own vector width.</summary>
    public static string Run(int threads, bool portable = false)
    {
        var kernels = new List<GemmKernel>();
        if (Gemm.Best == GemmKernel.Avx512) kernels.Add(GemmKernel.Avx512);
        if (Gemm.Best >= GemmKernel.Avx2) kernels.Add(GemmKernel.Avx2);
        if (portable || kernels.Count == 0) kernels.Add(GemmKernel.Portable);
        var peaks = kernels.ToDictionary(k => k, k => MeasurePeakPerCore(wide: k == GemmKernel.Avx512));
        int savedThreads = Compute.Threads;
        var savedKernel = Gemm.Kernel;
        var report = new StringBuilder();
        report.AppendLine($"SGEMM benchmark, {threads} thread(s), medians. Peak per core, measured with independent FMA chains: " +
                          string.Join(", ", kernels.Select(k => $"{(k == GemmKernel.Avx512 ? "512" : "256")}-bit {peaks[k]:F1} GFLOPS")) +
                          " (serial shapes count 1 core, the others all threads; portable against the 256-bit peak).");
        report.AppendLine($"{"shape",-34} {"m x n x k",-18} {"op",-4}" + string.Concat(kernels.Select(k => $" {k + " GFLOPS",15} {"% peak",7}")));
        try
        {
            Compute.Threads = threads;
            foreach (var s in Shapes)
            {
                string op = (s.TransA ? "T" : "N") + (s.TransB ? "T" : "N");
                var line = new StringBuilder($"{s.Name,-34} {$"{s.M}x{s.N}x{s.K}",-18} {op,-4}");
                foreach (var k in kernels)
                {
                    Gemm.Kernel = k;
                    double gflops = Measure(s);
                    double peak = peaks[k] * (s.Parallel ? threads : 1);
                    line.Append($" {gflops,15:F1} {100 * gflops / peak,6:F0}%");
                }
                report.AppendLine(line.ToString());
            }
        }
        finally
        {
            Compute.Threads = savedThreads;
            Gemm.Kernel = savedKernel;
        }
        return report.ToString();
    }

    /// Median GFLOPS over several samples; each sample repeats the call until it lasts a couple of ms.
    static double Measure(Shape s)
    {
        int rowsA = s.TransA ? s.K : s.M, colsA = s.TransA ? s.M : s.K;
        int rowsB = s.TransB ? s.N : s.K, colsB = s.TransB ? s.K : s.N;
        float* a = Alloc((long)rowsA * colsA), b = Alloc((long)rowsB * colsB), c = Alloc((long)s.M * s.N);
        try
        {
            var rng = new Random(42);
            Fill(a, (long)rowsA * colsA, rng);
            Fill(b, (long)rowsB * colsB, rng);
            new Span<float>(c, s.M * s.N).Clear();
            float alpha = s.Beta == 0 ? 1f : 1e-3f;  // keep accumulated dW values bounded
            void Call() => Gemm.Sgemm(s.TransA, s.TransB, s.M, s.N, s.K, alpha, a, colsA, b, colsB, s.Beta, c, s.N, s.Parallel);

            // Warm up for a while, not just a call or two: tiered JIT and thread-pool start-up take ~100 ms to settle.
            var warm = Stopwatch.StartNew();
            int warmCalls = 0;
            double once = 0;
            while (warmCalls < 2 || warm.Elapsed.TotalSeconds < 0.3)
            {
                var sw = Stopwatch.StartNew();
                Call();
                once = sw.Elapsed.TotalSeconds;
                warmCalls++;
            }
            int calls = Math.Max(1, (int)(0.002 / Math.Max(once, 1e-9)));
            int samples = (int)Math.Clamp(1.0 / (once * calls), 3, 15);

            var times = new double[samples];
            for (int i = 0; i < samples; i++)
            {
                var sw = Stopwatch.StartNew();
                for (int j = 0; j < calls; j++) Call();
                times[i] = sw.Elapsed.TotalSeconds / calls;
            }
            Array.Sort(times);
            return 2.0 * s.M * s.N * s.K / times[samples / 2] / 1e9;
        }
        finally
        {
            NativeMemory.AlignedFree(a);
            NativeMemory.AlignedFree(b);
            NativeMemory.AlignedFree(c);
        }
    }

    static float* Alloc(long floats) => (float*)NativeMemory.AlignedAlloc((nuint)(floats * sizeof(float)), 64);

    static void Fill(float* p, long count, Random rng)
    {
        for (long i = 0; i < count; i++) p[i] = (float)(rng.NextDouble() * 2 - 1);
    }
}
