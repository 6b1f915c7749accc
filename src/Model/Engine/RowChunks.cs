namespace DistGpt.Model.Engine;

/// <summary>Splits rows into one contiguous chunk per core, for row-parallel kernels.</summary>
public static class RowChunks
{
    public static int Count(int rows, int minRowsPerChunk = 16) =>
        Math.Max(1, Math.Min(Compute.Threads, rows / Math.Max(1, minRowsPerChunk)));

    public static (int Start, int End) Range(int chunk, int chunks, int rows)
    {
        int per = (rows + chunks - 1) / chunks;
        int start = Math.Min(rows, chunk * per);
        return (start, Math.Min(rows, start + per));
    }
}
