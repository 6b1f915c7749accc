using DistGpt.Model;
using DistGpt.Model.IO;
using DistGpt.Model.Training;
using Xunit;
using Xunit.Abstractions;

namespace DistGpt.Tests;

/// <summary>Logits, loss, every gradient and two AdamW steps against PyTorch 1.13 (fixtures made by
/// tests/fixtures/make_parity_fixture.py). Tolerance: per tensor, max |ours - torch| ≤ 2e-5 · max|torch| + 1e-7 —
/// both sides are float32 with different summation orders (packed GEMM vs MKL/OpenBLAS), which alone moves values by
/// a few ulp of the tensor's scale; a wrong formula misses by orders of magnitude more.</summary>
public sealed class ParityTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("parity_bias.safetensors")]
    [InlineData("parity_nobias.safetensors")]
    public void MatchesPyTorchForwardBackwardAndTwoAdamWSteps(string fixtureName) =>
        ParityCheck.Run(fixtureName, output, (model, b, t) =>
        {
            var graph = model.Build(b, t, withGrad: true);
            var logitsGraph = model.Build(b, t, withGrad: false, withLoss: false); // the loss never holds all the logits
            return new ParityCheck.Backend((tokens, targets, checkLogits) =>
            {
                tokens.CopyTo(graph.Tokens, 0);
                targets.CopyTo(graph.Targets, 0);
                tokens.CopyTo(logitsGraph.Tokens, 0);
                logitsGraph.Forward();
                checkLogits(logitsGraph.Logits.DataSpan);
                graph.Step.Training = true;
                model.Parameters.ZeroGrads();
                float loss = graph.Forward(lossGradientScale: 1f / (b * t));
                graph.Backward(1f / (b * t));
                return loss;
            }, graph, logitsGraph);
        });
}
