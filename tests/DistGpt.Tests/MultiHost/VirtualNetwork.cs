using System.Diagnostics;
using System.Text;
using Xunit;

namespace DistGpt.Tests.MultiHost;

/// <summary>A private network of hosts built from Linux network namespaces, for running `distgpt` on separate hosts
/// with their own addresses. A "switch" namespace holds a bridge; each host namespace gets one veth pair whose host end
/// (eth0) carries its address and whose switch end (named after the host) is a port of the bridge. Nothing is configured
/// in the root namespace: all names are unique to this instance and everything is removed on <see cref="Dispose"/>
/// (processes killed, namespaces deleted, which destroys the veths and the bridge), even when a test fails.</summary>
public sealed class VirtualNetwork : IDisposable
{
    readonly List<Host> hosts = new();
    readonly List<CliProcess> processes = new();
    readonly List<string> namespaces = new();
    bool disposed;

    /// <summary>Random 4-hex tag shared by every name this network creates (interface names stay within 15 chars).</summary>
    public string Tag { get; }
    /// <summary>The private /24 used only inside this network's namespaces, e.g. "10.231.57".</summary>
    public string Subnet { get; }
    public string SwitchNamespace { get; }

    public VirtualNetwork(params string[] hostNames)
    {
        Tag = Convert.ToHexString(Guid.NewGuid().ToByteArray()[..2]).ToLowerInvariant();
        Subnet = $"10.231.{Random.Shared.Next(1, 255)}";
        SwitchNamespace = $"dg{Tag}-switch";
        try
        {
            AddNamespace(SwitchNamespace);
            string bridge = $"dg{Tag}br";
            Netns.Ip("-n", SwitchNamespace, "link", "add", bridge, "type", "bridge");
            Netns.Ip("-n", SwitchNamespace, "link", "set", bridge, "up");
            for (int i = 0; i < hostNames.Length; i++)
            {
                var host = new Host(this, hostNames[i], $"dg{Tag}-{hostNames[i]}", $"{Subnet}.{i + 1}", $"dg{Tag}{hostNames[i]}");
                AddNamespace(host.Namespace);
                Netns.Ip("-n", SwitchNamespace, "link", "add", host.SwitchPort, "type", "veth", "peer", "name", "eth0", "netns", host.Namespace);
                Netns.Ip("-n", SwitchNamespace, "link", "set", host.SwitchPort, "master", bridge);
                Netns.Ip("-n", SwitchNamespace, "link", "set", host.SwitchPort, "up");
                Netns.Ip("-n", host.Namespace, "addr", "add", $"{host.Address}/24", "dev", "eth0");
                Netns.Ip("-n", host.Namespace, "link", "set", "eth0", "up");
                hosts.Add(host);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    void AddNamespace(string name)
    {
        Netns.Ip("netns", "add", name);
        namespaces.Add(name);
        Netns.Ip("-n", name, "link", "set", "lo", "up");
    }

    public Host this[string name] => hosts.Single(h => h.Name == name);

    public IReadOnlyList<string> Namespaces => namespaces;

    /// <summary>One machine of the network: its namespace, address and link.</summary>
    public sealed class Host(VirtualNetwork network, string name, string ns, string address, string switchPort)
    {
        public string Name => name;
        public string Namespace => ns;
        public string Address => address;
        /// <summary>The switch end of this host's cable (the bridge port, in the switch namespace).</summary>
        public string SwitchPort => switchPort;

        /// <summary>Starts `distgpt args…` on this host: `ip netns exec NS dotnet distgpt.dll args…`.</summary>
        public CliProcess Start(string args, IDictionary<string, string>? env = null) => network.Start(this, CliRunner.Split(args), env);

        /// <summary>Unplugs (false) or plugs back (true) this host's cable at the switch: `ip link set PORT down|up`.
        /// The host's own interface keeps its address; its packets simply go nowhere, as with a cut cable.</summary>
        public void SetLink(bool up) => Netns.Ip("-n", network.SwitchNamespace, "link", "set", switchPort, up ? "up" : "down");

        /// <summary>Delays everything this host sends: netem delay where the kernel has it, else a tbf rate limit (a slow
        /// link, which delays a gradient upload by about a second). Returns a description of what was applied.</summary>
        public string DelayTraffic(string qdisc)
        {
            string[] spec = qdisc == "netem" ? ["netem", "delay", "500ms"] : ["tbf", "rate", "1mbit", "burst", "16kb", "latency", "2s"];
            Netns.Ip(["netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", .. spec]);
            return string.Join(' ', spec);
        }

        public void RemoveDelay() => Netns.Ip("netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "root");
    }

    CliProcess Start(Host host, string[] args, IDictionary<string, string>? env)
    {
        var psi = new ProcessStartInfo("ip")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            StandardOutputEncoding = new UTF8Encoding(false),
            StandardErrorEncoding = new UTF8Encoding(false),
        };
        foreach (var a in (string[])["netns", "exec", host.Namespace, CliRunner.DotnetHost, CliRunner.DllPath, .. args]) psi.ArgumentList.Add(a);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        if (env != null)
            foreach (var (key, value) in env)
            {
                if (string.IsNullOrEmpty(value)) psi.Environment.Remove(key);
                else psi.Environment[key] = value;
            }
        var p = new CliProcess(psi, args);
        lock (processes) processes.Add(p);
        return p;
    }

    /// <summary>What went wrong while tearing down (empty when everything was removed).</summary>
    public List<string> CleanupProblems { get; } = new();

    /// <summary>Kills every process started here, deletes every namespace (and with them the veths and the bridge), and
    /// checks that none is left; problems land in <see cref="CleanupProblems"/> (never thrown, so a failing test keeps
    /// its own message). Safe to call twice.</summary>
    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        lock (processes)
            foreach (var p in processes) p.Dispose();
        var problems = CleanupProblems;
        foreach (var ns in Enumerable.Reverse(namespaces))
        {
            var r = Netns.Run("ip", ["netns", "del", ns]);
            if (!r.Ok) problems.Add($"ip netns del {ns}: {r.Output.Trim()}");
        }
        var left = Netns.List().Intersect(namespaces).ToList();
        if (left.Count > 0) problems.Add($"namespaces still present: {string.Join(", ", left)}");
    }

    /// <summary>True when none of this network's namespaces exist any more.</summary>
    public bool IsGone => !Netns.List().Overlaps(namespaces);
}
