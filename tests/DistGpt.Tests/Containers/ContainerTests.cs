using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;
using Xunit;
using Xunit.Abstractions;

namespace DistGpt.Tests.Containers;

/// <summary>The image as users run it: a coordinator container and worker containers on a docker network, on this
/// machine's own Docker engine (<see cref="DockerEngine"/>), the image built once per run (<see cref="DistGptImage"/>).
/// Skipped, with the reason, where no engine answers.</summary>
[Collection(ProcessHeavy.Name)]
public sealed class ContainerTests(ITestOutputHelper output) : IClassFixture<DistGptImage>
{
    void Log(string line)
    {
        output.WriteLine(line);
        Console.WriteLine($"[containers] {line}");
    }

    static void AssertContiguous(List<JsonElement> metrics, int steps) =>
        Assert.Equal(Enumerable.Range(1, steps), metrics.Select(m => m.GetProperty("step").GetInt32()));

    [DockerFact]
    public void ImageAnswersHelpAndRunsAsANonRootUser()
    {
        var help = DockerEngine.Cli("run", "--rm", DistGptImage.Name, "--help"); // `docker run <image> --help`
        Assert.True(help.ExitCode == 0, help.Output);
        foreach (var command in new[] { "coordinator", "worker", "train", "sample", "status" }) Assert.Contains(command, help.Output);
        var user = DockerEngine.Cli("run", "--rm", "--entrypoint", "id", DistGptImage.Name, "-u");
        Assert.True(user.ExitCode == 0, user.Output);
        Assert.NotEqual("0", user.Output.Trim());
    }

    [DockerFact]
    public async Task TwoWorkerContainersTrainTwentyStepsAndEverySiloAdvertisesItsContainerAddress()
    {
        await using var cluster = await DockerCluster.CreateAsync();
        var coordinator = await cluster.StartCoordinatorAsync("--min-workers 2 --max-iters 20 --eval-interval 20");
        var w1 = await cluster.StartWorkerAsync("w1");
        Assert.True(await DockerCluster.WaitForLogAsync(coordinator, l => l.Contains("worker 'w1' joined")), await DockerCluster.LogsAsync(coordinator));

        // While the coordinator waits for its second worker: the cluster as `distgpt status` sees it from inside the
        // coordinator's container. Each silo must advertise its own container's address on the docker network (what the
        // other silos dial), never a loopback or another network's address.
        var status = await coordinator.ExecAsync(["distgpt", "status", "--coordinator", "http://coordinator:7070", "--json"]);
        Assert.True(status.ExitCode == 0, status.Stdout + status.Stderr);
        var silos = JsonDocument.Parse(status.Stdout).RootElement.GetProperty("silos").EnumerateArray()
            .ToDictionary(s => s.GetProperty("name").GetString()!, s => s.GetProperty("address").GetString()!);
        Log($"status: {string.Join(", ", silos.Select(s => $"{s.Key} {s.Value}"))}");
        Assert.StartsWith($"S{cluster.AddressOf(coordinator)}:7071:", silos["coordinator"]);
        Assert.StartsWith($"S{cluster.AddressOf(w1)}:", silos["w1"]);

        var w2 = await cluster.StartWorkerAsync("w2");
        Assert.Equal(0, await DockerCluster.ExitCodeAsync(coordinator));
        var metrics = await DockerCluster.MetricsAsync(coordinator);
        AssertContiguous(metrics, 20);
        Assert.All(metrics, m => Assert.Equal(2, m.GetProperty("workers").GetInt32()));
        Assert.True(metrics[^1].TryGetProperty("val_loss_full", out _), "the last step has no val_loss_full");
        Assert.Equal(0, await DockerCluster.ExitCodeAsync(w1, TimeSpan.FromSeconds(30)));
        Assert.Equal(0, await DockerCluster.ExitCodeAsync(w2, TimeSpan.FromSeconds(30)));
    }

    [DockerFact]
    public async Task WorkerContainerWithAWrongTokenIsRefused()
    {
        await using var cluster = await DockerCluster.CreateAsync();
        var coordinator = await cluster.StartCoordinatorAsync("--min-workers 1 --max-iters 20");
        var intruder = await cluster.StartWorkerAsync("intruder", token: "not-" + cluster.Token);
        Assert.Equal(2, await DockerCluster.ExitCodeAsync(intruder, TimeSpan.FromSeconds(60)));
        string said = await DockerCluster.LogsAsync(intruder);
        Assert.Contains("authentication failed", said);
        Assert.DoesNotContain("   at ", said); // one line, no stack trace
        Assert.DoesNotContain("worker 'intruder' joined", await DockerCluster.LogsAsync(coordinator));
    }

