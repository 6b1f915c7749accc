using System.Text.RegularExpressions;
using Xunit;
using YamlDotNet.RepresentationModel;

namespace DistGpt.Tests;

/// <summary>The deploy/ artifacts (Dockerfile, docker-compose.yml, Kubernetes manifests), parsed on any machine (the
/// image and the compose stack also run for real in Containers/ContainerTests where a Docker engine answers): every
/// `distgpt` subcommand and --flag they use must be in that subcommand's real `--help`, every environment variable
/// they set must be one the program reads, and the pieces must agree with each other (service names, ports, the
/// Secret's key, the image's entrypoint).</summary>
public sealed class DeployArtifactsTests
{
    /// <summary>deploy/ in the repository, or DISTGPT_TEST_DEPLOY_DIR (to try the checks on a modified copy).</summary>
    static string Deploy(params string[] parts) =>
        Path.Combine([Environment.GetEnvironmentVariable("DISTGPT_TEST_DEPLOY_DIR") is { Length: > 0 } dir ? dir : Path.Combine(TestData.RepoRoot, "deploy"), .. parts]);

    /// <summary>One `distgpt SUB --flag …` found in an artifact.</summary>
    sealed record Invocation(string Where, string Subcommand, IReadOnlyList<string> Tokens)
    {
        public IEnumerable<string> Flags => Tokens.Where(t => t.StartsWith("--")).Select(t => t.Split('=')[0]);

        /// <summary>The value after a flag (`--flag value` or `--flag=value`), or null.</summary>
        public string? Value(string flag)
        {
            for (int i = 0; i < Tokens.Count; i++)
            {
                if (Tokens[i].StartsWith(flag + "=")) return Tokens[i][(flag.Length + 1)..];
                if (Tokens[i] == flag && i + 1 < Tokens.Count) return Tokens[i + 1];
            }
            return null;
        }
    }

    /// <summary>One container (Kubernetes) or service (compose) that runs the distgpt image.</summary>
    sealed record Container(string Where, string Image, List<Invocation> Invocations, Dictionary<string, YamlNode?> Env, YamlMappingNode Node);

    static readonly string[] Subcommands = ["train", "dev", "coordinator", "worker", "sample", "bench"];

    /// <summary>Standard OpenTelemetry SDK variables (the exporter and resource settings the .NET SDK reads).</summary>
    static readonly HashSet<string> OtelNames =
    [
        "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_SDK_DISABLED",
        "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_CERTIFICATE",
        "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_METRIC_EXPORT_INTERVAL", "OTEL_METRIC_EXPORT_TIMEOUT",
        "OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "OTEL_BSP_EXPORT_TIMEOUT",
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_ATTRIBUTE_COUNT_LIMIT",
    ];

    /// <summary>DISTGPT_* variables the program reads: the string literals in src/ (never the test-only fault hook).</summary>
    static readonly Lazy<HashSet<string>> distgptNames = new(() =>
        Directory.EnumerateFiles(Path.Combine(TestData.RepoRoot, "src"), "*.cs", SearchOption.AllDirectories)
            .SelectMany(f => Regex.Matches(File.ReadAllText(f), "\"(DISTGPT_[A-Z0-9_]+)\"").Select(m => m.Groups[1].Value))
            .Where(n => !n.Contains("TEST")).ToHashSet());

    static readonly Dictionary<string, string> helpCache = new();

    static T Fail<T>(string message)
    {
        Assert.Fail(message);
        return default!;
    }

    /// <summary>`distgpt SUB --help` (or `distgpt --help` for "") from the real CLI.</summary>
    static string Help(string subcommand)
    {
        lock (helpCache)
        {
            if (helpCache.TryGetValue(subcommand, out var cached)) return cached;
            string[] args = subcommand.Length == 0 ? ["--help"] : [subcommand, "--help"];
            var r = CliRunner.Run(args, timeout: TimeSpan.FromSeconds(60));
            Assert.True(r.ExitCode == 0, $"distgpt {string.Join(' ', args)}: {r}");
            return helpCache[subcommand] = r.StdOut;
        }
    }

