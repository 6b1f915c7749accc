using System.Runtime.Intrinsics;
using DistGpt.Model;
using DistGpt.Model.Engine;
using DistGpt.Model.Layers;
using Xunit;
using Xunit.Abstractions;
using Tensor = DistGpt.Model.Engine.Tensor;

namespace DistGpt.Tests;

/// <summary>Central finite differences against every fused op's hand-written backward, one op per tiny graph, plus a
/// whole tiny GPT.
///
/// Each op graph ends in a test-only probe loss L = Σ y·r + Σ_k Σ x_k·s_k for fixed random r and s: its backward adds r
/// into y.Grad and s_k into every input's gradient BEFORE the op's backward runs (the tape runs in reverse), so an op
/// that overwrote its input gradients instead of accumulating (+=) fails exactly as a wrong formula does.
///
/// Tolerances, for a float32 forward: perturbation eps = 3e-3 (the actual float step is used in the quotient); per tensor
/// the relative error of the whole vector ||num − ana|| / ||num|| must be below 1e-2, and every element must satisfy
/// |num − ana| ≤ 1e-2·|num| + 1e-3·max|num|. Observed: whole-vector errors ≤ 1e-3 and no element above ~10% of its
/// tolerance (truncation O(eps²) plus float rounding; eps = 1e-2 already shows 0.5% truncation error on the whole GPT's
/// wpe). The self-tests at the end show a backward that is 2% off, or that overwrites instead of accumulating, fails.</summary>
public sealed unsafe class GradientCheckTests(ITestOutputHelper output)
{
    const float Eps = 3e-3f;
    const double MaxRelativeError = 1e-2;
    const double ElementRtol = 1e-2, ElementAtolOfMax = 1e-3;

    // ---------------------------------------------------------------- Embedding

    [Fact]
    public void EmbeddingTokenAndPositionGradientsMatchFiniteDifferencesWithRepeatedTokens()
    {
        const int batch = 3, time = 5, vocab = 7, c = 6;
        using var g = new Graph(withGrad: true);
        var rng = new Random(11);
        var wte = Filled(g, "wte", rng, 1.0, vocab, c);
        var wpe = Filled(g, "wpe", rng, 1.0, time, c);
        var x = g.Activation("x", batch, time, c);
        // token 2 appears four times (also twice at the same position), token 6 never: its rows' gradient is only the probe's.
        int[] tokens = [2, 0, 2, 5, 1, 3, 2, 4, 4, 0, 2, 1, 5, 3, 3];
        g.Add(new Embedding(tokens, wte, wpe, x, batch, time));
        var probe = AddProbe(g, rng, [x], [wte, wpe]);

        var results = Check(g, probe.Value, [wte, wpe]);
        AssertClose(results);
        // the unused token's row gets exactly the probe's seed: nothing from the embedding
        var unused = wte.GradSpan.Slice(6 * c, c).ToArray();
        Assert.Equal(probe.SeedOf(wte).AsSpan(6 * c, c).ToArray(), unused);
    }

    // ---------------------------------------------------------------- LayerNorm

    [Theory]
    [InlineData(true, 2)]   // 2 rows:  one chunk
    [InlineData(false, 2)]
    [InlineData(true, 39)]  // 39 rows: two chunks, so the per-chunk partial dweight/dbias sums are exercised (on 2+ cores)
    [InlineData(false, 39)]
    public void LayerNormGradientsMatchFiniteDifferences(bool bias, int rows)
    {
        const int c = 7;
        using var g = new Graph(withGrad: true);
        var rng = new Random(21 + rows);
        var x = g.Activation("x", rows, c);
        for (int r = 0; r < rows; r++) // a different offset and spread per row, so the mean and variance paths both matter
        {
            double offset = Normal(rng) * 2, spread = 0.5 + rng.NextDouble() * 1.5;
            for (int i = 0; i < c; i++) x.Data[r * c + i] = (float)(offset + spread * Normal(rng));
        }
        var w = g.Activation("w", c);
        for (int i = 0; i < c; i++) w.Data[i] = (float)(1 + 0.5 * Normal(rng));
        var b = bias ? Filled(g, "b", rng, 0.5, c) : null;
        var y = g.Activation("y", rows, c);
        g.Add(new LayerNorm(g, x, w, b, y));
        Tensor[] wrt = b == null ? [x, w] : [x, w, b];
        var probe = AddProbe(g, rng, [y], wrt);

        AssertClose(Check(g, probe.Value, wrt));
    }

