namespace DistGpt.Model;

/// <summary>Process-wide compute settings: how many cores the kernels may use.</summary>
public static class Compute
{
    static int threads = Environment.ProcessorCount;
    static ParallelOptions options = new() { MaxDegreeOfParallelism = Environment.ProcessorCount };

    /// <summary>Cores used by matmul and the row-parallel kernels (the --threads flag).</summary>
    public static int Threads
    {
        get => threads;
        set
        {
            if (value < 1) throw new ArgumentOutOfRangeException(nameof(value), "threads must be at least 1");
            threads = value;
            options = new ParallelOptions { MaxDegreeOfParallelism = value };
        }
    }

    /// <summary>Runs body(i) for i in [0, count), on up to Threads cores; inline when one thread or one item.</summary>
    public static void For(int count, Action<int> body)
    {
        if (threads == 1 || count == 1)
        {
            for (int i = 0; i < count; i++) body(i);
            return;
        }
        Parallel.For(0, count, options, body);
    }
}
