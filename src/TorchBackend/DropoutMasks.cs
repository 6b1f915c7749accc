using DistGpt.Model;
using DistGpt.Model.Engine;
using Tensor = TorchSharp.torch.Tensor;
using static TorchSharp.torch;

namespace DistGpt.TorchBackend;

/// <summary>The engine's dropout masks as tensors of 0 and 1/(1-p), drawn from the same streams (see Layers/Dropout and
/// Layers/CausalSelfAttention): a sequence's mask at a site depends only on (step key, global sequence, site[, head]), so a
/// torch worker drops exactly what an engine worker would for the same sequences. Sites are numbered in forward order as
/// Gpt.Build numbers them: the embedding dropout 0, then per block the attention weights, attn.c_proj's output and
/// mlp.c_proj's output.</summary>
sealed class DropoutMasks(GptConfig config, ulong dropoutKey, long firstSequence, int batch, Device device)
{
    public static int EmbeddingSite => 0;
    public static int AttentionSite(int layer) => 1 + 3 * layer;
    public static int AttentionOutputSite(int layer) => 2 + 3 * layer;
    public static int MlpOutputSite(int layer) => 3 + 3 * layer;

    float Keep => 1f / (1f - config.Dropout);

    /// <summary>(B, T, C) for a residual-stream site: T·C draws per sequence, in row-major order.</summary>
    public Tensor Stream(int site)
    {
        int t = config.BlockSize, c = config.NEmbd;
        var mask = new float[(long)batch * t * c];
        Parallel.For(0, batch, b => Fill(mask.AsSpan(b * t * c, t * c), Rng.Key(dropoutKey, (ulong)(firstSequence + b), (ulong)site)));
        return tensor(mask, [batch, t, c]).to(device);
    }

    /// <summary>(B, nh, T, T) for the attention weights: T·T draws per (sequence, head), row-major (causal zeros included).</summary>
    public Tensor Attention(int site)
    {
        int t = config.BlockSize, h = config.NHead, tt = t * t;
        var mask = new float[(long)batch * h * tt];
        Parallel.For(0, batch * h, bh => Fill(mask.AsSpan(bh * tt, tt),
            Rng.Key(dropoutKey, (ulong)(firstSequence + bh / h), (ulong)site, (ulong)(bh % h))));
        return tensor(mask, [batch, h, t, t]).to(device);
    }

    void Fill(Span<float> mask, ulong key)
    {
        var rng = new RandomStream(key);
        float p = config.Dropout, keep = Keep;
        for (int i = 0; i < mask.Length; i++) mask[i] = rng.NextFloat() >= p ? keep : 0f;
    }
}
