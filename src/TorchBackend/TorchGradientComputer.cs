using DistGpt.Model;
using DistGpt.Model.Data;
using DistGpt.Model.Training;
using static TorchSharp.torch;

namespace DistGpt.TorchBackend;

/// <summary>The <see cref="IGradientComputer"/> on libtorch: the same sequences (<see cref="BatchSampler"/>), the same dropout
/// masks (<see cref="DropoutMasks"/>) and the same result as the engine's <see cref="GradientWorker"/>, the gradient SUM of
/// the slice's token losses, left in the model's flat gradient buffer.</summary>
public sealed class TorchGradientComputer : IGradientComputer
{
    readonly Gpt model;
    readonly TokenSplit trainData;
    readonly ulong seed;
    readonly Device device;
    readonly FlatTensors flat;
    readonly TorchGpt gpt;
    readonly int[] tokens, targets;
    readonly GradientBucket[] wholeBuffer;

    public TorchGradientComputer(Gpt model, TokenSplit trainData, ulong seed, int sequences, Device device)
    {
        (this.model, this.trainData, this.seed, this.device) = (model, trainData, seed, device);
        Sequences = sequences;
        flat = new FlatTensors(model.Parameters.Values, model.Parameters.Grads, device);
        gpt = new TorchGpt(model, flat, device);
        tokens = new int[sequences * model.Config.BlockSize];
        targets = new int[tokens.Length];
        // libtorch's backward gives no per-tensor completion hook here: the whole sum is one bucket, handed on when complete.
        wholeBuffer = [new GradientBucket(0, 0, model.Parameters.Count, CompleteAfterOp: 0)];
    }

    public int Sequences { get; }

    public IReadOnlyList<GradientBucket> UseBuckets(long capFloats) => wholeBuffer;

    public GradientSum Compute(long step, long first, Action<string>? phase = null, Action<GradientBucket>? bucketReady = null,
        WeightsArrival? weights = null)
    {
        BatchSampler.Fill(trainData, seed, DataSplit.Train, step, first, Sequences, model.Config.BlockSize, tokens, targets);
        weights?.WaitFor(model.Parameters.Count); // libtorch runs the forward as one call: it needs every weight first
        return Run(step, first, phase, bucketReady);
    }

    public GradientSum ComputeOnWindows(long step, long first, ReadOnlySpan<int> windows, Action<string>? phase = null,
        Action<GradientBucket>? bucketReady = null)
    {
        int t = model.Config.BlockSize;
        BatchSampler.CheckWindows(windows, Sequences, t, model.Config.VocabSize);
        BatchSampler.FillFromWindows(windows, 0, Sequences, t, tokens, targets);
        return Run(step, first, phase, bucketReady);
    }

    GradientSum Run(long step, long first, Action<string>? phase, Action<GradientBucket>? bucketReady)
    {
        int t = model.Config.BlockSize;
        flat.UploadValues();
        flat.Grads.zero_(); // not zero_grad(), which would drop the views into the flat buffer
        double lossSum;
        using (NewDisposeScope())
        {
            var idx = tensor(tokens.Select(i => (long)i).ToArray(), [Sequences, t]).to(device);
            var y = tensor(targets.Select(i => (long)i).ToArray(), [Sequences, t]).to(device);
            var masks = model.Config.Dropout > 0
                ? new DropoutMasks(model.Config, GradientWorker.DropoutKey(seed, step), first, Sequences, device) : null;
            phase?.Invoke("forward");
            Tensor loss;
            using (TrainingTelemetry.Start("run forward", step))
                loss = gpt.Forward(idx, y, masks).LossSum!;
            phase?.Invoke("backward");
            using (TrainingTelemetry.Start("run backward", step))
            {
                loss.backward();
                flat.DownloadGrads();
            }
            lossSum = loss.item<float>();
        }
        bucketReady?.Invoke(wholeBuffer[0]);
        return new GradientSum(lossSum, (long)Sequences * t);
    }

    public void Dispose()
    {
        gpt.Dispose();
        flat.Dispose();
    }
}