    // ---------------------------------------------------------------- Linear

    [Theory]
    [InlineData(true, 13, 19, 23)]  // odd sizes, beyond one 6x16 register tile in every direction
    [InlineData(false, 13, 19, 23)]
    [InlineData(true, 1, 3, 5)]
    [InlineData(false, 7, 1, 2)]
    public void LinearGradientsMatchFiniteDifferences(bool bias, int rows, int inFeatures, int outFeatures)
    {
        using var g = new Graph(withGrad: true);
        var rng = new Random(31 + rows + inFeatures);
        var x = Filled(g, "x", rng, 1.0, rows, inFeatures);
        var w = Filled(g, "w", rng, 1.0 / Math.Sqrt(inFeatures), outFeatures, inFeatures);
        var b = bias ? Filled(g, "b", rng, 0.5, outFeatures) : null;
        var y = g.Activation("y", rows, outFeatures);
        g.Add(new Linear(x, w, b, y));
        Tensor[] wrt = b == null ? [x, w] : [x, w, b];
        var probe = AddProbe(g, rng, [y], wrt);

        AssertClose(Check(g, probe.Value, wrt));
    }

    // ---------------------------------------------------------------- Gelu

    [Theory]
    [InlineData(105)]        // one chunk
    [InlineData(2 * 4096 + 37)] // two chunks of the row-parallel kernel (sampled elements, both chunk edges included)
    public void GeluGradientMatchesFiniteDifferences(int length)
    {
        using var g = new Graph(withGrad: true);
        var rng = new Random(41);
        var x = g.Activation("x", length);
        for (int i = 0; i < length; i++) x.Data[i] = (float)(rng.NextDouble() * 8 - 4); // covers both tails and the bend
        var y = g.Activation("y", length);
        g.Add(new Gelu(x, y));
        var probe = AddProbe(g, rng, [y], [x]);

        int half = (length + 1) / 2;
        var must = new[] { 0, half - 1, half, length - 1 };
        AssertClose(Check(g, probe.Value, [x], sample: 400, mustInclude: must));
    }

    /// <summary>Output and dy/dx against GPT-2's formula evaluated in double, over both tails and the bend, on the vector
    /// lanes and the scalar remainder: within a few float32 ulp (relative, growing with the exponent's size), plus 1e-7 absolute where dy/dx crosses zero (and 1e-36 where the exp is clamped).</summary>
    [Fact]
    public void GeluMatchesTheTanhFormulaInDouble()
    {
        const int length = 4009; // 250 16-lane vectors, one 8-lane vector and a scalar remainder of 1
        using var g = new Graph(withGrad: true);
        var x = g.Activation("x", length);
        var y = g.Activation("y", length);
        var xs = new double[length];
        for (int i = 0; i < length; i++) x.Data[i] = (float)(xs[i] = -14 + 28.0 * i / (length - 1));
        var op = new Gelu(x, y, soleConsumer: true); // stores dy/dx over x
        op.Forward(new StepContext { Training = true });
        for (int i = 0; i < length; i++)
        {
            // (1 + tanh u) / 2 as 1 / (1 + e^-2u), which keeps double's precision in the negative tail
            double v = xs[i], c = Math.Sqrt(2 / Math.PI), z = 2 * c * (v + 0.044715 * v * v * v), a = 1 / (1 + Math.Exp(-z));
            double want = v * a;
            double slope = a + 2 * v * a * (1 - a) * c * (1 + 3 * 0.044715 * v * v);
            double rtol = 4e-7 * (1 + Math.Abs(z)); // float32's rounding of z becomes a relative error of e^z
            Assert.True(Math.Abs(y.Data[i] - want) <= rtol * Math.Abs(want) + 1e-36, $"gelu({v}) = {y.Data[i]}, want {want}");
            Assert.True(Math.Abs(x.Data[i] - slope) <= rtol * Math.Abs(slope) + 1e-7, $"gelu'({v}) = {x.Data[i]}, want {slope}");
        }
    }

