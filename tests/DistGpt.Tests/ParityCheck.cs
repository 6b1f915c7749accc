using DistGpt.Model;
using DistGpt.Model.IO;
using DistGpt.Model.Training;
using Xunit;
using Xunit.Abstractions;

namespace DistGpt.Tests;

/// <summary>A backend's logits, loss, every gradient and two AdamW steps against PyTorch 1.13 (fixtures made by
/// tests/fixtures/make_parity_fixture.py); the engine's test (ParityTests) and the TorchSharp backend's run the same check.
/// Tolerance: per tensor, max |ours - torch| ≤ 2e-5 · max|torch| + 1e-7 — both sides are float32 with different summation
/// orders (packed GEMM vs MKL/OpenBLAS), which alone moves values by a few ulp of the tensor's scale; a wrong formula
/// misses by orders of magnitude more.</summary>
public static class ParityCheck
{
    const double Rtol = 2e-5;

    /// <summary>One training step of the backend under test: zero the model's gradients, forward on (tokens, targets)
    /// (B·T ids each), hand the (B, T, V) logits to checkLogits, backward of the MEAN loss into the model's flat gradient
    /// buffer; returns the mean loss.</summary>
    public delegate float Step(int[] tokens, int[] targets, Action<ReadOnlySpan<float>> checkLogits);

    /// <summary>A backend's step and what it holds, disposed in order after the run.</summary>
    public sealed record Backend(Step Step, params IDisposable[] Resources) : IDisposable
    {
        public void Dispose()
        {
            foreach (var r in Resources) r.Dispose();
        }
    }

    public static void Run(string fixtureName, ITestOutputHelper output, Func<Gpt, int, int, Backend> backendFor)
    {
        var f = SafeTensors.Read(Path.Combine(AppContext.BaseDirectory, "fixtures", fixtureName));
        var meta = f.Metadata;
        var config = new GptConfig(int.Parse(meta["vocab_size"]), int.Parse(meta["block_size"]), int.Parse(meta["n_layer"]),
            int.Parse(meta["n_head"]), int.Parse(meta["n_embd"]), 0f, meta["bias"] == "True");
        using var model = new Gpt(config);
        var p = model.Parameters;
        foreach (var s in p.Slots) f["init." + s.Name].Floats.CopyTo(p.ValuesOf(s));
        Assert.Equal(p.Slots.Count, f.Tensors.Keys.Count(k => k.StartsWith("init.")));

        int b = f["idx1"].Shape[0], t = f["idx1"].Shape[1];
        using var backend = backendFor(model, b, t);
        var schedule = new LearningRateSchedule(float.Parse(meta["learning_rate"]), float.Parse(meta["min_lr"]),
            int.Parse(meta["warmup_iters"]), int.Parse(meta["lr_decay_iters"]));
        using var adam = new AdamW(p, float.Parse(meta["beta1"]), float.Parse(meta["beta2"]), float.Parse(meta["weight_decay"]), float.Parse(meta["eps"]));
        float clip = float.Parse(meta["grad_clip"]);

        float Step(int batch, int it)
        {
            float loss = backend.Step(f[$"idx{batch}"].ToInts(), f[$"targets{batch}"].ToInts(),
                logits => { if (it == 0) Close(output, "logits1", f["logits1"].Floats, logits); });
            if (it == 0)
            {
                foreach (var s in p.Slots) Close(output, "grad1." + s.Name, f["grad1." + s.Name].Floats, p.GradsOf(s));
            }
            var (norm, gradScale) = GradientOps.MeanClipScale(p.Grads, tokens: 1, clip); // the step's backward took the mean
            Assert.Equal(f["gradnorm"].Floats[it], norm, 1e-5 * norm);
            float lr = schedule.At(it);
            Assert.Equal(f["lr"].Floats[it], lr, 1e-9);
            adam.Step(lr, gradScale);
            return loss;
        }

        float loss1 = Step(1, 0);
        Assert.Equal(f["loss1"].Floats[0], loss1, 1e-5);
        float loss2 = Step(2, 1);
        Assert.Equal(f["loss2"].Floats[0], loss2, 1e-5);
        float lrSum = f["lr"].Floats[0] + f["lr"].Floats[1];
        foreach (var s in p.Slots)
        {
            // Adam moves every element by about lr whatever its gradient's size, so an element whose first gradient is below
            // float32 rounding noise (< 1e-4 of its tensor's largest) gets an arbitrary direction in both engines: those
            // may differ by up to the summed step sizes. Above the noise, Adam divides each gradient by its running RMS,
            // so a rounding difference d moves an element by about lr * d / rms: the smaller its gradients next to its
            // tensor's largest, the more summation order shows. With d up to Rtol times the tensor's largest RMS, each
            // element may also differ by lrSum * Rtol * rmsMax / rms_i (RMS from torch's exp_avg_sq). A wrong formula moves
            // elements by about lr everywhere, those with large gradients included, whose slack is ~Rtol * lrSum.
            var g1 = f["grad1." + s.Name].Floats;
            var v2 = f["exp_avg_sq." + s.Name].Floats;
            float gScale = 0, v2Max = 0;
            foreach (float g in g1) gScale = Math.Max(gScale, Math.Abs(g));
            foreach (float v in v2) v2Max = Math.Max(v2Max, v);
            var slack = new double[v2.Length];
            for (int i = 0; i < v2.Length; i++)
                slack[i] = Math.Abs(g1[i]) < 1e-4 * gScale
                    ? 2 * lrSum
                    : Math.Min(2 * lrSum, lrSum * Rtol * Math.Sqrt(v2Max / Math.Max(v2[i], 1e-38)));
            Close(output, "step2." + s.Name, f["step2." + s.Name].Floats, p.ValuesOf(s), slack);
            unsafe
            {
                Close(output, "exp_avg." + s.Name, f["exp_avg." + s.Name].Floats, new Span<float>(adam.ExpAvg.Pointer + s.Offset, (int)s.Length));
                Close(output, "exp_avg_sq." + s.Name, f["exp_avg_sq." + s.Name].Floats, new Span<float>(adam.ExpAvgSq.Pointer + s.Offset, (int)s.Length));
            }
        }
    }

    /// Max |expected - actual| over the tensor ≤ Rtol · max|expected| + 1e-7, each element also allowed its slack.
    static void Close(ITestOutputHelper output, string name, ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, double[]? slack = null)
    {
        Assert.Equal(expected.Length, actual.Length);
        double scale = 0, worst = 0;
        for (int i = 0; i < expected.Length; i++) scale = Math.Max(scale, Math.Abs(expected[i]));
        double allowed = Rtol * scale + 1e-7;
        for (int i = 0; i < expected.Length; i++)
        {
            double diff = Math.Abs(expected[i] - actual[i]);
            if (slack != null) Assert.True(diff <= allowed + slack[i], $"{name}[{i}]: |diff| {diff:E3} > {allowed + slack[i]:E3}");
            else worst = Math.Max(worst, diff);
        }
        if (worst > allowed / 4) output.WriteLine($"{name}: max diff {worst:E2} (scale {scale:E2})");
        Assert.True(worst <= allowed, $"{name}: max |diff| {worst:E3} > {allowed:E3} (tensor scale {scale:E3})");
    }
}