    static void AssertCliAccepts(Invocation inv)
    {
        Assert.True(Subcommands.Contains(inv.Subcommand), $"{inv.Where}: `distgpt {inv.Subcommand}` is not a distgpt command ({string.Join(", ", Subcommands)})");
        Assert.Matches($@"(?m)^\s+{inv.Subcommand}\b", Help("")); // the root help lists it
        string help = Help(inv.Subcommand);
        foreach (var flag in inv.Flags)
            Assert.True(Regex.IsMatch(help, $@"(?<![\w-]){Regex.Escape(flag)}(?![\w-])"),
                $"{inv.Where}: `distgpt {inv.Subcommand}` has no flag {flag} (not in `distgpt {inv.Subcommand} --help`)");
    }

    static void AssertEnvNamesAreRead(Container c, IEnumerable<string> extra)
    {
        var allowed = distgptNames.Value.Concat(OtelNames).Concat(extra).ToHashSet();
        foreach (var name in c.Env.Keys)
            Assert.True(allowed.Contains(name) || name.StartsWith("DOTNET_"),
                $"{c.Where}: environment variable {name} is not read by distgpt (DISTGPT names in src: {string.Join(", ", distgptNames.Value)}; or a standard OTEL_* name)");
    }

    // ---- command lines ----

    static bool IsDistgpt(string token)
    {
        string name = token.Trim('"', '\'').Split('/').Last();
        return name is "distgpt" or "distgpt.dll";
    }

    /// <summary>Splits a shell script into simple commands (lines, `;`, `&&`, `||`, `|`; backslash-newline joins lines)
    /// and those into words (quotes removed).</summary>
    static IEnumerable<List<string>> ShellCommands(string script)
    {
        foreach (var line in script.Replace("\\\n", " ").Split('\n'))
            foreach (var part in Regex.Split(line, @"\s*(?:;|&&|\|\||\||&)\s*"))
            {
                var words = Regex.Matches(part, "\"([^\"]*)\"|'([^']*)'|(\\S+)")
                    .Select(m => m.Groups[1].Success ? m.Groups[1].Value : m.Groups[2].Success ? m.Groups[2].Value : m.Groups[3].Value)
                    .ToList();
                if (words.Count > 0 && !words[0].StartsWith('#')) yield return words;
            }
    }

    /// <summary>The distgpt invocations of a container: command (entrypoint override) + args. With no command the
    /// image's ENTRYPOINT (distgpt, checked against the Dockerfile) gets the args; `sh -c SCRIPT` is read as a script.</summary>
    static List<Invocation> Invocations(string where, List<string>? command, List<string>? args)
    {
        var all = (command ?? []).Concat(args ?? []).ToList();
        var found = new List<Invocation>();
        void From(List<string> words, string at)
        {
            int i = words.FindIndex(IsDistgpt);
            if (i >= 0 && i + 1 < words.Count) found.Add(new Invocation(at, words[i + 1], words.Skip(i + 2).ToList()));
        }
        if (all.Count >= 2 && all[0].Split('/').Last() is "sh" or "bash" && all[1] == "-c")
        {
            string script = string.Join("\n", all.Skip(2));
            foreach (var words in ShellCommands(script))
            {
                // Only where distgpt is the command word (not in `echo "… distgpt …"`): after exec/env/VAR=value, or `dotnet distgpt.dll`.
                int k = 0;
                while (k < words.Count && (words[k] is "exec" or "env" or "time" or "nohup" or "dotnet" || Regex.IsMatch(words[k], "^[A-Za-z_][A-Za-z0-9_]*="))) k++;
                if (k < words.Count && IsDistgpt(words[k])) From(words.Skip(k).ToList(), where + " (shell script)");
            }
            // Flags kept in shell variables (resume="--resume" … $resume) belong to the script's one distgpt command.
            if (found.Count == 1)
                found[0] = found[0] with
                {
                    Tokens = [.. found[0].Tokens, .. Regex.Matches(script, @"(?<![\w-])--[a-z][a-z0-9-]*").Select(m => m.Value).Except(found[0].Tokens)],
                };
        }
        else if (all.Any(IsDistgpt)) From(all, where);
        else if (command == null && args is { Count: > 0 }) found.Add(new Invocation(where + " (image entrypoint)", args[0], args.Skip(1).ToList()));
        return found;
    }

