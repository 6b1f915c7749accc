using DistGpt.Model.Engine;
using DistGpt.Model.Layers;

namespace DistGpt.Model;

/// <summary>nanoGPT's GPT: token + position embeddings, pre-LayerNorm blocks of causal self-attention and a GELU MLP,
/// final LayerNorm, lm_head tied to wte. Parameters live in one flat buffer under nanoGPT's state_dict names.
/// Legend: B = batch, T = time, C = channels (n_embd), V = vocab, nh = heads.</summary>
public sealed class Gpt : IDisposable
{
    public GptConfig Config { get; }
    public FlatParameters Parameters { get; }

    /// <param name="values">allocates (or maps) the flat value buffer for a parameter count; default a buffer of its own</param>
    /// <param name="grads">likewise for the gradients</param>
    public Gpt(GptConfig config, Func<long, NativeBuffer>? values = null, Func<long, NativeBuffer>? grads = null)
    {
        config.Validate();
        Config = config;
        Parameters = new FlatParameters(Layout(config), values, grads);
    }

    public static IEnumerable<(string Name, int[] Shape)> Layout(GptConfig cfg)
    {
        int c = cfg.NEmbd;
        yield return ("transformer.wte.weight", [cfg.VocabSize, c]);
        yield return ("transformer.wpe.weight", [cfg.BlockSize, c]);
        for (int l = 0; l < cfg.NLayer; l++)
        {
            string p = $"transformer.h.{l}.";
            foreach (var item in LayerNormLayout(p + "ln_1", c, cfg.Bias)) yield return item;
            foreach (var item in LinearLayout(p + "attn.c_attn", c, 3 * c, cfg.Bias)) yield return item;
            foreach (var item in LinearLayout(p + "attn.c_proj", c, c, cfg.Bias)) yield return item;
            foreach (var item in LayerNormLayout(p + "ln_2", c, cfg.Bias)) yield return item;
            foreach (var item in LinearLayout(p + "mlp.c_fc", c, 4 * c, cfg.Bias)) yield return item;
            foreach (var item in LinearLayout(p + "mlp.c_proj", 4 * c, c, cfg.Bias)) yield return item;
        }
        foreach (var item in LayerNormLayout("transformer.ln_f", c, cfg.Bias)) yield return item;
    }

    static IEnumerable<(string, int[])> LinearLayout(string name, int inF, int outF, bool bias)
    {
        yield return (name + ".weight", [outF, inF]);
        if (bias) yield return (name + ".bias", [outF]);
    }

    static IEnumerable<(string, int[])> LayerNormLayout(string name, int c, bool bias)
    {
        yield return (name + ".weight", [c]);
        if (bias) yield return (name + ".bias", [c]);
    }

    /// <summary>nanoGPT's init: N(0, 0.02) for weights and embeddings, N(0, 0.02/sqrt(2 n_layer)) for the residual
    /// projections (c_proj), zero biases, LayerNorm gains 1.</summary>
    public void Initialize(ulong seed)
    {
        var rng = new RandomStream(Rng.Key(seed, 0x1417));
        double projStd = 0.02 / Math.Sqrt(2.0 * Config.NLayer);
        foreach (var slot in Parameters.Slots)
        {
            var values = Parameters.ValuesOf(slot);
            if (slot.Shape.Length == 1)
            {
                values.Fill(slot.Name.EndsWith(".weight") ? 1f : 0f);
                continue;
            }
            double std = slot.Name.EndsWith("c_proj.weight") ? projStd : 0.02;
            for (int i = 0; i < values.Length; i++) values[i] = (float)(rng.NextNormal() * std);
        }
    }

