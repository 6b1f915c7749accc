namespace DistGpt.Model.Engine;

/// <summary>Splits rows into contiguous chunks for row-parallel kernels, which <see cref="Compute.For"/> spreads over the
/// cores. The count depends on the rows only, never on the cores: kernels that reduce over rows (LayerNorm's dW, the loss)
/// add per-chunk partial sums in chunk order, so their bits, and a worker's gradient sum, are the same on any --threads.</summary>
public static class RowChunks
{
    public const int MaxChunks = 16;

    public static int Count(int rows, int minRowsPerChunk = 16) =>
        Math.Clamp(rows / Math.Max(1, minRowsPerChunk), 1, MaxChunks);

    public static (int Start, int End) Range(int chunk, int chunks, int rows)
    {
        int per = (rows + chunks - 1) / chunks;
        int start = Math.Min(rows, chunk * per);
        return (start, Math.Min(rows, start + per));
    }
}
