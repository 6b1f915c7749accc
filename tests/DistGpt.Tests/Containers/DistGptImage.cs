using System.Diagnostics;
using DotNet.Testcontainers.Builders;
using Xunit;

namespace DistGpt.Tests.Containers;

/// <summary>The image the container tests run, built once per test run from deploy/Dockerfile with Testcontainers (the
/// engine's own builder, which needs no registry when the bases exist locally). The bases: the official .NET images
/// where the engine has them, else the local ones deploy/local-bases.sh makes from this machine's .NET install (made
/// here when missing).</summary>
public sealed class DistGptImage : IAsyncLifetime
{
    public const string Name = "distgpt:test";
    const string BuildLabel = "org.distgpt.test-build";
    const string LocalSdk = "distgpt-local/sdk:10.0", LocalRuntime = "distgpt-local/aspnet:10.0";
    const string OfficialSdk = "mcr.microsoft.com/dotnet/sdk:10.0", OfficialRuntime = "mcr.microsoft.com/dotnet/aspnet:10.0";

    public async Task InitializeAsync()
    {
        if (DockerEngine.Unavailable != null) return; // every test skips, saying why
        var (sdk, runtime) = Bases();
        var clock = Stopwatch.StartNew();
        // Testcontainers reports no failed build: an older distgpt:test would silently stand in for this tree's. Each
        // build is labelled, and the image must carry this build's label.
        string build = Guid.NewGuid().ToString("N");
        var image = new ImageFromDockerfileBuilder()
            .WithDockerfileDirectory(TestData.RepoRoot)
            .WithDockerfile("deploy/Dockerfile")
            .WithBuildArgument("SDK_IMAGE", sdk)
            .WithBuildArgument("RUNTIME_IMAGE", runtime)
            .WithName(Name)
            .WithLabel(BuildLabel, build)
            .WithDeleteIfExists(false)
            .WithCleanUp(false)
            .WithLogger(Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance)
            .Build();
        await image.CreateAsync();
        var label = DockerEngine.Cli("image", "inspect", Name, "--format", $"{{{{ index .Config.Labels \"{BuildLabel}\" }}}}");
        if (label.Output.Trim() != build)
        {
            var cli = DockerEngine.Cli("build", "-f", "deploy/Dockerfile", "--build-arg", $"SDK_IMAGE={sdk}", "--build-arg", $"RUNTIME_IMAGE={runtime}", TestData.RepoRoot);
            throw new InvalidOperationException($"deploy/Dockerfile did not build ({Name} is not this run's image); `docker build` says:\n{string.Join('\n', cli.Output.Split('\n').TakeLast(15))}");
        }
        Console.WriteLine($"[containers] image {Name} built in {clock.Elapsed.TotalSeconds:F1} s on {sdk} and {runtime} (engine API {DockerEngine.ApiVersion})");
    }

    public Task DisposeAsync() => Task.CompletedTask;

    static (string Sdk, string Runtime) Bases()
    {
        if (Exists(OfficialSdk) && Exists(OfficialRuntime)) return (OfficialSdk, OfficialRuntime);
        if (!Exists(LocalSdk) || !Exists(LocalRuntime))
        {
            var made = DockerEngine.Run("bash", [Path.Combine(TestData.RepoRoot, "deploy", "local-bases.sh")], TimeSpan.FromMinutes(5));
            if (made.ExitCode != 0) throw new InvalidOperationException($"no base images for deploy/Dockerfile, and deploy/local-bases.sh failed: {made.Output}");
        }
        return (LocalSdk, LocalRuntime);
    }

    static bool Exists(string image) => DockerEngine.Cli("image", "inspect", image).ExitCode == 0;
}
