using System.Diagnostics;
using System.Text;
using System.Text.Json;
using DotNet.Testcontainers.Builders;
using DotNet.Testcontainers.Configurations;
using DotNet.Testcontainers.Containers;
using DotNet.Testcontainers.Images;
using DotNet.Testcontainers.Networks;
using DotNet.Testcontainers.Volumes;
using Microsoft.Extensions.Logging.Abstractions;

namespace DistGpt.Tests.Containers;

/// <summary>One test's cluster of distgpt containers: its own docker network (the coordinator is `coordinator` on it), a
/// named volume for the coordinator's --out, the corpus bind-mounted read-only into the coordinator only (workers get
/// each step's windows from it), the cluster token in every container's environment. Everything is removed at the end.</summary>
public sealed class DockerCluster : IAsyncDisposable
{
    public const string Model = "--n-layer 2 --n-head 2 --n-embd 32 --block-size 32 --batch-size 8 --eval-iters 1 --threads 1";
    public const string Out = "/var/lib/distgpt/out";
    public static readonly TimeSpan Timeout = TimeSpan.FromMinutes(2);

    readonly string id = Guid.NewGuid().ToString("n")[..10];
    public readonly string Token = "ct-" + Guid.NewGuid().ToString("n");
    readonly List<IContainer> containers = new();
    INetwork network = null!;
    IVolume volume = null!;
    int coordinators;

    public static async Task<DockerCluster> CreateAsync()
    {
        var c = new DockerCluster();
        c.network = new NetworkBuilder().WithName($"distgpt-test-{c.id}").WithLogger(NullLogger.Instance).Build();
        await c.network.CreateAsync();
        c.volume = new VolumeBuilder().WithName($"distgpt-test-out-{c.id}").WithLogger(NullLogger.Instance).Build();
        await c.volume.CreateAsync();
        return c;
    }

    /// <summary>A coordinator listening on the network as `coordinator`, started and waiting for its workers.</summary>
    public async Task<IContainer> StartCoordinatorAsync(string flags)
    {
        var container = Distgpt($"coordinator-{++coordinators}", new Dictionary<string, string>(),
                $"coordinator --listen http://0.0.0.0:7070 --data /data/corpus.txt --out {Out} {Model} {flags}")
            .WithNetworkAliases("coordinator")
            .WithBindMount(TestData.CorpusPath(), "/data/corpus.txt", AccessMode.ReadOnly)
            .WithVolumeMount(volume, Out)
            .WithWaitStrategy(Wait.ForUnixContainer().UntilMessageIsLogged(@"waiting for \d+ worker"))
            .Build();
        containers.Add(container);
        await container.StartAsync().WaitAsync(Timeout);
        return container;
    }

    /// <summary>A worker named <paramref name="name"/> joining http://coordinator:7070 (token from the environment).</summary>
    public async Task<IContainer> StartWorkerAsync(string name, string flags = "", string? token = null, string? fault = null)
    {
        var env = new Dictionary<string, string>();
        if (token != null) env["DISTGPT_CLUSTER_TOKEN"] = token;
        if (fault != null) env["DISTGPT_TEST_FAULT"] = fault;
        var container = Distgpt(name, env, $"worker --coordinator http://coordinator:7070 --name {name} --threads 1 {flags}").Build();
        containers.Add(container);
        await container.StartAsync().WaitAsync(Timeout);
        return container;
    }

    /// <summary>The image run as `/bin/sh -c SCRIPT` (a Kubernetes manifest's wrapper), the corpus at
    /// data/tinyshakespeare.txt in its working directory, started once <paramref name="logged"/> appears.</summary>
    public async Task<IContainer> StartShellAsync(string name, string script, string logged)
    {
        var container = Distgpt(name, new Dictionary<string, string>(), "")
            .WithEntrypoint("/bin/sh", "-c")
            .WithCommand(script)
            .WithBindMount(TestData.CorpusPath(), "/var/lib/distgpt/data/tinyshakespeare.txt", AccessMode.ReadOnly)
            .WithWaitStrategy(Wait.ForUnixContainer().UntilMessageIsLogged(logged))
            .Build();
        containers.Add(container);
        await container.StartAsync().WaitAsync(Timeout);
        return container;
    }