    /// <summary>The 16-lane exp (GELU's AVX-512 loop) and the 8-lane one agree bit for bit, over and past the clamps.</summary>
    [Fact]
    public unsafe void ExpAgreesAcrossVectorWidths()
    {
        var xs = new float[4096];
        for (int i = 0; i < xs.Length; i++) xs[i] = -100 + 200f * i / (xs.Length - 1);
        fixed (float* p = xs)
            for (int i = 0; i < xs.Length; i += 16)
            {
                var wide = VectorMath.Exp(Vector512.Load(p + i));
                var low = VectorMath.Exp(Vector256.Load(p + i));
                var high = VectorMath.Exp(Vector256.Load(p + i + 8));
                for (int l = 0; l < 8; l++)
                {
                    Assert.Equal(BitConverter.SingleToInt32Bits(low[l]), BitConverter.SingleToInt32Bits(wide[l]));
                    Assert.Equal(BitConverter.SingleToInt32Bits(high[l]), BitConverter.SingleToInt32Bits(wide[8 + l]));
                }
            }
    }

    /// <summary>As x's only consumer, Gelu stores dy/dx over x in the forward: output and input gradient must match the
    /// recomputing path's to float rounding (the same formulas; x^3 is rounded in another order), across chunk edges.</summary>
    [Fact]
    public void GeluAsSoleConsumerMatchesRecomputingPath()
    {
        const int length = 2 * 4096 + 37;
        using var g = new Graph(withGrad: true);
        var rng = new Random(43);
        var xs = g.Activation("xs", length);
        var xr = g.Activation("xr", length);
        for (int i = 0; i < length; i++) xs.Data[i] = xr.Data[i] = (float)(rng.NextDouble() * 8 - 4);
        var ys = g.Activation("ys", length);
        var yr = g.Activation("yr", length);
        var sole = new Gelu(xs, ys, soleConsumer: true);
        var recompute = new Gelu(xr, yr);
        var step = new StepContext { Training = true };
        sole.Forward(step);
        recompute.Forward(step);
        for (int i = 0; i < length; i++)
        {
            ys.Grad[i] = yr.Grad[i] = (float)(rng.NextDouble() * 2 - 1);
            xs.Grad[i] = float.NaN; // assigned, never read
            xr.Grad[i] = 0f;
        }
        sole.Backward(step);
        recompute.Backward(step);
        for (int i = 0; i < length; i++)
        {
            Assert.True(Math.Abs(yr.Data[i] - ys.Data[i]) <= 1e-6f * Math.Max(1f, Math.Abs(yr.Data[i])), $"y[{i}]: {ys.Data[i]} vs {yr.Data[i]}");
            Assert.True(Math.Abs(xr.Grad[i] - xs.Grad[i]) <= 1e-6f * Math.Max(1f, Math.Abs(xr.Grad[i])), $"dx[{i}]: {xs.Grad[i]} vs {xr.Grad[i]}");
        }
    }

    // ---------------------------------------------------------------- Residual

    [Fact]
    public void ResidualGradientsMatchFiniteDifferences()
    {
        using var g = new Graph(withGrad: true);
        var rng = new Random(51);
        var a = Filled(g, "a", rng, 1.0, 3, 4, 5);
        var b = Filled(g, "b", rng, 1.0, 3, 4, 5);
        var y = g.Activation("y", 3, 4, 5);
        g.Add(new Residual(a, b, y));
        var probe = AddProbe(g, rng, [y], [a, b]);

        AssertClose(Check(g, probe.Value, [a, b]));
    }

    /// <summary>The residual stream feeds the next block's LayerNorm AND the residual add: the two gradients must sum.</summary>
    [Fact]
    public void GradientsOfATensorFeedingTwoOpsAccumulate()
    {
        using var g = new Graph(withGrad: true);
        var rng = new Random(52);
        var x = Filled(g, "x", rng, 1.0, 4, 6);
        var w = Filled(g, "w", rng, 0.5, 6);
        var ln = g.Activation("ln", 4, 6);
        g.Add(new LayerNorm(g, x, w, null, ln));
        var y = g.Activation("y", 4, 6);
        g.Add(new Residual(x, ln, y));
        var probe = AddProbe(g, rng, [y], []);

        AssertClose(Check(g, probe.Value, [x, w]));
    }

