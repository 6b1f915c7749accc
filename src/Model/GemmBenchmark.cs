using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;

namespace DistGpt.Model;

/// <summary>Times <see cref="Gemm.Sgemm"/> on the shapes the model uses and reports GFLOPS.</summary>
public static unsafe class GemmBenchmark
{
    // Nominal peak per core: 2 FMA pipes x 8 fp32 lanes (AVX2) x 2 flops x ~3.1 GHz.
    const double ClockGHz = 3.1;
    const double PeakPerCore = 2 * 8 * 2 * ClockGHz;

    readonly record struct Shape(string Name, int M, int N, int K, bool TransA, bool TransB, float Beta, bool Parallel);

    static readonly Shape[] Shapes =
    [
        new("linear fwd  x*W^T", 768, 384, 128, false, true, 0, true),
        new("linear fwd  x*W^T", 16384, 1536, 384, false, true, 0, true),
        new("square", 1024, 1024, 1024, false, false, 0, true),
        new("linear dx   dy*W", 16384, 384, 1536, false, false, 0, true),
        new("linear dW  +dy^T*x", 1536, 384, 16384, true, false, 1, true),
        new("attn q*k^T  (serial)", 256, 256, 64, false, true, 0, false),
        new("attn p*v    (serial)", 256, 64, 256, false, false, 0, false),
        new("attn small  (serial)", 32, 32, 16, false, true, 0, false),
    ];

    /// <summary>Runs every shape on the SIMD and the portable path with <paramref name="threads"/> cores.</summary>
    public static string Run(int threads)
    {
        int savedThreads = Compute.Threads;
        bool savedScalar = Gemm.UseScalarPath;
        var report = new StringBuilder();
        report.AppendLine($"SGEMM benchmark, {threads} thread(s), medians. Peak assumes {ClockGHz} GHz x 2 FMA x 8 lanes x 2 = " +
                          $"{PeakPerCore:F1} GFLOPS/core (serial shapes: 1 core); a boosting CPU can exceed 100%.");
        report.AppendLine($"{"shape",-22} {"m x n x k",-18} {"op",-4} {"simd GFLOPS",12} {"% peak",7} {"portable",10} {"% peak",7}");
        try
        {
            Compute.Threads = threads;
            foreach (var s in Shapes)
            {
                Gemm.UseScalarPath = false;
                double simd = Measure(s);
                Gemm.UseScalarPath = true;
                double portable = Measure(s);
                double peak = PeakPerCore * (s.Parallel ? threads : 1);
                string op = (s.TransA ? "T" : "N") + (s.TransB ? "T" : "N");
                report.AppendLine($"{s.Name,-22} {$"{s.M}x{s.N}x{s.K}",-18} {op,-4} {simd,12:F1} {100 * simd / peak,6:F0}% {portable,10:F1} {100 * portable / peak,6:F0}%");
            }
        }
        finally
        {
            Compute.Threads = savedThreads;
            Gemm.UseScalarPath = savedScalar;
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
