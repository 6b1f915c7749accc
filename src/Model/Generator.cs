using DistGpt.Model.Data;
using DistGpt.Model.Engine;

namespace DistGpt.Model;

/// <summary>Autoregressive sampling with temperature and top-k. Causal attention means position t never sees later
/// positions, so a context of length L runs through a graph of the next power-of-two length (≤ block_size) padded at
/// the end, and the logits at L-1 are read: at most ~log2(block) graphs are ever built. Only the tokenizer's ids are
/// drawn: a vocab_size padded past them (GPT-2's 50257 → 50304) has logits that are never sampled.</summary>
/// <param name="tokenizerVocab">ids [0, tokenizerVocab) may be drawn; default every logit</param>
public sealed class Generator(Gpt model, int? tokenizerVocab = null) : IDisposable
{
    readonly Dictionary<int, GptGraph> graphs = new();

    public int[] Generate(int[] prompt, int maxNewTokens, float temperature, int topK, ulong seed)
    {
        if (prompt.Length == 0) throw new ConfigException("--prompt must not be empty");
        Check.Positive(temperature, "--temperature");
        var rng = new RandomStream(Rng.Key(seed, 0x5a3913));
        var tokens = new List<int>(prompt);
        int v = model.Config.VocabSize, block = model.Config.BlockSize, drawn = Math.Min(v, tokenizerVocab ?? v);
        var scaled = new float[drawn];
        for (int n = 0; n < maxNewTokens; n++)
        {
            int len = Math.Min(tokens.Count, block);
            int padded = Math.Min(block, (int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)len));
            if (!graphs.TryGetValue(padded, out var g)) graphs[padded] = g = model.Build(1, padded, withGrad: false, withLoss: false);
            Array.Clear(g.Tokens);
            for (int i = 0; i < len; i++) g.Tokens[i] = tokens[tokens.Count - len + i];
            g.Step.Training = false;
            g.Forward();
            var logits = g.Logits.DataSpan.Slice((len - 1) * v, v);
            for (int j = 0; j < drawn; j++) scaled[j] = logits[j] / temperature;
            if (topK > 0 && topK < drawn)
            {
                float kth = scaled.OrderDescending().ElementAt(topK - 1);
                for (int j = 0; j < drawn; j++) if (scaled[j] < kth) scaled[j] = float.NegativeInfinity;
            }
            tokens.Add(Sample(scaled, rng.NextFloat()));
        }
        return tokens.ToArray();
    }

    /// <summary>Draws a token from logits already divided by the temperature, with <paramref name="u"/> uniform in [0, 1).
    /// The largest logit is subtracted before exp, so a low temperature (large logits) cannot overflow to Inf/NaN; and
    /// a draw past the (rounded) total falls on the last token that has any weight, never on one that has none.</summary>
    public static int Sample(float[] scaledLogits, float u)
    {
        var weights = scaledLogits.AsSpan();
        float max = System.Numerics.Tensors.TensorPrimitives.Max(weights);
        System.Numerics.Tensors.TensorPrimitives.Subtract(weights, max, weights);
        System.Numerics.Tensors.TensorPrimitives.Exp(weights, weights); // in (0, 1], the likeliest token exactly 1
        float target = u * System.Numerics.Tensors.TensorPrimitives.Sum(weights), acc = 0;
        int next = -1;
        for (int j = 0; j < weights.Length; j++)
        {
            if (!(weights[j] > 0)) continue;
            next = j;
            acc += weights[j];
            if (target < acc) break;
        }
        return next;
    }

    public void Dispose()
    {
        foreach (var g in graphs.Values) g.Dispose();
    }
}