    /// <summary>Two "layers" whose GELU outputs share one gradient buffer (Graph.LayerActivation): their gradients must
    /// still match finite differences, because each consumer assigns before the layer below reads.</summary>
    [Fact]
    public void LayersSharingAGradientBufferMatchFiniteDifferences()
    {
        using var g = new Graph(withGrad: true);
        var rng = new Random(53);
        var x = Filled(g, "x", rng, 1.0, 3, 8);
        var w1 = Filled(g, "w1", rng, 0.5, 8, 8);
        var w2 = Filled(g, "w2", rng, 0.5, 8, 8);
        Tensor h = x;
        foreach (var (w, l) in new[] { (w1, 1), (w2, 2) })
        {
            var fc = g.LayerActivation($"fc{l}", "fc", 3, 8);
            g.Add(new Linear(h, w, null, fc, soleConsumer: l > 1));
            var act = g.LayerActivation($"gelu{l}", "gelu", 3, 8);
            g.Add(new Gelu(fc, act, soleConsumer: true));
            h = g.Activation($"out{l}", 3, 8);
            g.Add(new Linear(act, w, null, h, soleConsumer: true));
        }
        var probe = AddProbe(g, rng, [h], []);

        AssertClose(Check(g, probe.Value, [x, w1, w2]));
    }

    /// <summary>A layer-shared gradient buffer under a consumer that adds to its input's gradient would accumulate onto
    /// another layer's leftovers: the first backward refuses the graph.</summary>
    [Fact]
    public void SharingAGradientBufferWithAnAccumulatingConsumerIsRefused()
    {
        using var g = new Graph(withGrad: true);
        var rng = new Random(54);
        var x = Filled(g, "x", rng, 1.0, 2, 4);
        var shared = g.LayerActivation("ln", "ln", 2, 4);
        g.Add(new Residual(x, x, shared));
        var y = g.Activation("y", 2, 4);
        g.Add(new Gelu(shared, y)); // adds to shared's gradient
        g.Forward();
        var e = Assert.Throws<InvalidOperationException>(() => g.Backward());
        Assert.Contains("ln shares its gradient buffer", e.Message);
    }

    // ---------------------------------------------------------------- Dropout

    [Theory]
    [InlineData(0.3f, 3)]
    [InlineData(0.5f, 1)]
    public void DropoutGradientMatchesFiniteDifferencesInTrainingModeWithAFixedKey(float p, int batch)
    {
        using var g = new Graph(withGrad: true);
        var rng = new Random(61);
        var x = Filled(g, "x", rng, 1.0, batch, 4, 5);
        var y = g.Activation("y", batch, 4, 5);
        g.Add(new Dropout(g, x, y, p, site: 3, batch));
        g.Step.Training = true;
        g.Step.DropoutKey = 0xC0FFEE;
        g.Step.FirstSequence = 5;
        var probe = AddProbe(g, rng, [y], [x]);

        AssertClose(Check(g, probe.Value, [x]));

        // the mask is a real one: some elements dropped (y = 0), the others scaled by 1/(1-p)
        g.Forward();
        int dropped = 0;
        for (int i = 0; i < x.Length; i++)
        {
            if (y.Data[i] == 0f) dropped++;
            else Assert.Equal(x.Data[i] / (1f - p), y.Data[i], 1e-6f);
        }
        Assert.InRange(dropped, 1, x.Length - 1);
    }

    [Fact]
    public void DropoutIsTheIdentityInEvalModeForwardAndBackward()
    {
        using var g = new Graph(withGrad: true);
        var rng = new Random(62);
        var x = Filled(g, "x", rng, 1.0, 2, 3, 4);
        var y = g.Activation("y", 2, 3, 4);
        g.Add(new Dropout(g, x, y, 0.4f, site: 0, batch: 2));
        g.Step.Training = false;
        g.Step.DropoutKey = 99;
        var probe = AddProbe(g, rng, [y], [x]);

        AssertClose(Check(g, probe.Value, [x]));
        g.Forward();
        Assert.Equal(x.DataSpan.ToArray(), y.DataSpan.ToArray());
    }

    // ---------------------------------------------------------------- CausalSelfAttention

