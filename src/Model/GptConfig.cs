namespace DistGpt.Model;

/// <summary>The model's shape, named as nanoGPT's GPTConfig.</summary>
public sealed record GptConfig(int VocabSize, int BlockSize, int NLayer, int NHead, int NEmbd, float Dropout, bool Bias)
{
    public int HeadSize => NEmbd / NHead;

    /// <summary>Throws <see cref="ConfigException"/> naming the offending field.</summary>
    public void Validate()
    {
        if (VocabSize < 1) throw new ConfigException($"vocab_size must be positive (got {VocabSize})");
        if (BlockSize < 1) throw new ConfigException($"--block-size must be positive (got {BlockSize})");
        if (NLayer < 1) throw new ConfigException($"--n-layer must be positive (got {NLayer})");
        if (NHead < 1) throw new ConfigException($"--n-head must be positive (got {NHead})");
        if (NEmbd < 1) throw new ConfigException($"--n-embd must be positive (got {NEmbd})");
        if (NEmbd % NHead != 0) throw new ConfigException($"--n-embd ({NEmbd}) must be divisible by --n-head ({NHead})");
        if (Dropout < 0 || Dropout >= 1) throw new ConfigException($"--dropout must be in [0, 1) (got {Dropout})");
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