    static List<string>? Strings(YamlNode? node) => node switch
    {
        YamlSequenceNode seq => seq.Children.Select(c => ((YamlScalarNode)c).Value ?? "").ToList(),
        YamlScalarNode s when s.Value != null => CliRunner.Split(s.Value).ToList(),
        _ => null,
    };

    static YamlNode? Get(YamlNode? node, params string[] path)
    {
        foreach (var key in path)
        {
            if (node is not YamlMappingNode map || !map.Children.TryGetValue(new YamlScalarNode(key), out node)) return null;
        }
        return node;
    }

    static string? Scalar(YamlNode? node, params string[] path) => (Get(node, path) as YamlScalarNode)?.Value;

    static List<YamlMappingNode> Load(string path)
    {
        Assert.True(File.Exists(path), $"{path} is missing");
        var stream = new YamlStream();
        using (var reader = new StreamReader(path)) stream.Load(reader);
        return stream.Documents.Select(d => d.RootNode).OfType<YamlMappingNode>().ToList();
    }

    // ---- Kubernetes ----

    sealed record K8sObject(string File, string Kind, string Name, YamlMappingNode Node);

    static List<K8sObject> Manifests()
    {
        var dir = Deploy("k8s");
        Assert.True(Directory.Exists(dir), $"{dir} is missing");
        var files = Directory.GetFiles(dir, "*.yaml").Concat(Directory.GetFiles(dir, "*.yml")).Order().ToList();
        Assert.NotEmpty(files);
        return files.SelectMany(f => Load(f).Select(d => new K8sObject(Path.GetFileName(f), Scalar(d, "kind") ?? "?", Scalar(d, "metadata", "name") ?? "?", d))).ToList();
    }

    static List<Container> K8sContainers(K8sObject o)
    {
        var pod = o.Kind is "Pod" ? Get(o.Node, "spec") : o.Kind is "Job" or "Deployment" or "StatefulSet" or "DaemonSet" ? Get(o.Node, "spec", "template", "spec") : null;
        var list = new List<Container>();
        foreach (var key in new[] { "initContainers", "containers" })
            if (Get(pod, key) is YamlSequenceNode seq)
                foreach (var c in seq.Children.OfType<YamlMappingNode>())
                {
                    string where = $"{o.File}: {o.Kind}/{o.Name} container {Scalar(c, "name")}";
                    var env = new Dictionary<string, YamlNode?>();
                    if (Get(c, "env") is YamlSequenceNode envs)
                        foreach (var e in envs.Children.OfType<YamlMappingNode>())
                            env[Scalar(e, "name")!] = Get(e, "value") ?? Get(e, "valueFrom");
                    list.Add(new Container(where, Scalar(c, "image") ?? "", Invocations(where, Strings(Get(c, "command")), Strings(Get(c, "args"))), env, c));
                }
        return list;
    }

    static bool IsDistgptImage(Container c) => c.Image.Split(':')[0].Split('/').Last().Contains("distgpt");

