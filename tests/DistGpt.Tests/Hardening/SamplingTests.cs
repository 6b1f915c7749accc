using DistGpt.Model;
using DistGpt.Model.Data;
using DistGpt.Model.IO;
using Xunit;
using Xunit.Abstractions;

namespace DistGpt.Tests.Hardening;

/// <summary>Sampling at low temperature (finding 6): the softmax subtracts the largest logit, so logits divided by a small
/// temperature cannot overflow exp to Inf (and the probabilities to NaN).</summary>
public sealed class SamplingTests : IDisposable
{
    readonly TempDirectory temp = new("sampling");
    readonly UserErrors cli;

    public SamplingTests(ITestOutputHelper output) => cli = new UserErrors(output, temp);

    public void Dispose() => temp.Dispose();

    [Fact]
    public void LogitsBeyondExpsRangeStillPickTheLikeliestToken()
    {
        // logits 10, 9.9 and 0 at T = 0.01: exp(1000) is Inf in float, and Inf/Inf was NaN, which sampled the last token.
        float[] scaled = [1000f, 990f, 0f];
        for (float u = 0; u < 1; u += 0.125f)
            Assert.Equal(0, Generator.Sample((float[])scaled.Clone(), u));
        Assert.Equal(1, Generator.Sample([990f, 1010f, float.NegativeInfinity], 0.5f));
    }

    [Fact]
    public void ADrawPastTheRoundedTotalNeverLandsOnATokenWithoutWeight() =>
        Assert.Equal(1, Generator.Sample([0f, 0f, float.NegativeInfinity], 0.99999994f));

    [Fact]
    public void SamplingAtTemperatureOneHundredthEqualsGreedyDecoding()
    {
        string run = temp.Combine("run");
        var train = cli.Distgpt("train", "--max-iters", "300", "--eval-interval", "300", "--eval-iters", "1", "--n-layer", "2", "--n-embd", "32",
            "--n-head", "2", "--block-size", "32", "--batch-size", "8", "--threads", "1", "--out", run);
        Assert.True(train.ExitCode == 0, train.ToString());

        const string prompt = "ROMEO:";
        const int n = 80;
        var sample = cli.Distgpt("sample", "--checkpoint", run, "--prompt", prompt, "--max-new-tokens", n.ToString(), "--temperature", "0.01", "--top-k", "0");
        Assert.True(sample.ExitCode == 0, sample.ToString());
        Assert.Equal(Greedy(run, prompt, n), sample.StdOut.TrimEnd('\n'));
    }

    /// <summary>Argmax decoding, written out independently of <see cref="Generator"/>: the full context (up to block_size)
    /// through a graph of its own length every step.</summary>
    static string Greedy(string run, string prompt, int newTokens)
    {
        var ckpt = Checkpoint.Open(run);
        using var model = new Gpt(ckpt.State.Config);
        ckpt.LoadWeights(model);
        var tokenizer = CharTokenizer.FromCharacters(ckpt.State.Vocabulary);
        var tokens = tokenizer.Encode(prompt).ToList();
        int v = model.Config.VocabSize, block = model.Config.BlockSize;
        for (int k = 0; k < newTokens; k++)
        {
            int len = Math.Min(tokens.Count, block);
            using var g = model.Build(1, len, withGrad: false, withLoss: false);
            for (int i = 0; i < len; i++) g.Tokens[i] = tokens[tokens.Count - len + i];
            g.Step.Training = false;
            g.Forward();
            var logits = g.Logits.DataSpan.Slice((len - 1) * v, v);
            int best = 0;
            for (int j = 1; j < v; j++) if (logits[j] > logits[best]) best = j;
            tokens.Add(best);
        }
        return tokenizer.Decode(tokens);
    }
}
