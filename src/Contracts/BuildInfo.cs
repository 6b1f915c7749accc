using System.Reflection;
using System.Security.Cryptography;
using System.Text;

namespace DistGpt.Contracts;

public static class BuildInfo
{
    public const int ProtocolVersion = 4; // 2: JoinAccepted.GradientDType (bf16 gradient payloads); 3: GradientsBucket frames; 4: admission and compute orders by Orleans grains, the data plane opened with a ticket

    /// <summary>The informational version of this build; workers of another build are refused.</summary>
    public static string Version { get; } =
        typeof(BuildInfo).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "unknown";

    /// <summary>Constant-time token comparison (no early exit that would leak the matching prefix length).</summary>
    public static bool TokensEqual(string? given, string expected)
    {
        var a = SHA256.HashData(Encoding.UTF8.GetBytes(given ?? ""));
        var b = SHA256.HashData(Encoding.UTF8.GetBytes(expected));
        return CryptographicOperations.FixedTimeEquals(a, b) && given != null;
    }
}

/// <summary>A run that cannot go on (a worker died, the coordinator is unreachable…): exit code 1 with the message.</summary>
public sealed class RunFailedException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>The coordinator refused this worker (token, build, config, data): exit code 2 with the reason.</summary>
public sealed class JoinRefusedException(string reason) : Exception(reason);
