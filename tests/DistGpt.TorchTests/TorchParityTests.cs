using DistGpt.Tests;
using DistGpt.TorchBackend;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace DistGpt.TorchTests;

/// <summary>The TorchSharp GPT against the same PyTorch fixtures and tolerances as the engine (ParityCheck): logits, loss,
/// every gradient and two AdamW steps. The gradients are read from the model's flat buffer, so this also checks that
/// libtorch's backward accumulated them in place there.</summary>
public sealed class TorchParityTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("parity_bias.safetensors")]
    [InlineData("parity_nobias.safetensors")]
    public void MatchesPyTorchForwardBackwardAndTwoAdamWSteps(string fixtureName)
    {
        _ = new TorchGradientBackend("cpu"); // libtorch loads (the loader fix is applied to this output)
        ParityCheck.Run(fixtureName, output, (model, b, t) =>
        {
            var flat = new FlatTensors(model.Parameters.Values, model.Parameters.Grads, CPU);
            var gpt = new TorchGpt(model, flat, CPU);
            return new ParityCheck.Backend((tokens, targets, checkLogits) =>
            {
                flat.Grads.zero_();
                using var scope = NewDisposeScope();
                var (logits, lossSum) = gpt.Forward(tensor(tokens.Select(i => (long)i).ToArray(), [b, t]),
                    tensor(targets.Select(i => (long)i).ToArray(), [b, t]), masks: null);
                checkLogits(logits.detach().contiguous().data<float>().ToArray());
                var mean = lossSum! / (b * t);
                mean.backward();
                return mean.item<float>();
            }, new Both(gpt, flat));
        });
    }

    sealed class Both(IDisposable first, IDisposable second) : IDisposable
    {
        public void Dispose()
        {
            first.Dispose();
            second.Dispose();
        }
    }
}