    ContainerBuilder Distgpt(string name, Dictionary<string, string> env, string commandLine) =>
        new ContainerBuilder()
            .WithImage(DistGptImage.Name)
            .WithImagePullPolicy(PullPolicy.Never)
            .WithName($"distgpt-test-{id}-{name}")
            .WithNetwork(network)
            .WithEnvironment("DISTGPT_CLUSTER_TOKEN", Token)
            .WithEnvironment(env)
            .WithCommand(CliRunner.Split(commandLine))
            .WithCleanUp(false)
            .WithLogger(NullLogger.Instance); // Testcontainers' own log is ~20 lines per container; the tests say what matters

    /// <summary>stdout and stderr so far, without timestamps.</summary>
    public static async Task<string> LogsAsync(IContainer container)
    {
        var (stdout, stderr) = await container.GetLogsAsync(timestampsEnabled: false);
        return stdout + stderr;
    }

    /// <summary>Polls the container's logs until <paramref name="seen"/> holds; false after the timeout.</summary>
    public static async Task<bool> WaitForLogAsync(IContainer container, Func<string, bool> seen, TimeSpan? timeout = null)
    {
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < (timeout ?? Timeout))
        {
            if (seen(await LogsAsync(container))) return true;
            await Task.Delay(200);
        }
        return false;
    }

    /// <summary>The exit code once the container has exited; throws after the timeout.</summary>
    public static async Task<long> ExitCodeAsync(IContainer container, TimeSpan? timeout = null)
    {
        using var cancel = new CancellationTokenSource(timeout ?? Timeout);
        try { return await container.GetExitCodeAsync(cancel.Token); }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"{container.Name} still running after {(timeout ?? Timeout).TotalSeconds:F0} s:\n{await LogsAsync(container)}");
        }
    }

    /// <summary>SIGKILL (Testcontainers has no call for it): no checkpoint, no goodbye, as a crashed host.</summary>
    public static void Kill(IContainer container)
    {
        var (code, output) = DockerEngine.Cli("kill", container.Id);
        if (code != 0) throw new InvalidOperationException($"docker kill {container.Name}: {output}");
    }

    /// <summary>`docker start` of a stopped container: the same name, environment and command line.</summary>
    public static void Restart(IContainer container)
    {
        var (code, output) = DockerEngine.Cli("start", container.Id);
        if (code != 0) throw new InvalidOperationException($"docker start {container.Name}: {output}");
    }

    /// <summary>The container's address on this cluster's network.</summary>
    public string AddressOf(IContainer container)
    {
        var (code, output) = DockerEngine.Cli("inspect", "-f", $"{{{{(index .NetworkSettings.Networks \"{network.Name}\").IPAddress}}}}", container.Id);
        if (code != 0) throw new InvalidOperationException($"docker inspect {container.Name}: {output}");
        return output.Trim();
    }

    /// <summary>A file from the coordinator's volume, read through a container that mounts it (running or exited).</summary>
    public static async Task<string> ReadOutAsync(IContainer coordinator, string file) =>
        Encoding.UTF8.GetString(await coordinator.ReadFileAsync($"{Out}/{file}"));

    public static async Task<List<JsonElement>> MetricsAsync(IContainer coordinator) =>
        (await ReadOutAsync(coordinator, "metrics.jsonl")).Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => JsonDocument.Parse(l).RootElement).ToList();

    public async ValueTask DisposeAsync()
    {
        foreach (var c in containers)
        {
            try { await c.DisposeAsync(); } catch { /* already gone */ }
            DockerEngine.Cli("rm", "-f", "-v", c.Id);
        }
        try { await volume.DeleteAsync(); } catch { DockerEngine.Cli("volume", "rm", "-f", volume.Name); }
        try { await network.DeleteAsync(); } catch { DockerEngine.Cli("network", "rm", network.Name); }
    }
}