    [Fact]
    public void KubernetesManifestsHaveACoordinatorDeploymentAndServiceWorkersATokenSecretOtlpAndResourceRequests()
    {
        var objects = Manifests();
        var all = objects.SelectMany(o => K8sContainers(o).Select(c => (o, c))).Where(x => IsDistgptImage(x.c)).ToList();
        var coordinator = all.Where(x => x.c.Invocations.Any(i => i.Subcommand == "coordinator")).ToList();
        var workers = all.Where(x => x.c.Invocations.Any(i => i.Subcommand == "worker")).ToList();
        Assert.True(coordinator.Count == 1, $"expected one container running `distgpt coordinator`, found {coordinator.Count}");
        Assert.Equal("Deployment", coordinator[0].o.Kind);
        Assert.Equal("1", Scalar(coordinator[0].o.Node, "spec", "replicas") ?? "1");
        Assert.True(workers.Count == 1, $"expected one worker template running `distgpt worker`, found {workers.Count}");
        var (wo, wc) = workers[0];
        Assert.True(wo.Kind is "StatefulSet" or "Deployment", $"workers are a {wo.Kind}, expected a StatefulSet or Deployment");
        Assert.True(int.TryParse(Scalar(wo.Node, "spec", "replicas"), out int replicas) && replicas >= 2, $"{wo.Kind}/{wo.Name} needs replicas >= 2");

        // Workers reach the coordinator through its Service, on the port it listens on.
        var cInv = coordinator[0].c.Invocations.First(i => i.Subcommand == "coordinator");
        var wInv = wc.Invocations.First(i => i.Subcommand == "worker");
        var listen = new Uri(cInv.Value("--listen") ?? Fail<string>("the coordinator has no --listen"));
        var target = new Uri(wInv.Value("--coordinator") ?? Fail<string>("the worker has no --coordinator"));
        var service = objects.SingleOrDefault(o => o.Kind == "Service" && o.Name == target.Host.Split('.')[0]);
        Assert.True(service != null, $"the workers' --coordinator host '{target.Host}' is not a Service in deploy/k8s");
        var podLabels = (YamlMappingNode)Get(coordinator[0].o.Node, "spec", "template", "metadata", "labels")!;
        var selector = (YamlMappingNode)Get(service!.Node, "spec", "selector")!;
        Assert.All(selector.Children, kv => Assert.Equal(((YamlScalarNode)kv.Value).Value, Scalar(podLabels, ((YamlScalarNode)kv.Key).Value!)));
        var port = ((YamlSequenceNode)Get(service.Node, "spec", "ports")!).Children.OfType<YamlMappingNode>()
            .FirstOrDefault(p => Scalar(p, "port") == target.Port.ToString());
        Assert.True(port != null, $"Service {service.Name} has no port {target.Port}");
        string targetPort = Scalar(port!, "targetPort") ?? target.Port.ToString();
        var containerPort = ((YamlSequenceNode)Get(coordinator[0].c.Node, "ports")!).Children.OfType<YamlMappingNode>()
            .FirstOrDefault(p => Scalar(p, "name") == targetPort || Scalar(p, "containerPort") == targetPort);
        Assert.True(containerPort != null, $"Service {service.Name} targets port {targetPort}, which the coordinator container does not expose");
        Assert.Equal(listen.Port.ToString(), Scalar(containerPort!, "containerPort"));

        // The cluster token comes from a Secret defined here, under a key it has; the OTLP endpoint from env.
        foreach (var (o, c) in coordinator.Concat(workers))
        {
            Assert.True(c.Env.TryGetValue("DISTGPT_CLUSTER_TOKEN", out var from), $"{c.Where}: no DISTGPT_CLUSTER_TOKEN");
            string? secretName = Scalar(from, "secretKeyRef", "name"), key = Scalar(from, "secretKeyRef", "key");
            Assert.True(secretName != null && key != null, $"{c.Where}: DISTGPT_CLUSTER_TOKEN must come from a Secret (valueFrom.secretKeyRef)");
            var secret = objects.SingleOrDefault(s => s.Kind == "Secret" && s.Name == secretName);
            Assert.True(secret != null, $"{c.Where}: Secret {secretName} is not in deploy/k8s");
            Assert.True(Get(secret!.Node, "stringData", key!) != null || Get(secret.Node, "data", key!) != null, $"Secret {secretName} has no key {key}");
            Assert.True(c.Env.ContainsKey("OTEL_EXPORTER_OTLP_ENDPOINT"), $"{c.Where}: no OTEL_EXPORTER_OTLP_ENDPOINT");
            Assert.DoesNotContain(c.Invocations, i => i.Value("--cluster-token") != null); // never on the command line
        }
        foreach (var r in new[] { "cpu", "memory" })
            Assert.True(Scalar(wc.Node, "resources", "requests", r) != null, $"{wc.Where}: no resources.requests.{r}");
    }

