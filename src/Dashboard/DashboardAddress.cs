using System.Net;
using DistGpt.Model;

namespace DistGpt.Dashboard;

/// <summary>Where the page listens, from `--dashboard [HOST:]PORT`: loopback unless a host is given; HOST is an IP
/// address (IPv6 in brackets) or `localhost`; port 0 takes a free one.</summary>
public sealed record DashboardAddress(IPAddress Host, int Port)
{
    public bool IsLoopback => IPAddress.IsLoopback(Host);

    public static DashboardAddress Parse(string? value, string flag = "--dashboard")
    {
        string text = (value ?? "").Trim();
        string host = "", port = text;
        int colon = text.LastIndexOf(':');
        if (colon >= 0 && !(text.StartsWith('[') && text.EndsWith(']')))
            (host, port) = (text[..colon], text[(colon + 1)..]);
        if (!int.TryParse(port, System.Globalization.NumberStyles.None, null, out int p) || p > 65535)
            throw new ConfigException($"{flag} '{value}' is not [HOST:]PORT: the port must be a number from 0 to 65535 (0: any free port)");
        IPAddress address;
        if (host.Length == 0 || host.Equals("localhost", StringComparison.OrdinalIgnoreCase)) address = IPAddress.Loopback;
        else if (!IPAddress.TryParse(host.Trim('[', ']'), out address!) || host.Contains(':') && !host.StartsWith('['))
            throw new ConfigException($"{flag} '{value}': the host must be an IP address (IPv6 in brackets, e.g. [::1]:8080) or localhost");
        return new DashboardAddress(address, p);
    }

    public override string ToString() => Host.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{Host}]:{Port}" : $"{Host}:{Port}";
}
