using DistGpt.Model;
using DistGpt.Model.Data;
using DistGpt.Model.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace DistGpt.TorchBackend;

/// <summary>--backend torch: loaded by name (<see cref="GradientBackends.Load"/>) from a build with -p:DistGptTorch=true.
/// Checks at once that libtorch loads and that the device exists, so a worker fails before it joins a run.</summary>
public sealed class TorchGradientBackend : IGradientBackend
{
    readonly Device device;

    public TorchGradientBackend(string device)
    {
        try { InitializeDeviceType(DeviceType.CPU); }
        catch (Exception e) when (e is NotSupportedException or DllNotFoundException or TypeInitializationException)
        {
            throw new ConfigException("libtorch does not load (on Debian 12, libLibTorchSharp.so needs src/TorchBackend/weak-glibcxx.py " +
                $"applied to the build output; `ldd` on it names what is missing): {e.Message}");
        }
        if (device == "cuda" && !cuda.is_available())
            throw new ConfigException("--device cuda: CUDA is not available here (torch.cuda.is_available() is false: no GPU, " +
                "or a build with libtorch-cpu; see README, GPU nodes)");
        this.device = device == "cuda" ? CUDA : CPU;
        Name = $"torch/{device}";
    }

    public string Name { get; }

    public IGradientComputer Create(Gpt model, TokenSplit trainData, ulong seed, int sequences, int? replicas = null)
    {
        // libtorch parallelises inside each op; the engine's replicas (and their summation order) have no equivalent here.
        set_num_threads(Compute.Threads);
        return new TorchGradientComputer(model, trainData, seed, sequences, device);
    }
}