    [Fact]
    public void KubernetesCommandsFlagsAndEnvironmentMatchTheCli()
    {
        var containers = Manifests().SelectMany(K8sContainers).Where(IsDistgptImage).ToList();
        Assert.NotEmpty(containers);
        foreach (var c in containers)
        {
            Assert.True(c.Invocations.Count > 0, $"{c.Where} runs the distgpt image but no distgpt command was found in it");
            foreach (var inv in c.Invocations) AssertCliAccepts(inv);
            // $(NAME) in command/args is expanded by Kubernetes only when NAME is in the container's env.
            string words = string.Join(" ", (Strings(Get(c.Node, "command")) ?? []).Concat(Strings(Get(c.Node, "args")) ?? []));
            var references = Regex.Matches(words, @"\$\(([A-Za-z_][A-Za-z0-9_]*)\)").Select(m => m.Groups[1].Value).ToList();
            foreach (var name in references)
                Assert.True(c.Env.ContainsKey(name), $"{c.Where}: $({name}) is used but {name} is not in its env");
            AssertEnvNamesAreRead(c, references);
        }
    }

    [Fact]
    public void KubernetesShellWrapperRunsInTheImage()
    {
        // coordinator.yaml wraps distgpt in /bin/sh (resume after a restart, idle after the run): the image must have a
        // shell and `distgpt` on PATH.
        var shells = Manifests().SelectMany(K8sContainers).Where(c => c.Invocations.Any(i => i.Where.EndsWith("(shell script)"))).ToList();
        if (shells.Count == 0) return;
        var (stages, entrypoint, text) = Dockerfile();
        string final = stages[^1];
        Assert.False(Regex.IsMatch(final, "chiseled|distroless|nanoserver", RegexOptions.IgnoreCase),
            $"{shells[0].Where} runs /bin/sh, but the final image ({final}) has no shell");
        bool onPath = Regex.IsMatch(entrypoint, @"^\[\s*""distgpt""") || Regex.IsMatch(entrypoint, @"^distgpt\b")
                      || text.Contains("/usr/local/bin/distgpt") || text.Contains("/usr/bin/distgpt") || Regex.IsMatch(text, @"^\s*ENV\s+PATH", RegexOptions.Multiline);
        Assert.True(onPath, $"{shells[0].Where} runs `distgpt` from a shell: the Dockerfile must put distgpt on PATH (ENTRYPOINT [\"distgpt\"], a link in /usr/local/bin, or ENV PATH)");
    }

    // ---- Dockerfile ----

