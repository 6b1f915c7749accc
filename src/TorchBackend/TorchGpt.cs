using DistGpt.Model;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace DistGpt.TorchBackend;

/// <summary>nanoGPT's GPT on libtorch, the engine's architecture op for op (tanh GELU, LayerNorm eps 1e-5, lm_head tied to
/// wte). Each parameter is a leaf tensor over its slot of the flat weights, and its .grad a view of the same slot of the
/// flat gradients, so backward accumulates the gradient sum in place, where the worker sends it from.
/// Legend: B = batch, T = time, C = channels (n_embd), V = vocab, nh = heads, hs = head size.</summary>
sealed class TorchGpt : IDisposable
{
    readonly GptConfig cfg;
    readonly Dictionary<string, Tensor> parameters = new();
    readonly Tensor future; // (T, T), true above the diagonal: the positions a query may not attend to

    public TorchGpt(Gpt model, FlatTensors flat, Device device)
    {
        cfg = model.Config;
        foreach (var s in model.Parameters.Slots)
        {
            long[] shape = s.Shape.Select(d => (long)d).ToArray();
            var p = flat.Values.narrow(0, s.Offset, s.Length).view(shape).detach().requires_grad_(true);
            p.grad = flat.Grads.narrow(0, s.Offset, s.Length).view(shape);
            parameters[s.Name] = p;
        }
        future = ones(cfg.BlockSize, cfg.BlockSize, ScalarType.Bool, device).triu(1);
    }

    public Tensor this[string name] => parameters[name];

    Tensor? Bias(string name) => cfg.Bias ? parameters[name] : null;

    /// <summary>The (B, T, V) logits and, with targets, the SUM of the token losses (the engine's loss scale 1).</summary>
    public (Tensor Logits, Tensor? LossSum) Forward(Tensor idx, Tensor? targets, DropoutMasks? masks)
    {
        long b = idx.shape[0], t = idx.shape[1];
        var x = parameters["transformer.wte.weight"].index_select(0, idx.view(-1)).view(b, t, cfg.NEmbd)
              + parameters["transformer.wpe.weight"].narrow(0, 0, t); // (B, T, C)
        x = Drop(x, masks?.Stream(DropoutMasks.EmbeddingSite));
        for (int l = 0; l < cfg.NLayer; l++)
        {
            string p = $"transformer.h.{l}.";
            x = x + Drop(Attention(LayerNorm(x, p + "ln_1"), p, masks?.Attention(DropoutMasks.AttentionSite(l))),
                masks?.Stream(DropoutMasks.AttentionOutputSite(l)));
            x = x + Drop(Mlp(LayerNorm(x, p + "ln_2"), p), masks?.Stream(DropoutMasks.MlpOutputSite(l)));
        }
        x = LayerNorm(x, "transformer.ln_f");
        var logits = F.linear(x, parameters["transformer.wte.weight"]); // (B, T, V), lm_head shares wte
        if (targets is null) return (logits, null);
        var loss = F.cross_entropy(logits.view(-1, cfg.VocabSize), targets.view(-1), reduction: nn.Reduction.Sum);
        return (logits, loss);
    }

    Tensor LayerNorm(Tensor x, string name) =>
        F.layer_norm(x, [cfg.NEmbd], parameters[name + ".weight"], Bias(name + ".bias"), 1e-5);

    Tensor Attention(Tensor x, string p, Tensor? dropMask)
    {
        long b = x.shape[0], t = x.shape[1];
        int c = cfg.NEmbd, nh = cfg.NHead, hs = cfg.HeadSize;
        var qkv = F.linear(x, parameters[p + "attn.c_attn.weight"], Bias(p + "attn.c_attn.bias")).split(c, 2); // 3 × (B, T, C)
        var q = qkv[0].view(b, t, nh, hs).transpose(1, 2); // (B, nh, T, hs)
        var k = qkv[1].view(b, t, nh, hs).transpose(1, 2);
        var v = qkv[2].view(b, t, nh, hs).transpose(1, 2);
        var att = q.matmul(k.transpose(-2, -1)) * (1.0 / Math.Sqrt(hs)); // (B, nh, T, T)
        att = att.masked_fill(future.narrow(0, 0, t).narrow(1, 0, t), double.NegativeInfinity).softmax(-1);
        if (dropMask is not null) att = att * dropMask;
        var y = att.matmul(v).transpose(1, 2).contiguous().view(b, t, c); // (B, T, C)
        return F.linear(y, parameters[p + "attn.c_proj.weight"], Bias(p + "attn.c_proj.bias"));
    }

    Tensor Mlp(Tensor x, string p)
    {
        var h = F.linear(x, parameters[p + "mlp.c_fc.weight"], Bias(p + "mlp.c_fc.bias")); // (B, T, 4C)
        h = h.gelu(TorchSharp.Modules.GELU.Approximate.tanh);
        return F.linear(h, parameters[p + "mlp.c_proj.weight"], Bias(p + "mlp.c_proj.bias"));
    }

    static Tensor Drop(Tensor x, Tensor? mask) => mask is null ? x : x * mask;

    public void Dispose()
    {
        foreach (var p in parameters.Values) p.Dispose();
        future.Dispose();
    }
}
