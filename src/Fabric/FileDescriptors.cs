namespace DistGpt.Fabric;

/// <summary>How many more files and sockets this process may open (RLIMIT_NOFILE less those open now).</summary>
public static class FileDescriptors
{
    public static int Free()
    {
        if (!OperatingSystem.IsLinux()) return 1024;
        try
        {
            // "Max open files            1024                 4096                 files"
            string? line = File.ReadLines("/proc/self/limits").FirstOrDefault(l => l.StartsWith("Max open files", StringComparison.Ordinal));
            string soft = line?.Split(' ', StringSplitOptions.RemoveEmptyEntries)[3] ?? "unlimited";
            if (!long.TryParse(soft, out long limit)) return int.MaxValue;
            int open = Directory.GetFileSystemEntries("/proc/self/fd").Length;
            return (int)Math.Clamp(limit - open, 0, int.MaxValue);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return 1024; }
    }
}