    [DockerFact]
    public async Task KilledWorkerContainerIsAbsorbedAndItsRestartedContainerRejoins()
    {
        // Long enough that w1 alone is still training when the restarted w2 has started and joined (a step of this
        // model takes a few milliseconds here; measured: w2 back from step 992 of a 5000-step run).
        const int steps = 2500;
        await using var cluster = await DockerCluster.CreateAsync();
        var coordinator = await cluster.StartCoordinatorAsync($"--min-workers 2 --max-iters {steps} --eval-interval {steps}");
        await cluster.StartWorkerAsync("w1");
        var w2 = await cluster.StartWorkerAsync("w2", fault: "stall-compute:8"); // holds step 8 until it is killed
        Assert.True(await DockerCluster.WaitForLogAsync(w2, l => l.Contains("stalled before computing")), await DockerCluster.LogsAsync(w2));
        DockerCluster.Kill(w2);
        Assert.True(await DockerCluster.WaitForLogAsync(coordinator, l => l.Contains("worker 'w2' lost")), await DockerCluster.LogsAsync(coordinator));

        DockerCluster.Restart(w2); // the same container: name, token and command line
        Assert.True(await DockerCluster.WaitForLogAsync(coordinator, l => Regex.Count(l, "worker 'w2' joined") == 2), await DockerCluster.LogsAsync(coordinator));
        Assert.Equal(0, await DockerCluster.ExitCodeAsync(coordinator));
        var metrics = await DockerCluster.MetricsAsync(coordinator);
        AssertContiguous(metrics, steps);
        int alone = metrics.FindIndex(m => m.GetProperty("workers").GetInt32() == 1), back = metrics.FindIndex(alone + 1, m => m.GetProperty("workers").GetInt32() == 2);
        Log($"w2 killed: steps from {alone + 1} on one worker, both again from step {back + 1} of {steps}");
        Assert.True(alone >= 0, "no step ran on one worker after w2 was killed");
        Assert.True(metrics[^1].GetProperty("workers").GetInt32() == 2, "the restarted worker did not rejoin before the last step; lengthen the run");
        Assert.Equal(0, await DockerCluster.ExitCodeAsync(w2, TimeSpan.FromSeconds(30)));
    }

    [DockerFact]
    public async Task CoordinatorContainerKilledAndRestartedWithResumeContinuesWhileWorkersRejoinByThemselves()
    {
        const int steps = 800;
        string run = $"--min-workers 2 --max-iters {steps} --eval-interval {steps} --checkpoint-interval 50";
        await using var cluster = await DockerCluster.CreateAsync();
        var first = await cluster.StartCoordinatorAsync(run);
        var w1 = await cluster.StartWorkerAsync("w1", "--connect-timeout 120");
        var w2 = await cluster.StartWorkerAsync("w2", "--connect-timeout 120");
        Assert.True(await DockerCluster.WaitForLogAsync(first, l => l.Contains("step 200:")), await DockerCluster.LogsAsync(first));
        DockerCluster.Kill(first); // SIGKILL: no final checkpoint, no goodbye to the workers
        int killedAfter = (await DockerCluster.MetricsAsync(first)).Count;
        Assert.True(killedAfter < steps, "the first coordinator finished before it could be killed; lengthen the run");

        var resumed = await cluster.StartCoordinatorAsync(run + " --resume --join-timeout 120"); // same volume, same name on the network
        long exit = await DockerCluster.ExitCodeAsync(resumed);
        string log = await DockerCluster.LogsAsync(resumed);
        Assert.True(exit == 0, $"the resumed coordinator exited {exit}:\n{log}\n--- w1:\n{await DockerCluster.LogsAsync(w1)}\n--- w2:\n{await DockerCluster.LogsAsync(w2)}");
        var from = Regex.Match(log, @"resuming from step (\d+)");
        Assert.True(from.Success, log);
        int step = int.Parse(from.Groups[1].Value);
        Assert.True(step >= 200 && step % 50 == 0 && step <= killedAfter, $"resumed from step {step}, killed after {killedAfter}");
        AssertContiguous(await DockerCluster.MetricsAsync(resumed), steps);
        foreach (var w in new[] { w1, w2 })
        {
            Assert.Equal(0, await DockerCluster.ExitCodeAsync(w, TimeSpan.FromSeconds(30)));
            Assert.Contains("rejoined", await DockerCluster.LogsAsync(w));
        }
    }

