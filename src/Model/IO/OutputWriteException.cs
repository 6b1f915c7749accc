namespace DistGpt.Model.IO;

/// <summary>A run's output (checkpoint, metrics) could not be written, e.g. on a full disk. The message names the path and
/// the space left on its file system; the CLI exits with code 1.</summary>
public sealed class OutputWriteException(string message, Exception inner) : Exception(message, inner)
{
    public static OutputWriteException Writing(string path, Exception e) =>
        new($"cannot write '{path}': {e.Message.TrimEnd('.', ' ')} ({FreeSpace(path)})", e);

    static string FreeSpace(string path)
    {
        try
        {
            string dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!;
            while (!Directory.Exists(dir)) dir = System.IO.Path.GetDirectoryName(dir)!;
            long free = new DriveInfo(dir).AvailableFreeSpace;
            return $"{Bytes(free)} free on its file system";
        }
        catch (Exception) { return "free space unknown"; }
    }

    static string Bytes(long n) => n switch
    {
        < 1 << 10 => $"{n} bytes",
        < 1 << 20 => $"{n / 1024.0:F1} KiB",
        < 1 << 30 => $"{n / (1024.0 * 1024):F1} MiB",
        _ => $"{n / (1024.0 * 1024 * 1024):F1} GiB",
    };
}