    [Theory]
    [InlineData(0f, true, 2, 7, 2, 8, false, true)]
    [InlineData(0.25f, true, 2, 7, 2, 8, false, true)]   // attention dropout, training mode, fixed key
    [InlineData(0.25f, false, 2, 7, 2, 8, false, true)]  // dropout configured but eval mode: no dropout
    [InlineData(0f, true, 1, 5, 3, 9, false, true)]      // odd head size 3
    [InlineData(0.1f, true, 3, 4, 1, 5, false, true)]    // one head, several sequences
    [InlineData(0.25f, true, 2, 7, 2, 8, true, true)]    // qkv's only consumer: assigns its gradient
    [InlineData(0.25f, true, 2, 7, 2, 8, false, false)]  // the packed-GEMM path (long sequences)
    [InlineData(0.25f, true, 2, 7, 2, 8, true, false)]
    [InlineData(0f, true, 1, 5, 3, 9, true, false)]
    // T a multiple of 8 (scores straight into P, whole-vector rows, 8x8 transposes) and head size 16 (paired weighted sums)
    [InlineData(0f, true, 2, 16, 2, 32, false, true)]
    [InlineData(0.25f, true, 2, 16, 2, 32, true, true)]
    [InlineData(0.1f, true, 1, 40, 2, 64, false, true)]  // head size 32, rows past one 32-column block (5 vectors)
    public void CausalSelfAttentionGradientMatchesFiniteDifferences(float dropout, bool training, int batch, int time, int heads, int c,
        bool soleConsumer, bool fused)
    {
        using var g = new Graph(withGrad: true);
        var rng = new Random(71 + time);
        var qkv = Filled(g, "qkv", rng, 1.0, batch, time, 3 * c);
        var y = g.Activation("y", batch, time, c);
        g.Add(new CausalSelfAttention(g, qkv, y, batch, time, heads, dropout, site: 2, soleConsumer, fusedMaxTime: fused ? time : 0));
        g.Step.Training = training;
        g.Step.DropoutKey = 0xBEEF;
        g.Step.FirstSequence = 7;
        // the probe's term on qkv makes it a second consumer, so the sole-consumer cases go without it
        var probe = AddProbe(g, rng, [y], soleConsumer ? [] : [qkv]);

        AssertClose(Check(g, probe.Value, [qkv]));
    }

    [Fact]
    public void CausalSelfAttentionOutputNeverDependsOnLaterPositions()
    {
        const int batch = 1, time = 6, heads = 2, c = 4;
        using var g = new Graph(withGrad: true);
        var rng = new Random(72);
        var qkv = Filled(g, "qkv", rng, 1.0, batch, time, 3 * c);
        var y = g.Activation("y", batch, time, c);
        g.Add(new CausalSelfAttention(g, qkv, y, batch, time, heads, 0f, site: 0));
        // probe only position 2's output: the whole gradient must vanish on positions 3..5
        var r = new float[y.Length];
        for (int i = 2 * c; i < 3 * c; i++) r[i] = 1f;
        var probe = g.Add(new ProbeLoss());
        probe.Add(y, r);
        g.Forward();
        g.Backward();
        var grad = qkv.GradSpan;
        for (int t = 3; t < time; t++)
            for (int j = 0; j < 3 * c; j++) Assert.Equal(0f, grad[t * 3 * c + j]);
        Assert.Contains(grad[..(3 * 3 * c)].ToArray(), v => v != 0f);
    }

    // ---------------------------------------------------------------- lm_head + cross-entropy

    [Theory]
    [InlineData(1f, 5)] // three row blocks, the last one ragged
    [InlineData(1f / 12, 12)] // the mean's scale, one block
    [InlineData(0.37f, 4)]
    public void LmHeadCrossEntropyGradientMatchesFiniteDifferencesWithLossScale(float lossScale, int rowBlock)
    {
        const int rows = 12, c = 6, vocab = 9;
        using var g = new Graph(withGrad: true);
        var rng = new Random(81);
        var x = Filled(g, "x", rng, 1.0, rows, c);
        var w = Parameter(g, "w", rng, 0.8, vocab, c);
        int[] targets = Enumerable.Range(0, rows).Select(i => (i * 5 + 3) % vocab).ToArray();
        targets[4] = targets[5] = 0;
        var loss = g.Add(new LmHeadCrossEntropy(g, x, w, targets, rowBlock));
        loss.LossScale = lossScale;
        var probe = AddProbe(g, rng, [], [w]);

        w.GradSpan.Clear();
        AssertClose(Check(g, () => loss.LossSum() * lossScale + probe.Value(), [x, w]));

        // the forward is the textbook value
        g.Forward();
        double expected = 0;
        for (int r = 0; r < rows; r++)
        {
            var logits = new double[vocab];
            for (int j = 0; j < vocab; j++)
                for (int k = 0; k < c; k++) logits[j] += (double)x.Data[r * c + k] * w.Data[j * c + k];
            double max = logits.Max();
            expected += max + Math.Log(logits.Sum(l => Math.Exp(l - max))) - logits[targets[r]];
        }
        Assert.Equal(expected, loss.LossSum(), 1e-4);

        // the gradient computed in the forward (announced) has the bits of the one backward recomputes (a graph of
        // its own: the probe's additions to dW would come in another order)
        using var bare = new Graph(withGrad: true);
        var (bx, bw) = (Filled(bare, "x", rng, 1.0, rows, c), Parameter(bare, "w", rng, 0.8, vocab, c));
        var bareLoss = bare.Add(new LmHeadCrossEntropy(bare, bx, bw, targets, rowBlock));
        bareLoss.LossScale = lossScale;
        (float[], float[]) Gradients(bool announce)
        {
            bw.GradSpan.Clear();
            if (announce) bareLoss.AnnounceGradient(lossScale);
            bare.Forward();
            bare.Backward();
            return (bx.GradSpan.ToArray(), bw.GradSpan.ToArray());
        }
        var (dx, dw) = Gradients(announce: false);
        var (dxAnnounced, dwAnnounced) = Gradients(announce: true);
        Assert.Equal(dx, dxAnnounced);
        Assert.Equal(dw, dwAnnounced);
        Assert.Contains(dw, v => v != 0f);

        bareLoss.AnnounceGradient(lossScale * 2);
        bare.Forward();
        Assert.Throws<InvalidOperationException>(() => bare.Backward());
    }

