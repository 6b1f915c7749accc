using System.CommandLine;
using DistGpt.Model.Training;

namespace DistGpt.Coordinator.Cli;

/// <summary>--backend and --device of the commands that compute gradients (train, worker).</summary>
public sealed class BackendOptions
{
    public readonly Option<string> Backend = new("--backend")
    {
        Description = "what computes the gradients: engine (DistGpt's CPU engine) or torch (TorchSharp; a build with -p:DistGptTorch=true)",
        DefaultValueFactory = _ => "engine",
    };
    public readonly Option<string> Device = new("--device")
    {
        Description = "where --backend torch computes: cpu or cuda", DefaultValueFactory = _ => "cpu",
    };

    public void AddTo(Command command)
    {
        command.Options.Add(Backend);
        command.Options.Add(Device);
    }

    public IGradientBackend Load(ParseResult r) => GradientBackends.Load(r.GetValue(Backend)!, r.GetValue(Device)!);
}
