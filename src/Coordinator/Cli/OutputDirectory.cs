using System.Runtime.InteropServices;
using DistGpt.Model;
using DistGpt.Model.IO;

namespace DistGpt.Coordinator.Cli;

/// <summary>A run's --out directory, held for the whole run: it must be a directory we can write (created if missing),
/// it is locked through &lt;out&gt;/.lock (an flock held by the open file, so a killed run never leaves it locked) so two
/// runs never write one checkpoint, and a new run refuses to replace a checkpoint it was not told to.</summary>
public sealed class OutputDirectory : IDisposable
{
    public const string LockFileName = ".lock";

    readonly FileStream lockFile;

    OutputDirectory(string path, FileStream lockFile) => (Path, this.lockFile) = (path, lockFile);

    public string Path { get; }

    /// <param name="resume">the run continues the checkpoint in it (which must exist)</param>
    /// <param name="overwrite">the run starts afresh and replaces whatever checkpoint and metrics it holds</param>
    public static OutputDirectory Claim(string path, bool resume, bool overwrite)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new ConfigException("--out must name a directory");
        if (resume && overwrite) throw new ConfigException("--resume and --overwrite exclude each other: continue the checkpoint in --out, or replace it");
        if (File.Exists(path)) throw new ConfigException($"--out '{path}' is a file, not a directory");
        try { Directory.CreateDirectory(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException)
        {
            throw new ConfigException($"--out '{path}': cannot create the directory ({e.Message.TrimEnd('.')})");
        }
        var claimed = new OutputDirectory(path, Lock(path));
        try
        {
            if (resume && !Checkpoint.Exists(path))
                throw new CheckpointException($"--resume: no checkpoint in '{path}' (expected {Checkpoint.PathIn(path)})");
            if (!resume && Checkpoint.Exists(path))
            {
                if (!overwrite)
                    throw new ConfigException($"--out '{path}' already holds a checkpoint ({Checkpoint.PathIn(path)}); pass --resume to continue it or --overwrite to replace it");
                Checkpoint.Delete(path);
            }
        }
        catch
        {
            claimed.Dispose();
            throw;
        }
        CrashLog.OutDir = path;
        return claimed;
    }

    static FileStream Lock(string dir)
    {
        string path = System.IO.Path.Combine(dir, LockFileName);
        try
        {
            // FileShare.None is an exclusive, non-blocking flock on Unix: a second run fails here at once.
            var file = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            file.SetLength(0);
            file.Write(System.Text.Encoding.ASCII.GetBytes($"{Environment.ProcessId}\n"));
            file.Flush();
            return file;
        }
        catch (IOException) when (HolderPid(path) is { } pid)
        {
            throw new ConfigException($"--out '{dir}' is in use by another run (pid {pid}, holding {path})");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ConfigException($"--out '{dir}' is not writable ({e.Message.TrimEnd('.')})");
        }
    }

    /// <summary>The pid the lock holder wrote. Read with plain open/read: .NET's own FileStream would ask for a shared
    /// flock, which the holder's exclusive one refuses.</summary>
    static int? HolderPid(string path)
    {
        int fd = open(path, 0 /* O_RDONLY */);
        if (fd < 0) return null;
        try
        {
            var buffer = new byte[32];
            nint n = read(fd, buffer, buffer.Length);
            return n > 0 && int.TryParse(System.Text.Encoding.ASCII.GetString(buffer, 0, (int)n).Trim(), out int pid) ? pid : null;
        }
        finally { close(fd); }
    }

    [DllImport("libc", SetLastError = true)] static extern int open(string path, int flags);
    [DllImport("libc", SetLastError = true)] static extern nint read(int fd, byte[] buffer, nint count);
    [DllImport("libc")] static extern int close(int fd);

    public void Dispose() => lockFile.Dispose();
}