    // ---------------------------------------------------------------- whole GPT

    [Theory]
    [InlineData(true, 0f)]
    [InlineData(false, 0f)]
    [InlineData(true, 0.1f)]
    [InlineData(false, 0.1f)]
    public void TinyGptGradientOfTheMeanLossMatchesFiniteDifferencesOnSampledParameters(bool bias, float dropout)
    {
        var cfg = new GptConfig(VocabSize: 11, BlockSize: 6, NLayer: 2, NHead: 2, NEmbd: 8, Dropout: dropout, Bias: bias);
        using var model = new Gpt(cfg);
        var p = model.Parameters;
        var rng = new Random(bias ? 91 : 92);
        // Wider than nanoGPT's N(0, 0.02) init so attention, LayerNorm and GELU are far from linear.
        foreach (var slot in p.Slots)
        {
            var v = p.ValuesOf(slot);
            bool gain = slot.Shape.Length == 1 && slot.Name.EndsWith(".weight");
            for (int i = 0; i < v.Length; i++)
                v[i] = gain ? (float)(1 + 0.3 * Normal(rng)) : (float)((slot.Shape.Length == 1 ? 0.2 : 0.35) * Normal(rng));
        }
        const int batch = 2, time = 6;
        using var graph = model.Build(batch, time, withGrad: true);
        for (int i = 0; i < batch * time; i++)
        {
            graph.Tokens[i] = rng.Next(cfg.VocabSize);
            graph.Targets[i] = rng.Next(cfg.VocabSize);
        }
        graph.Tokens[3] = graph.Tokens[7] = graph.Tokens[8] = 4; // repeated tokens
        graph.Step.Training = dropout > 0;
        graph.Step.DropoutKey = 0x5EED;
        graph.Step.FirstSequence = 4;
        float scale = 1f / graph.Loss.Tokens;

        p.ZeroGrads();
        graph.Forward();
        graph.Backward(scale);
        var analyticAll = p.Grads.Span.ToArray();
        Assert.Contains(analyticAll, v => v != 0f);

        // ~200 parameters: three from every tensor, the rest uniformly from the flat buffer
        var chosen = new SortedSet<long>();
        foreach (var slot in p.Slots)
            for (int k = 0; k < 3; k++) chosen.Add(slot.Offset + rng.NextInt64(slot.Length));
        while (chosen.Count < 200) chosen.Add(rng.NextInt64(p.Count));

        double Loss()
        {
            graph.Graph.Forward();
            return graph.Loss.LossSum() * scale;
        }
        var values = p.Values.Pointer;
        var idx = chosen.ToArray();
        var num = new double[idx.Length];
        var ana = new double[idx.Length];
        for (int k = 0; k < idx.Length; k++)
        {
            num[k] = Numeric(&values[idx[k]], Loss);
            ana[k] = analyticAll[idx[k]];
        }
        var result = Compare($"gpt(bias={bias}, dropout={dropout})", num, ana);
        // where it went wrong, by tensor
        foreach (var slot in p.Slots)
        {
            var inSlot = Enumerable.Range(0, idx.Length).Where(k => idx[k] >= slot.Offset && idx[k] < slot.Offset + slot.Length).ToArray();
            var r = Compare(slot.Name, inSlot.Select(k => num[k]).ToArray(), inSlot.Select(k => ana[k]).ToArray(), scaleOverride: result.MaxAbs);
            output.WriteLine(r.ToString());
            Assert.True(r.WorstElementExcess <= 1, r.ToString());
        }
        AssertClose([result]);
    }

