using System.Reflection;
using DistGpt.Model.Data;

namespace DistGpt.Model.Training;

/// <summary>Makes the <see cref="IGradientComputer"/>s of a process: the engine's, or the TorchSharp backend's
/// (--backend torch), which lives in an assembly only a build with -p:DistGptTorch=true contains.</summary>
public interface IGradientBackend
{
    /// <summary>"engine" or "torch", with the device for the latter ("torch/cpu").</summary>
    string Name { get; }

    IGradientComputer Create(Gpt model, TokenSplit trainData, ulong seed, int sequences, int? replicas = null);
}

public sealed class EngineBackend : IGradientBackend
{
    public static readonly EngineBackend Instance = new();

    public string Name => "engine";

    public IGradientComputer Create(Gpt model, TokenSplit trainData, ulong seed, int sequences, int? replicas = null) =>
        new GradientWorker(model, trainData, seed, sequences, replicas);
}

public static class GradientBackends
{
    public static readonly string[] Names = ["engine", "torch"];
    public static readonly string[] Devices = ["cpu", "cuda"];
    const string TorchAssembly = "DistGpt.TorchBackend", TorchType = "DistGpt.TorchBackend.TorchGradientBackend";

    /// <summary>The backend for --backend and --device; a <see cref="ConfigException"/> names what is not available.</summary>
    public static IGradientBackend Load(string backend, string device)
    {
        if (!Devices.Contains(device)) throw new ConfigException($"--device must be cpu or cuda (got '{device}')");
        switch (backend)
        {
            case "engine":
                if (device != "cpu") throw new ConfigException("--device cuda needs --backend torch (the engine runs on the CPU)");
                return EngineBackend.Instance;
            case "torch":
                Assembly assembly;
                try { assembly = Assembly.Load(TorchAssembly); }
                catch (FileNotFoundException)
                {
                    throw new ConfigException("this build has no torch backend; rebuild with -p:DistGptTorch=true");
                }
                var type = assembly.GetType(TorchType, throwOnError: true)!;
                try { return (IGradientBackend)Activator.CreateInstance(type, device)!; }
                catch (TargetInvocationException e) when (e.InnerException != null)
                {
                    System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(e.InnerException);
                    throw;
                }
            default:
                throw new ConfigException($"--backend must be engine or torch (got '{backend}')");
        }
    }

    /// <summary>dev's --worker-backends: a comma-separated list, one per worker (a shorter list repeats its last entry).</summary>
    public static string[] ParseList(string list, int workers)
    {
        var names = list.Split(',', StringSplitOptions.TrimEntries);
        foreach (var n in names)
            if (!Names.Contains(n)) throw new ConfigException($"--worker-backends: each entry must be engine or torch (got '{n}')");
        if (names.Length > workers) throw new ConfigException($"--worker-backends names {names.Length} backends for {workers} workers");
        return Enumerable.Range(0, workers).Select(i => names[Math.Min(i, names.Length - 1)]).ToArray();
    }
}
