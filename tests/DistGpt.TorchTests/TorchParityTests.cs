using DistGpt.Tests;
using DistGpt.TorchBackend;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace DistGpt.TorchTests;

/// <summary>The TorchSharp GPT against the same PyTorch fixtures and tolerances as the engine (ParityCheck): logits, loss,
/// every gradient and two AdamW steps. The gradients are read from the model's flat buffer, so this also checks that
/// libtorch's backward accumulated them in place there. DISTGPT_TORCH_DEVICE=cuda runs it on a GPU (bench/gpu-check.sh):
/// then the weights go up and the gradients come back through FlatTensors' staging copies.</summary>
public sealed class TorchParityTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("parity_bias.safetensors")]
    [InlineData("parity_nobias.safetensors")]
    public void MatchesPyTorchForwardBackwardAndTwoAdamWSteps(string fixtureName)
    {
        string deviceName = TestDevice.Name;
        _ = new TorchGradientBackend(deviceName); // libtorch loads (the loader fix is applied to this output), the device exists
        var device = deviceName == "cuda" ? CUDA : CPU;
        ParityCheck.Run(fixtureName, output, (model, b, t) =>
        {
            var flat = new FlatTensors(model.Parameters.Values, model.Parameters.Grads, device);
            var gpt = new TorchGpt(model, flat, device);
            return new ParityCheck.Backend((tokens, targets, checkLogits) =>
            {
                flat.UploadValues();
                flat.Grads.zero_();
                using var scope = NewDisposeScope();
                var (logits, lossSum) = gpt.Forward(tensor(tokens.Select(i => (long)i).ToArray(), [b, t]).to(device),
                    tensor(targets.Select(i => (long)i).ToArray(), [b, t]).to(device), masks: null);
                checkLogits(logits.detach().cpu().contiguous().data<float>().ToArray());
                var mean = lossSum! / (b * t);
                mean.backward();
                flat.DownloadGrads();
                return mean.item<float>();
            }, gpt, flat);
        });
    }
}