    // ---------------------------------------------------------------- the checker itself

    [Fact]
    public void CheckerRejectsABackwardThatIsTwoPercentOff()
    {
        using var g = new Graph(withGrad: true);
        var rng = new Random(101);
        var x = Filled(g, "x", rng, 1.0, 5, 7);
        var y = g.Activation("y", 5, 7);
        g.Add(new ScaledCopy(x, y, forward: 2f, backward: 2.04f, accumulate: true));
        var probe = AddProbe(g, rng, [y], []);
        var r = Check(g, probe.Value, [x]).Single();
        Assert.False(r.Passed, r.ToString());
    }

    [Fact]
    public void CheckerRejectsABackwardThatOverwritesInsteadOfAccumulating()
    {
        using var g = new Graph(withGrad: true);
        var rng = new Random(102);
        var x = Filled(g, "x", rng, 1.0, 5, 7);
        var y = g.Activation("y", 5, 7);
        g.Add(new ScaledCopy(x, y, forward: 2f, backward: 2f, accumulate: false));
        var probe = AddProbe(g, rng, [y], [x]);
        var r = Check(g, probe.Value, [x]).Single();
        Assert.False(r.Passed, r.ToString());
    }

    [Fact]
    public void CheckerAcceptsACorrectBackward()
    {
        using var g = new Graph(withGrad: true);
        var rng = new Random(103);
        var x = Filled(g, "x", rng, 1.0, 5, 7);
        var y = g.Activation("y", 5, 7);
        g.Add(new ScaledCopy(x, y, forward: 2f, backward: 2f, accumulate: true));
        var probe = AddProbe(g, rng, [y], [x]);
        AssertClose(Check(g, probe.Value, [x]));
    }

    // ================================================================ machinery

    /// <summary>Test-only scalar loss: L = Σ_terms Σ_i t_i · w_i. Forward does nothing (Value reads the current data);
    /// Backward adds each w into its tensor's gradient. Append it last so its backward runs first.</summary>
    sealed class ProbeLoss : Op
    {
        readonly List<(Tensor Tensor, float[] Weights)> terms = new();

        public void Add(Tensor t, float[] weights)
        {
            Assert.Equal(t.Length, weights.Length);
            terms.Add((t, weights));
        }

        public float[] SeedOf(Tensor t) => terms.First(x => x.Tensor == t).Weights;

        public double Value()
        {
            double sum = 0;
            foreach (var (t, w) in terms)
                for (int i = 0; i < w.Length; i++) sum += (double)t.Data[i] * w[i];
            return sum;
        }

        public override void Forward(StepContext step) { }

        public override void Backward(StepContext step)
        {
            foreach (var (t, w) in terms)
                for (int i = 0; i < w.Length; i++) t.Grad[i] += w[i];
        }
    }

    /// <summary>y = forward·x with a deliberately configurable backward, to prove the checker's teeth.</summary>
    sealed class ScaledCopy(Tensor x, Tensor y, float forward, float backward, bool accumulate) : Op
    {
        public override void Forward(StepContext step)
        {
            for (int i = 0; i < x.Length; i++) y.Data[i] = forward * x.Data[i];
        }

        public override void Backward(StepContext step)
        {
            for (int i = 0; i < x.Length; i++)
                x.Grad[i] = (accumulate ? x.Grad[i] : 0f) + backward * y.Grad[i];
        }
    }

    sealed record CheckResult(string Name, int Count, double RelativeError, double WorstElementExcess, double MaxAbs, int WorstIndex, double WorstNum, double WorstAna)
    {
        public bool Passed => RelativeError < MaxRelativeError && WorstElementExcess <= 1;

        public override string ToString() =>
            $"{Name}: {Count} elements, ||num-ana||/||num|| = {RelativeError:E2} (limit {MaxRelativeError:E0}), " +
            $"worst element #{WorstIndex} num {WorstNum:G6} ana {WorstAna:G6} uses {WorstElementExcess:P0} of its tolerance, max|num| {MaxAbs:G4}";
    }

    static ProbeLoss AddProbe(Graph g, Random rng, Tensor[] outputs, Tensor[] inputs)
    {
        var probe = new ProbeLoss();
        foreach (var t in outputs) probe.Add(t, RandomArray(rng, t.Length, 1.0));
        foreach (var t in inputs) probe.Add(t, RandomArray(rng, t.Length, 0.5));
        return g.Add(probe);
    }