    [DockerFact]
    public async Task StoppedContainersExitWithinTwoSecondsAndTheCoordinatorCheckpointsItsLastStep()
    {
        await using var cluster = await DockerCluster.CreateAsync();
        var coordinator = await cluster.StartCoordinatorAsync("--min-workers 2 --max-iters 1000000 --eval-interval 1000000 --checkpoint-interval 1000000");
        var w1 = await cluster.StartWorkerAsync("w1");
        var w2 = await cluster.StartWorkerAsync("w2");
        Assert.True(await DockerCluster.WaitForLogAsync(coordinator, l => l.Contains("step 50:")), await DockerCluster.LogsAsync(coordinator));

        // `docker stop`: SIGTERM to distgpt, PID 1 in its container (SIGKILL only after docker's 10 s grace).
        var clock = Stopwatch.StartNew();
        await w1.StopAsync();
        var workerStop = clock.Elapsed;
        Log($"worker container stopped in {workerStop.TotalSeconds:F2} s; its own account: {(await DockerCluster.LogsAsync(w1)).Split('\n').LastOrDefault(l => l.Contains("stopped ")) ?? "none"}");
        Assert.True(await DockerCluster.WaitForLogAsync(coordinator, l => Regex.IsMatch(l, "worker 'w1' .*(left|lost)")), await DockerCluster.LogsAsync(coordinator));
        Assert.Equal(130, await DockerCluster.ExitCodeAsync(w1, TimeSpan.FromSeconds(5)));

        clock.Restart();
        await coordinator.StopAsync();
        var coordinatorStop = clock.Elapsed;
        Log($"coordinator container stopped in {coordinatorStop.TotalSeconds:F2} s");
        string log = await DockerCluster.LogsAsync(coordinator);
        var stopped = Regex.Match(log, @"stopped at step (\d+): checkpoint saved");
        Assert.True(stopped.Success, log);
        Assert.Equal(130, await DockerCluster.ExitCodeAsync(coordinator, TimeSpan.FromSeconds(5)));
        // The worker still in the run is told the run is over, and ends as after a finished run.
        Assert.Equal(0, await DockerCluster.ExitCodeAsync(w2, TimeSpan.FromSeconds(30)));
        using var checkpoint = JsonDocument.Parse(await DockerCluster.ReadOutAsync(coordinator, "ckpt/checkpoint.json"));
        Assert.Equal(long.Parse(stopped.Groups[1].Value), checkpoint.RootElement.GetProperty("step").GetInt64());
        Assert.True(workerStop < TimeSpan.FromSeconds(2), $"the worker took {workerStop.TotalSeconds:F2} s to stop");
        Assert.True(coordinatorStop < TimeSpan.FromSeconds(2), $"the coordinator took {coordinatorStop.TotalSeconds:F2} s to stop");
    }

