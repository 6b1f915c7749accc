using System.IO.MemoryMappedFiles;

namespace DistGpt.Model.Data;

/// <summary>One split's token ids (uint16), either held in memory (a text corpus, in the pinned heap) or memory-mapped
/// read-only from a token file (nanoGPT's train.bin / val.bin), so a corpus larger than memory is paged in by the kernel
/// as windows are read. A split lives as long as the process: a mapping is never unmapped under a reader.</summary>
public sealed unsafe class TokenSplit
{
    readonly ushort* tokens;
    readonly object owner; // the pinned array or the mapped view, kept alive with the pointer into it

    public long Length { get; }

    public static TokenSplit Empty { get; } = InMemory([]);

    TokenSplit(ushort* tokens, long length, object owner)
    {
        this.tokens = tokens;
        Length = length;
        this.owner = owner;
    }

    /// <summary>Ids already known to fit uint16 (a vocabulary of at most 65,536), narrowed into the pinned heap.</summary>
    public static TokenSplit InMemory(ReadOnlySpan<int> ids)
    {
        var pinned = GC.AllocateUninitializedArray<ushort>(ids.Length, pinned: true);
        for (int i = 0; i < ids.Length; i++) pinned[i] = (ushort)ids[i];
        fixed (ushort* p = pinned) return new TokenSplit(p, pinned.LongLength, pinned);
    }

    /// <summary>Maps a little-endian uint16 file read-only (an odd trailing byte is ignored: the caller refuses it first).</summary>
    public static TokenSplit Map(string path)
    {
        long bytes = new FileInfo(path).Length;
        if (bytes < 2) return InMemory([]);
        using var file = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        var view = file.CreateViewAccessor(0, bytes & ~1L, MemoryMappedFileAccess.Read);
        byte* p = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref p); // never released: the mapping lives with the process
        return new TokenSplit((ushort*)(p + view.PointerOffset), bytes / 2, view);
    }

    public ushort this[long i] => (ulong)i < (ulong)Length ? tokens[i] : throw new ArgumentOutOfRangeException(nameof(i));

    /// <summary>Tokens [start, start + count).</summary>
    public ReadOnlySpan<ushort> Slice(long start, int count) =>
        start >= 0 && count >= 0 && start + count <= Length ? new(tokens + start, count) : throw new ArgumentOutOfRangeException(nameof(start));
}