    /// <summary>Analytic gradients from one Forward + Backward, then central differences on every element of each tensor
    /// (or a random sample of <paramref name="sample"/> elements plus <paramref name="mustInclude"/>).</summary>
    List<CheckResult> Check(Graph g, Func<double> loss, Tensor[] wrt, int? sample = null, int[]? mustInclude = null)
    {
        g.Forward();
        g.Backward();
        var analytic = wrt.Select(t => t.GradSpan.ToArray()).ToList();
        double Loss()
        {
            g.Forward();
            return loss();
        }
        var results = new List<CheckResult>();
        var rng = new Random(7);
        for (int k = 0; k < wrt.Length; k++)
        {
            var t = wrt[k];
            int[] indices = sample is { } s && s < t.Length
                ? Enumerable.Range(0, t.Length).OrderBy(_ => rng.Next()).Take(s).Concat(mustInclude ?? []).Distinct().Order().ToArray()
                : Enumerable.Range(0, t.Length).ToArray();
            var num = new double[indices.Length];
            var ana = new double[indices.Length];
            for (int j = 0; j < indices.Length; j++)
            {
                num[j] = Numeric(t.Data + indices[j], Loss);
                ana[j] = analytic[k][indices[j]];
            }
            var r = Compare(t.Name, num, ana);
            output.WriteLine(r.ToString());
            results.Add(r);
        }
        return results;
    }

    /// <summary>(L(v + e) − L(v − e)) / (actual float step), restoring v exactly.</summary>
    static double Numeric(float* v, Func<double> loss)
    {
        float old = *v, up = old + Eps, down = old - Eps;
        *v = up;
        double lp = loss();
        *v = down;
        double lm = loss();
        *v = old;
        return (lp - lm) / ((double)up - down);
    }

    static CheckResult Compare(string name, double[] num, double[] ana, double? scaleOverride = null)
    {
        double diff2 = 0, num2 = 0, maxAbs = 0;
        for (int i = 0; i < num.Length; i++)
        {
            diff2 += (num[i] - ana[i]) * (num[i] - ana[i]);
            num2 += num[i] * num[i];
            maxAbs = Math.Max(maxAbs, Math.Abs(num[i]));
        }
        double scale = scaleOverride ?? maxAbs;
        double worst = 0;
        int worstAt = -1;
        for (int i = 0; i < num.Length; i++)
        {
            double tol = ElementRtol * Math.Abs(num[i]) + ElementAtolOfMax * scale + 1e-7;
            double excess = Math.Abs(num[i] - ana[i]) / tol;
            if (excess > worst || worstAt < 0) (worst, worstAt) = (excess, i);
        }
        double rel = num2 > 0 ? Math.Sqrt(diff2 / num2) : Math.Sqrt(diff2);
        return new CheckResult(name, num.Length, rel, worst, maxAbs, worstAt,
            worstAt >= 0 ? num[worstAt] : 0, worstAt >= 0 ? ana[worstAt] : 0);
    }

    static void AssertClose(IEnumerable<CheckResult> results)
    {
        foreach (var r in results)
        {
            Assert.True(r.Count > 0, $"{r.Name}: nothing checked");
            Assert.True(r.MaxAbs > 0, $"{r.Name}: the numeric gradient is identically zero, the check proves nothing");
            Assert.True(r.Passed, r.ToString());
        }
    }

    static Tensor Filled(Graph g, string name, Random rng, double std, params int[] shape)
    {
        var t = g.Activation(name, shape);
        for (int i = 0; i < t.Length; i++) t.Data[i] = (float)(std * Normal(rng));
        return t;
    }

    /// <summary>As a model parameter: a gradient the graph does not zero before backward (the caller does).</summary>
    static Tensor Parameter(Graph g, string name, Random rng, double std, params int[] shape)
    {
        long n = shape.Aggregate(1L, (a, d) => a * d);
        var t = new Tensor(name, g.Allocate(n).Pointer, g.Allocate(n).Pointer, shape);
        for (int i = 0; i < t.Length; i++) t.Data[i] = (float)(std * Normal(rng));
        return t;
    }

    static float[] RandomArray(Random rng, int n, double std) =>
        Enumerable.Range(0, n).Select(_ => (float)(std * Normal(rng))).ToArray();

    static double Normal(Random rng) =>
        Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
}