    [DockerFact]
    public async Task KubernetesCoordinatorWrapperPassesSigtermOnWithinTwoSeconds()
    {
        // deploy/k8s/coordinator.yaml runs distgpt under `/bin/sh -c SCRIPT`, so the shell is PID 1 and gets the pod's
        // SIGTERM: it must pass it on (without that, 10 s of `docker stop` and a SIGKILL, exit 137).
        string script = KubernetesCoordinatorScript();
        await using var cluster = await DockerCluster.CreateAsync();
        var coordinator = await cluster.StartShellAsync("k8s-coordinator", script, @"waiting for \d+ worker");
        var clock = Stopwatch.StartNew();
        await coordinator.StopAsync();
        Log($"the Kubernetes coordinator wrapper stopped in {clock.Elapsed.TotalSeconds:F2} s");
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(2), $"took {clock.Elapsed.TotalSeconds:F2} s to stop");
        Assert.Equal(130, await DockerCluster.ExitCodeAsync(coordinator, TimeSpan.FromSeconds(5)));
        Assert.Contains("stopped before a step was trained", await DockerCluster.LogsAsync(coordinator));
    }

    static string KubernetesCoordinatorScript()
    {
        var stream = new YamlDotNet.RepresentationModel.YamlStream();
        stream.Load(new StringReader(File.ReadAllText(Path.Combine(TestData.RepoRoot, "deploy", "k8s", "coordinator.yaml"))));
        foreach (var doc in stream.Documents)
        {
            if (doc.RootNode is not YamlDotNet.RepresentationModel.YamlMappingNode root || root["kind"].ToString() != "Deployment") continue;
            var pod = (YamlDotNet.RepresentationModel.YamlMappingNode)root["spec"]["template"]["spec"];
            var container = (YamlDotNet.RepresentationModel.YamlMappingNode)((YamlDotNet.RepresentationModel.YamlSequenceNode)pod["containers"]).Children[0];
            return ((YamlDotNet.RepresentationModel.YamlSequenceNode)container["args"]).Children[0].ToString();
        }
        throw new InvalidOperationException("deploy/k8s/coordinator.yaml has no Deployment");
    }

    [ComposeFact]
    public void ComposeStackWithTwoScaledWorkersTrainsToTheEnd()
    {
        // deploy/docker-compose.yml as it is (network, token, corpus mount, volume, --scale), with an override that only
        // makes the run short: a tiny model, 30 steps, and the image the fixture built from the same Dockerfile (compose's
        // own build would not reuse that build's cache: ~25-50 s more).
        using var tmp = new TempDirectory("compose");
        string project = "distgpt-test-" + Guid.NewGuid().ToString("n")[..10];
        string model = string.Join(", ", CliRunner.Split(DockerCluster.Model).Select(a => $"\"{a}\""));
        string overrideFile = Path.Combine(tmp.Path, "short-run.yml");
        File.WriteAllText(overrideFile, $$"""
            services:
              coordinator:
                image: {{DistGptImage.Name}}
                command: ["coordinator", "--listen", "http://0.0.0.0:7070", "--min-workers", "2", "--out", "/var/lib/distgpt/out", {{model}}, "--max-iters", "30", "--eval-interval", "30"]
              worker:
                image: {{DistGptImage.Name}}
            """);
        string corpus = TestData.CorpusPath();
        var env = new Dictionary<string, string>
        {
            ["DISTGPT_CLUSTER_TOKEN"] = "compose-" + Guid.NewGuid().ToString("n"),
            ["DISTGPT_DATA_DIR"] = Path.GetDirectoryName(corpus)!, ["DISTGPT_DATA_FILE"] = Path.GetFileName(corpus),
            ["OTEL_EXPORTER_OTLP_ENDPOINT"] = "",
        };
        string[] files = ["-p", project, "-f", Path.Combine(TestData.RepoRoot, "deploy", "docker-compose.yml"), "-f", overrideFile];
        (int ExitCode, string Output) Compose(params string[] args) => DockerEngine.Run(ComposeFactAttribute.Program[0], [.. ComposeFactAttribute.Program[1..], .. files, .. args], TimeSpan.FromMinutes(4), env);
        try
        {
            var clock = Stopwatch.StartNew();
            var up = Compose("up", "-d", "--no-build", "--scale", "worker=2");
            Assert.True(up.ExitCode == 0, up.Output);
            Log($"compose up (3 containers) in {clock.Elapsed.TotalSeconds:F1} s");
            string coordinator = Compose("ps", "-q", "coordinator").Output.Trim();
            string[] workers = Compose("ps", "-q", "worker").Output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Equal(2, workers.Length);
            var waited = DockerEngine.Run("docker", ["wait", coordinator], DockerCluster.Timeout);
            string logs = DockerEngine.Cli("logs", coordinator).Output;
            Assert.True(waited.Output.Trim() == "0", $"coordinator exit: {waited.Output}\n{logs}");
            Assert.Contains("done: step 30", logs);
            var copied = DockerEngine.Cli("cp", $"{coordinator}:{DockerCluster.Out}/metrics.jsonl", tmp.Path);
            Assert.True(copied.ExitCode == 0, copied.Output);
            var metrics = DistributedTests.Metrics(tmp.Path);
            AssertContiguous(metrics, 30);
            Assert.Equal(2, metrics[^1].GetProperty("workers").GetInt32());
            foreach (var worker in workers)
                Assert.True(DockerEngine.Run("docker", ["wait", worker], TimeSpan.FromSeconds(30)).Output.Trim() == "0", DockerEngine.Cli("logs", worker).Output);
            Log($"compose stack trained 30 steps to the end in {clock.Elapsed.TotalSeconds:F1} s");
        }
        finally
        {
            Compose("down", "-v", "--remove-orphans");
        }
    }
}

/// <summary>A <see cref="DockerFactAttribute"/> that also needs a compose implementation: Debian's docker-compose (v1), else
/// the `docker compose` plugin. Skipped, with the reason, where neither runs.</summary>
public sealed class ComposeFactAttribute : FactAttribute
{
    static readonly Lazy<string[]?> program = new(() =>
    {
        foreach (string[] candidate in new[] { new[] { "docker-compose" }, ["docker", "compose"] })
        {
            try
            {
                if (DockerEngine.Run(candidate[0], [.. candidate[1..], "version"], TimeSpan.FromSeconds(30)).ExitCode == 0) return candidate;
            }
            catch (System.ComponentModel.Win32Exception) { /* not installed */ }
        }
        return null;
    });

    /// <summary>The compose command line's first words.</summary>
    public static string[] Program => program.Value!;

    public ComposeFactAttribute()
    {
        if (DockerEngine.Unavailable is { } why) Skip = why;
        else if (program.Value == null) Skip = "no compose implementation: neither docker-compose nor `docker compose` runs (bash .ci/docker-engine.sh installs Debian's docker-compose)";
    }
}
