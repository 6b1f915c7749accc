using System.IO.MemoryMappedFiles;

namespace DistGpt.Contracts.Wire;

/// <summary>A file in /dev/shm mapped by both ends of a connection on one host. A frame's payload crosses through it
/// instead of the socket: the sender copies the payload in and then sends the frame's prefix and header on the socket;
/// the receiver copies the payload out after reading them. The socket's ordering keeps the two in step: one region per
/// direction, and each side has copied a payload out before the other side can send the next one (request/reply).
/// The peer unlinks the file once both ends have mapped it; the mappings stay valid until both are disposed.</summary>
public sealed unsafe class SharedMemoryRegion : IDisposable
{
    readonly MemoryMappedFile file;
    readonly MemoryMappedViewAccessor view;
    readonly bool owner;
    bool disposed;

    SharedMemoryRegion(string path, MemoryMappedFile file, long capacity, bool owner)
    {
        (Path, this.file, Capacity, this.owner) = (path, file, capacity, owner);
        view = file.CreateViewAccessor(0, capacity, MemoryMappedFileAccess.ReadWrite);
        byte* p = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        Pointer = p + view.PointerOffset;
    }

    public string Path { get; }
    public long Capacity { get; }
    public byte* Pointer { get; }

    /// <summary>Where regions are created: /dev/shm (RAM-backed) when this host has it, else null (use the socket).</summary>
    public static string? Directory => System.IO.Directory.Exists("/dev/shm") ? "/dev/shm" : null;

    /// <summary>Creates (and on Dispose deletes) a region of <paramref name="capacity"/> bytes readable only by this user.</summary>
    public static SharedMemoryRegion Create(string path, long capacity) => Create(path, capacity, unlink: false);

    /// <summary>Creates a region in <paramref name="directory"/> and unlinks its file at once: peers map it through
    /// /proc/PID/fd/FD (its <see cref="Path"/>) for as long as this process holds it, so any number of peers can map it,
    /// joining at any time, and no kill can leave it behind.</summary>
    public static SharedMemoryRegion CreateUnlinked(string directory, long capacity) =>
        Create(System.IO.Path.Combine(directory, $"distgpt-{Guid.NewGuid():N}"), capacity, unlink: true);

    static SharedMemoryRegion Create(string path, long capacity, bool unlink)
    {
        var stream = new FileStream(path, new FileStreamOptions
        {
            Mode = FileMode.CreateNew, Access = FileAccess.ReadWrite, Share = FileShare.ReadWrite,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        });
        try
        {
            stream.SetLength(capacity);
            // The mapped file keeps the descriptor open for as long as the mapping lives.
            string procPath = $"/proc/{Environment.ProcessId}/fd/{(int)stream.SafeFileHandle.DangerousGetHandle()}";
            var file = MemoryMappedFile.CreateFromFile(stream, null, capacity, MemoryMappedFileAccess.ReadWrite, HandleInheritability.None, leaveOpen: false);
            if (unlink) File.Delete(path);
            return new SharedMemoryRegion(unlink ? procPath : path, file, capacity, owner: !unlink);
        }
        catch
        {
            stream.Dispose();
            File.Delete(path);
            throw;
        }
    }

    /// <summary>Maps a region the peer created; ProtocolException when it is missing or not as large as announced.</summary>
    public static SharedMemoryRegion Open(string path, long capacity)
    {
        FileStream stream;
        try { stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite); }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new ProtocolException($"shared-memory region '{path}' does not exist (is the coordinator on another host?)");
        }
        if (stream.Length != capacity)
        {
            long length = stream.Length;
            stream.Dispose();
            throw new ProtocolException($"shared-memory region '{path}' has {length} bytes, announced {capacity}");
        }
        var file = MemoryMappedFile.CreateFromFile(stream, null, capacity, MemoryMappedFileAccess.ReadWrite, HandleInheritability.None, leaveOpen: false);
        return new SharedMemoryRegion(path, file, capacity, owner: false);
    }

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        view.SafeMemoryMappedViewHandle.ReleasePointer();
        view.Dispose();
        file.Dispose();
        if (owner) File.Delete(Path);
    }
}
