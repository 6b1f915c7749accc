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
    readonly Microsoft.Win32.SafeHandles.SafeFileHandle handle; // open as long as the mapping (the file owns it)
    bool owner;
    bool disposed;

    SharedMemoryRegion(string path, MemoryMappedFile file, Microsoft.Win32.SafeHandles.SafeFileHandle handle, long capacity, bool owner)
    {
        (Path, this.file, this.handle, Capacity, this.owner) = (path, file, handle, capacity, owner);
        view = file.CreateViewAccessor(0, capacity, MemoryMappedFileAccess.ReadWrite);
        byte* p = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        Pointer = p + view.PointerOffset;
    }

    public string Path { get; private set; }
    public long Capacity { get; }
    public byte* Pointer { get; }

    /// <summary>Where regions are created: /dev/shm (RAM-backed) when this host has it, else null (use the socket).</summary>
    public static string? Directory => System.IO.Directory.Exists("/dev/shm") ? "/dev/shm" : null;

    /// <summary>Creates (and on Dispose deletes) a region of <paramref name="capacity"/> bytes readable only by this user.</summary>
    public static SharedMemoryRegion Create(string path, long capacity)
    {
        var stream = new FileStream(path, new FileStreamOptions
        {
            Mode = FileMode.CreateNew, Access = FileAccess.ReadWrite, Share = FileShare.ReadWrite,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        });
        try
        {
            stream.SetLength(capacity);
            var file = MemoryMappedFile.CreateFromFile(stream, null, capacity, MemoryMappedFileAccess.ReadWrite, HandleInheritability.None, leaveOpen: false);
            return new SharedMemoryRegion(path, file, stream.SafeFileHandle, capacity, owner: true);
        }
        catch
        {
            stream.Dispose();
            File.Delete(path);
            throw;
        }
    }

    /// <summary>Creates a region in <paramref name="directory"/> and unlinks its file at once: peers map it through
    /// /proc/PID/fd/FD (its <see cref="Path"/>) for as long as this process holds it, so any number of peers can map it,
    /// joining at any time, and no kill can leave it behind.</summary>
    public static SharedMemoryRegion CreateUnlinked(string directory, long capacity)
    {
        string path = System.IO.Path.Combine(directory, $"distgpt-{Guid.NewGuid():N}");
        var region = Create(path, capacity);
        File.Delete(path);
        region.owner = false;
        region.Path = $"/proc/{Environment.ProcessId}/fd/{(int)region.handle.DangerousGetHandle()}";
        return region;
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
        return new SharedMemoryRegion(path, file, stream.SafeFileHandle, capacity, owner: false);
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