    static (List<string> Stages, string Entrypoint, string Text) Dockerfile()
    {
        string path = Deploy("Dockerfile");
        Assert.True(File.Exists(path), $"{path} is missing (the multi-stage image: SDK build, then runtime)");
        string text = File.ReadAllText(path);
        var lines = text.Replace("\\\n", " ").Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).ToList();
        // Base images may be build arguments (ARG SDK_IMAGE=…, FROM ${SDK_IMAGE}): a stage is read with the ARG's default.
        var args = lines.Select(l => Regex.Match(l, @"^ARG\s+(\w+)=(\S+)", RegexOptions.IgnoreCase)).Where(m => m.Success)
            .ToDictionary(m => m.Groups[1].Value, m => m.Groups[2].Value);
        var stages = lines.Where(l => l.StartsWith("FROM ", StringComparison.OrdinalIgnoreCase))
            .Select(l => Regex.Replace(l, @"\$\{?(\w+)\}?", m => args.GetValueOrDefault(m.Groups[1].Value, m.Value))).ToList();
        string entrypoint = lines.LastOrDefault(l => l.StartsWith("ENTRYPOINT ", StringComparison.OrdinalIgnoreCase))?[11..].Trim() ?? "";
        return (stages, entrypoint, text);
    }

    /// <summary>The restore layer sees only the .csproj files COPY'd before it: a project distgpt references that is not
    /// among them fails the image's publish ("Assets file … not found").</summary>
    [Fact]
    public void DockerfileCopiesEveryProjectDistgptReferencesBeforeTheRestore()
    {
        var (_, _, text) = Dockerfile();
        int restore = text.IndexOf("dotnet restore", StringComparison.Ordinal);
        Assert.True(restore > 0, "the Dockerfile has no `dotnet restore` layer");
        var copied = Regex.Matches(text[..restore], @"^COPY\s+(src/\S+\.csproj)\s", RegexOptions.Multiline).Select(m => m.Groups[1].Value).ToHashSet();
        var closure = new SortedSet<string>(StringComparer.Ordinal);
        void Visit(string project)
        {
            if (!closure.Add(project)) return;
            string dir = Path.GetDirectoryName(project)!;
            foreach (Match m in Regex.Matches(File.ReadAllText(Path.Combine(TestData.RepoRoot, project)), @"<ProjectReference\s+Include=""([^""]+)"""))
                Visit(Path.GetRelativePath(TestData.RepoRoot, Path.GetFullPath(Path.Combine(TestData.RepoRoot, dir, m.Groups[1].Value))).Replace('\\', '/'));
        }
        Visit("src/Coordinator/Coordinator.csproj");
        Assert.Empty(closure.Where(p => !copied.Contains(p)));
    }

    [Fact]
    public void DockerfileIsMultiStageSdkToRuntimeAndRunsDistgpt()
    {
        var (stages, entrypoint, text) = Dockerfile();
        Assert.True(stages.Count >= 2, $"the Dockerfile has {stages.Count} FROM line(s); expected an SDK build stage and a runtime stage");
        Assert.Contains(stages, s => s.Contains("dotnet/sdk"));
        Assert.Matches("dotnet/(runtime|aspnet|runtime-deps)", stages[^1]);
        Assert.DoesNotContain("dotnet/sdk", stages[^1]);
        Assert.Matches(@"COPY\s+--from=", text);
        Assert.True(entrypoint.Contains("distgpt"), $"the Dockerfile's ENTRYPOINT ({entrypoint}) does not run distgpt");
        // The default CMD, if any, must be a real command line.
        var cmd = text.Split('\n').Select(l => l.Trim()).LastOrDefault(l => l.StartsWith("CMD ", StringComparison.OrdinalIgnoreCase));
        if (cmd != null)
        {
            var words = cmd[4..].Trim() is var c && c.StartsWith('[')
                ? Regex.Matches(c, "\"([^\"]*)\"").Select(m => m.Groups[1].Value).ToList() : CliRunner.Split(cmd[4..]).ToList();
            if (words.Count > 0 && Subcommands.Contains(words[0])) AssertCliAccepts(new Invocation("Dockerfile CMD", words[0], words.Skip(1).ToList()));
        }
    }

    // ---- docker compose ----

    [Fact]
    public void ComposeHasTheCoordinatorScalableWorkersAndJaegerAndMatchesTheCli()
    {
        string path = Deploy("docker-compose.yml");
        var doc = Load(path).Single();
        var services = Get(doc, "services") as YamlMappingNode ?? Fail<YamlMappingNode>("docker-compose.yml has no services");
        var names = services.Children.Keys.Select(k => ((YamlScalarNode)k).Value!).ToList();
        foreach (var required in new[] { "coordinator", "worker", "jaeger" })
            Assert.True(names.Contains(required), $"docker-compose.yml has no '{required}' service (has {string.Join(", ", names)})");

        var containers = new Dictionary<string, Container>();
        foreach (var (key, value) in services.Children)
        {
            var svc = (YamlMappingNode)value;
            string name = ((YamlScalarNode)key).Value!, where = $"docker-compose.yml: service {name}";
            string image = Scalar(svc, "image") ?? "";
            if (Get(svc, "build") == null && !image.Contains("distgpt")) continue; // jaeger and other third-party images
            var env = new Dictionary<string, YamlNode?>();
            switch (Get(svc, "environment"))
            {
                case YamlMappingNode map:
                    foreach (var (k, v) in map.Children) env[((YamlScalarNode)k).Value!] = v;
                    break;
                case YamlSequenceNode list:
                    foreach (var item in list.Children.OfType<YamlScalarNode>()) env[item.Value!.Split('=')[0]] = item;
                    break;
            }
            var c = new Container(where, image.Length > 0 ? image : "distgpt", Invocations(where, Strings(Get(svc, "entrypoint")), Strings(Get(svc, "command"))), env, svc);
            containers[name] = c;
            Assert.True(c.Invocations.Count > 0, $"{where} builds/runs the distgpt image but no distgpt command was found in it");
            foreach (var inv in c.Invocations) AssertCliAccepts(inv);
            AssertEnvNamesAreRead(c, []);
        }
        Assert.True(containers.ContainsKey("coordinator") && containers.ContainsKey("worker"), "the coordinator and worker services must run the distgpt image");
        var coordinator = containers["coordinator"].Invocations.FirstOrDefault(i => i.Subcommand == "coordinator")
                          ?? Fail<Invocation>("service coordinator does not run `distgpt coordinator`");
        var worker = containers["worker"].Invocations.FirstOrDefault(i => i.Subcommand == "worker")
                     ?? Fail<Invocation>("service worker does not run `distgpt worker`");

        // `docker compose up --scale worker=N`: no fixed container name or host port on the worker service.
        var workerNode = containers["worker"].Node;
        Assert.True(Get(workerNode, "container_name") == null, "service worker sets container_name, so it cannot be scaled");
        Assert.True(Get(workerNode, "ports") == null, "service worker publishes host ports, so it cannot be scaled");
        Assert.True(worker.Value("--name") == null, "service worker fixes --name, so scaled replicas would collide (the default, host-pid, is unique per container)");

        var listen = new Uri(coordinator.Value("--listen") ?? "http://0.0.0.0:7070");
        var target = new Uri(worker.Value("--coordinator") ?? Fail<string>("service worker has no --coordinator"));
        Assert.Equal("coordinator", target.Host);
        Assert.Equal(listen.Port, target.Port);
        Assert.NotEqual("127.0.0.1", listen.Host);

        // Jaeger is opt-in (a profile: its image cannot be pulled where no registry is reachable); the OTLP endpoint comes
        // from the shell, and the file says which one reaches the jaeger service.
        var jaeger = (YamlMappingNode)services.Children[new YamlScalarNode("jaeger")];
        Assert.True(Strings(Get(jaeger, "profiles"))?.Contains("tracing") == true, "docker-compose.yml: service jaeger should sit behind the 'tracing' profile");
        Assert.Contains("http://jaeger:4317", File.ReadAllText(path));
        foreach (var c in new[] { containers["coordinator"], containers["worker"] })
        {
            Assert.True(c.Env.ContainsKey("DISTGPT_CLUSTER_TOKEN"), $"{c.Where}: no DISTGPT_CLUSTER_TOKEN");
            string? endpoint = (c.Env.GetValueOrDefault("OTEL_EXPORTER_OTLP_ENDPOINT") as YamlScalarNode)?.Value;
            Assert.True(endpoint?.Contains("${OTEL_EXPORTER_OTLP_ENDPOINT") == true,
                $"{c.Where}: OTEL_EXPORTER_OTLP_ENDPOINT should pass the shell's setting through (e.g. http://jaeger:4317 with the tracing profile); it is '{endpoint}'");
        }
    }

    // ---- README ----

    [Fact]
    public void DeployReadmeSaysHowToRunEachAndWhatChangesForProduction()
    {
        string path = Deploy("README.md");
        Assert.True(File.Exists(path), $"{path} is missing");
        string text = File.ReadAllText(path);
        foreach (var needle in new[] { "docker build", "docker compose", "--scale worker=", "kubectl apply", "DISTGPT_CLUSTER_TOKEN", "OTEL_EXPORTER_OTLP_ENDPOINT", "TLS", "--tls-cert", "--tls-ca", "rotat", "GPU" })
            Assert.True(text.Contains(needle, StringComparison.OrdinalIgnoreCase), $"deploy/README.md does not mention '{needle}'");
        // Every distgpt command line in the README's code blocks is a real one.
        foreach (Match block in Regex.Matches(text, "```(?:bash|sh|shell)?\\n(.*?)```", RegexOptions.Singleline))
            foreach (var words in ShellCommands(block.Groups[1].Value))
            {
                int i = words.FindIndex(IsDistgpt);
                if (i >= 0 && i + 1 < words.Count && Regex.IsMatch(words[i + 1], "^[a-z]+$")) // not `docker build -t distgpt .`
                    AssertCliAccepts(new Invocation("deploy/README.md", words[i + 1], words.Skip(i + 2).ToList()));
            }
    }
}
