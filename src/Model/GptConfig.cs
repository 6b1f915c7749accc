namespace DistGpt.Model;

/// <summary>The model's shape, named as nanoGPT's GPTConfig.</summary>
public sealed record GptConfig(int VocabSize, int BlockSize, int NLayer, int NHead, int NEmbd, float Dropout, bool Bias)
{
    public int HeadSize => NEmbd / NHead;

    /// <summary>Throws <see cref="ConfigException"/> naming the offending field.</summary>
    public void Validate()
    {
        Check.InRange(VocabSize, 1, ushort.MaxValue, "vocab_size");
        Check.InRange(BlockSize, 1, 1 << 20, "--block-size");
        Check.InRange(NLayer, 1, 1 << 12, "--n-layer");
        Check.InRange(NHead, 1, 1 << 12, "--n-head");
        Check.InRange(NEmbd, 1, 1 << 20, "--n-embd");
        if (NEmbd % NHead != 0) throw new ConfigException($"--n-embd ({NEmbd}) must be divisible by --n-head ({NHead})");
        Check.InRange(Dropout, 0, 1, "--dropout", maxExclusive: true);
    }

    /// <summary>Weights in the model (wte, wpe, the blocks, ln_f; lm_head shares wte), in long arithmetic so an absurd
    /// shape gives a large number rather than an overflow.</summary>
    public long ParameterCount()
    {
        long c = NEmbd;
        long layer = 12 * c * c + 2 * c + (Bias ? 11 * c : 0);
        return (VocabSize + (long)BlockSize) * c + NLayer * layer + (Bias ? 2 * c : c);
    }

    /// <summary>A short stable hash of everything that shapes the parameters, used to refuse mismatched peers.</summary>
    public string Hash()
    {
        string text = $"v{VocabSize}-b{BlockSize}-l{NLayer}-h{NHead}-e{NEmbd}-bias{Bias}";
        var bytes = System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(text));
        return Convert.ToHexString(bytes, 0, 8).ToLowerInvariant();
    }
}

/// <summary>A user-fixable configuration problem; the CLI prints the message and exits with code 2.</summary>
public sealed class ConfigException(string message) : Exception(message);
