namespace DistGpt.Model;

/// <summary>A rough estimate of the memory a training run takes, checked before anything is allocated: a shape that
/// cannot fit is refused with the numbers rather than failing later with an OutOfMemoryException.</summary>
public sealed record MemoryEstimate(long Parameters, double ParameterBytes, double ActivationBytes)
{
    public double TotalBytes => ParameterBytes + ActivationBytes;

    /// <param name="replicas">graphs the batch is cut into (each beyond the first has its own gradient buffer)</param>
    public static MemoryEstimate ForTraining(GptConfig cfg, int batch, int replicas)
    {
        long p = cfg.ParameterCount();
        // Weights, gradients and AdamW's two moments, plus one gradient buffer per extra replica.
        double parameterBytes = 4.0 * p * (4 + Math.Max(0, Math.Min(replicas, batch) - 1));
        // Per token: each layer's forward values (~18 C, and H x T attention probabilities) and one layer's worth of
        // gradients (their buffers are shared across layers); per replica, one row block of logits (the loss never
        // holds them whole).
        double c = cfg.NEmbd, perLayer = 18 * c + (double)cfg.NHead * cfg.BlockSize;
        double perToken = cfg.NLayer * perLayer + perLayer;
        int graphs = Math.Max(1, Math.Min(replicas, batch));
        long rowsPerGraph = (long)(batch + graphs - 1) / graphs * cfg.BlockSize;
        double logitBlocks = 4.0 * graphs * Math.Min(rowsPerGraph, Layers.LmHeadCrossEntropy.DefaultRowBlock) * cfg.VocabSize;
        return new MemoryEstimate(p, parameterBytes, 4.0 * batch * cfg.BlockSize * perToken + logitBlocks);
    }

    /// <summary>Memory this process could still get: MemAvailable, capped by the GC's limit (a container's).</summary>
    public static double AvailableBytes()
    {
        double available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        try
        {
            string? line = File.ReadLines("/proc/meminfo").FirstOrDefault(l => l.StartsWith("MemAvailable:"));
            if (line != null && long.TryParse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], out long kb))
                available = Math.Min(available, kb * 1024.0);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return available;
    }

    /// <summary>Throws <see cref="ConfigException"/> with the estimate when it exceeds <paramref name="availableBytes"/>.</summary>
    public void RequireAtMost(double availableBytes, int batch, int block)
    {
        if (TotalBytes <= availableBytes) return;
        throw new ConfigException($"this model and batch need about {Gib(TotalBytes)} of memory ({Parameters:N0} parameters with gradients and AdamW moments: {Gib(ParameterBytes)}; activations of --batch-size {batch} x --block-size {block}: {Gib(ActivationBytes)}), more than the {Gib(availableBytes)} available; lower --batch-size, --block-size, --n-embd or --n-layer");
    }

    static string Gib(double bytes) => bytes >= 1 << 30 ? $"{bytes / (1 << 30):N1} GiB" : $"{bytes / (1 << 20):F1} MiB";
}