    /// <summary>Records the tape for a (batch, time) input. With a loss the graph ends in the lm_head fused with
    /// the cross-entropy (no whole logits); without one, in the logits.
    /// Parameter gradients accumulate into <paramref name="grads"/> (laid out as Parameters.Grads; default that buffer).</summary>
    public GptGraph Build(int batch, int time, bool withGrad, bool withLoss = true, NativeBuffer? grads = null)
    {
        if (time > Config.BlockSize) throw new ConfigException($"sequence length {time} exceeds block_size {Config.BlockSize}");
        var cfg = Config;
        int c = cfg.NEmbd, bt = batch * time;
        var g = new Graph(withGrad);
        var tokens = new int[bt];
        var targets = new int[bt];
        Tensor P(string name) => Parameters.View(name, grads);
        Tensor? Bias(string name) => cfg.Bias ? P(name) : null;
        int site = 0;
        Tensor? stream = null; // the residual stream's first tensor: every tensor on the stream shares its gradient
        Tensor Activation(string name, bool onStream, params int[] shape) =>
            onStream && stream != null ? g.ActivationSharingGrad(name, stream, shape) : g.Activation(name, shape);
        Tensor MaybeDropout(Tensor x, string name, bool onStream = false)
        {
            if (cfg.Dropout <= 0) return x;
            var y = Activation(name, onStream, x.Shape);
            g.Add(new Dropout(g, x, y, cfg.Dropout, site++, batch));
            return y;
        }
        bool dropout = cfg.Dropout > 0;

        var x = g.Activation("emb", batch, time, c);
        g.Add(new Embedding(tokens, P("transformer.wte.weight"), P("transformer.wpe.weight"), x, batch, time));
        x = MaybeDropout(x, "emb.drop");
        stream = x;
        for (int l = 0; l < cfg.NLayer; l++)
        {
            string p = $"transformer.h.{l}.";
            var ln1 = g.LayerActivation(p + "ln_1", "ln_1", batch, time, c);
            g.Add(new LayerNorm(g, x, P(p + "ln_1.weight"), Bias(p + "ln_1.bias"), ln1));
            var qkv = g.LayerActivation(p + "qkv", "qkv", batch, time, 3 * c);
            g.Add(new Linear(ln1, P(p + "attn.c_attn.weight"), Bias(p + "attn.c_attn.bias"), qkv, soleConsumer: true));
            var att = g.LayerActivation(p + "att", "att", batch, time, c);
            g.Add(new CausalSelfAttention(g, qkv, att, batch, time, cfg.NHead, cfg.Dropout, site++, soleConsumer: true));
            var proj = Activation(p + "attn.proj", !dropout, batch, time, c);
            g.Add(new Linear(att, P(p + "attn.c_proj.weight"), Bias(p + "attn.c_proj.bias"), proj, soleConsumer: true));
            proj = MaybeDropout(proj, p + "attn.drop", onStream: true);
            var x1 = Activation(p + "res1", true, batch, time, c);
            g.Add(new Residual(x, proj, x1));

            var ln2 = g.LayerActivation(p + "ln_2", "ln_2", batch, time, c);
            g.Add(new LayerNorm(g, x1, P(p + "ln_2.weight"), Bias(p + "ln_2.bias"), ln2));
            var fc = g.LayerActivation(p + "fc", "fc", batch, time, 4 * c);
            g.Add(new Linear(ln2, P(p + "mlp.c_fc.weight"), Bias(p + "mlp.c_fc.bias"), fc, soleConsumer: true));
            var gelu = g.LayerActivation(p + "gelu", "gelu", batch, time, 4 * c);
            g.Add(new Gelu(fc, gelu, soleConsumer: true));
            var mlp = Activation(p + "mlp.proj", !dropout, batch, time, c);
            g.Add(new Linear(gelu, P(p + "mlp.c_proj.weight"), Bias(p + "mlp.c_proj.bias"), mlp, soleConsumer: true));
            mlp = MaybeDropout(mlp, p + "mlp.drop", onStream: true);
            x = Activation(p + "res2", true, batch, time, c);
            g.Add(new Residual(x1, mlp, x));
        }
        var lnf = g.Activation("ln_f", batch, time, c);
        g.Add(new LayerNorm(g, x, P("transformer.ln_f.weight"), Bias("transformer.ln_f.bias"), lnf));
        if (withLoss)
        {
            var loss = g.Add(new LmHeadCrossEntropy(g, lnf, P("transformer.wte.weight"), targets)); // lm_head shares wte
            return new GptGraph(g, batch, time, tokens, targets, null, loss);
        }
        var logits = g.Activation("logits", batch, time, cfg.VocabSize);
        g.Add(new Linear(lnf, P("transformer.wte.weight"), null, logits, soleConsumer: true)); // lm_head shares wte
        return new GptGraph(g, batch, time, tokens, targets, logits, null);
    }

    public void Dispose() => Parameters.Dispose();
}

/// <summary>A recorded forward/backward pass for one (B, T) shape, with its input slots.</summary>
public sealed class GptGraph(Graph graph, int batch, int time, int[] tokens, int[] targets, Tensor? logits, LmHeadCrossEntropy? loss) : IDisposable
{
    public Graph Graph { get; } = graph;
    public int Batch { get; } = batch;
    public int Time { get; } = time;
    /// <summary>(B*T) token ids, row-major; written by the caller before Forward.</summary>
    public int[] Tokens { get; } = tokens;
    public int[] Targets { get; } = targets;
    /// <summary>The (B*T, V) logits of a graph built without the loss (a graph with one never holds them whole).</summary>
    public Tensor Logits => logits ?? throw new InvalidOperationException("a graph with a loss computes its logits a row block at a time; build one without the loss for whole logits");
    public LmHeadCrossEntropy Loss => loss ?? throw new InvalidOperationException("graph was built without a loss");
    public StepContext Step => Graph.Step;

    /// <summary>Forward pass; returns the mean token loss when the graph has a loss, else NaN. beforeOp as in
    /// <see cref="Graph.Forward"/>. With <paramref name="lossGradientScale"/> (the scale the Backward that follows will
    /// be given) the loss computes its gradient during the forward, while each block of logits is at hand, instead of
    /// recomputing them in backward; parameter gradients must then be zeroed before this forward, not after it.</summary>
    public float Forward(Action<int>? beforeOp = null, float? lossGradientScale = null)
    {
        if (lossGradientScale is { } scale) Loss.AnnounceGradient(scale);
        Graph.Forward(beforeOp);
        return loss == null ? float.NaN : (float)(loss.LossSum() / loss.Tokens);
    }

    /// <summary>Backward from the loss, scaled by lossScale (1/tokens gives the mean's gradient, 1 the sum's); afterOp as
    /// in <see cref="Graph.Backward"/>.</summary>
    public void Backward(float lossScale, Action<int>? afterOp = null)
    {
        Loss.LossScale = lossScale;
        Graph.Backward(afterOp);
    }

    public void Dispose() => Graph.Dispose();
}
