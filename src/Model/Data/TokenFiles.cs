using System.Buffers;
using System.Security.Cryptography;
using System.Text.Json;
using DistGpt.Model.IO;

namespace DistGpt.Model.Data;

/// <summary>What meta.json beside train.bin / val.bin says. For "char", <see cref="Itos"/> and <see cref="Stoi"/> are
/// nanoGPT's meta.pkl content (id → character, character → id).</summary>
public sealed record TokenFilesMeta(
    string Tokenizer, int VocabSize, long TrainTokens, long ValTokens, string? Source = null, string? SourceSha256 = null,
    IReadOnlyDictionary<string, string>? Itos = null, IReadOnlyDictionary<string, int>? Stoi = null);

/// <summary>A directory in nanoGPT's token format: train.bin and val.bin, uint16 little-endian ids, and meta.json
/// (ours; nanoGPT's GPT-2 directories have none and are read as GPT-2 tokens, as nanoGPT's train.py does).
/// The files are memory-mapped, never read whole. Their SHA-256 and largest id take one pass over every byte, so
/// they are computed once and cached beside the files (.distgpt-identity.json, keyed by size and mtime).</summary>
public static class TokenFiles
{
    public const string TrainFile = "train.bin", ValFile = "val.bin", MetaFile = "meta.json", IdentityFile = ".distgpt-identity.json";

    public sealed record Identity(string Sha256, int MaxTokenId, long TrainBytes, long TrainTicks, long ValBytes, long ValTicks);

    public static Corpus Load(string dir, ITokenizer? expected = null)
    {
        var meta = ReadMeta(dir);
        var tokenizer = TokenizerOf(meta, dir);
        if (expected != null && (expected.Name != tokenizer.Name || expected.Vocabulary != tokenizer.Vocabulary))
            throw new DataException($"data directory '{dir}' holds {tokenizer.Name} tokens{(tokenizer.Name == Tokenizers.Char ? $" of {tokenizer.VocabSize} characters" : "")}, but the checkpoint's model was trained on {expected.Name} tokens{(expected.Name == Tokenizers.Char ? $" of {expected.VocabSize} characters" : "")}");
        var id = Identify(dir);
        if (meta != null && (meta.TrainTokens != id.TrainBytes / 2 || meta.ValTokens != id.ValBytes / 2))
            throw new DataException($"data directory '{dir}': {MetaFile} counts {meta.TrainTokens:N0} train and {meta.ValTokens:N0} val tokens, the files hold {id.TrainBytes / 2:N0} and {id.ValBytes / 2:N0} (truncated or replaced?)");
        if (id.MaxTokenId >= tokenizer.VocabSize)
            throw new DataException($"data directory '{dir}' holds token id {id.MaxTokenId}, outside its {tokenizer.Name} tokenizer's {tokenizer.VocabSize} ids");
        try
        {
            return new Corpus(dir, id.Sha256, tokenizer, TokenSplit.Map(System.IO.Path.Combine(dir, TrainFile)),
                TokenSplit.Map(System.IO.Path.Combine(dir, ValFile)), id.MaxTokenId, "token files");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new DataException($"data directory '{dir}': the token files cannot be mapped ({e.Message.TrimEnd('.')})");
        }
    }

    /// <summary>The directory's SHA-256 (over train.bin then val.bin) and largest id: from the cache when both files
    /// still have the size and mtime it recorded, else by reading them once (and caching, where the directory is writable).</summary>
    public static Identity Identify(string dir)
    {
        var train = RequireTokenFile(dir, TrainFile);
        var val = RequireTokenFile(dir, ValFile);
        string cachePath = System.IO.Path.Combine(dir, IdentityFile);
        try
        {
            if (File.Exists(cachePath) && JsonSerializer.Deserialize<Identity>(File.ReadAllBytes(cachePath), Json.Options) is { } cached
                && cached.TrainBytes == train.Length && cached.TrainTicks == train.LastWriteTimeUtc.Ticks
                && cached.ValBytes == val.Length && cached.ValTicks == val.LastWriteTimeUtc.Ticks
                && cached.Sha256 is { Length: 64 } && cached.MaxTokenId is >= 0 and <= ushort.MaxValue)
                return cached;
        }
        catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException) { } // recomputed below
        var identity = Compute(train, val);
        try
        {
            string tmp = cachePath + "." + Environment.ProcessId + ".tmp";
            File.WriteAllBytes(tmp, JsonSerializer.SerializeToUtf8Bytes(identity, Json.Indented));
            File.Move(tmp, cachePath, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { } // a read-only directory: hashed again next start
        return identity;
    }

    static Identity Compute(FileInfo train, FileInfo val)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        int max = 0;
        var buffer = ArrayPool<byte>.Shared.Rent(1 << 20);
        try
        {
            foreach (var file in new[] { train, val })
            {
                using var f = new FileStream(file.FullName, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan);
                int n;
                while ((n = f.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false)) > 0)
                {
                    sha.AppendData(buffer, 0, n);
                    var ids = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(buffer.AsSpan(0, n & ~1));
                    if (!ids.IsEmpty) max = Math.Max(max, System.Numerics.Tensors.TensorPrimitives.Max(ids));
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new DataException($"data directory '{train.DirectoryName}': cannot read the token files ({e.Message.TrimEnd('.')})");
        }
        finally { ArrayPool<byte>.Shared.Return(buffer); }
        return new Identity(Convert.ToHexString(sha.GetHashAndReset()).ToLowerInvariant(), max,
            train.Length, train.LastWriteTimeUtc.Ticks, val.Length, val.LastWriteTimeUtc.Ticks);
    }

    static FileInfo RequireTokenFile(string dir, string name)
    {
        var file = new FileInfo(System.IO.Path.Combine(dir, name));
        if (!file.Exists)
            throw new DataException($"data directory '{dir}' has no {name} (expected nanoGPT's train.bin and val.bin, e.g. from `distgpt prepare`)");
        if (file.Length % 2 != 0)
            throw new DataException($"data file '{file.FullName}' has an odd number of bytes ({file.Length:N0}); token files are uint16 ids");
        if (file.Length == 0)
            throw new DataException($"data file '{file.FullName}' is empty");
        return file;
    }

    static TokenFilesMeta? ReadMeta(string dir)
    {
        string path = System.IO.Path.Combine(dir, MetaFile);
        if (!File.Exists(path))
        {
            if (File.Exists(System.IO.Path.Combine(dir, "meta.pkl")))
                throw new DataException($"data directory '{dir}' has nanoGPT's meta.pkl (a character vocabulary) but no {MetaFile}; make the directory with `distgpt prepare --tokenizer char --input FILE --out DIR`");
            return null;
        }
        try
        {
            return JsonSerializer.Deserialize<TokenFilesMeta>(File.ReadAllBytes(path), Json.Strict) ?? throw new JsonException("empty");
        }
        catch (JsonException e) { throw new DataException($"'{path}' is not a valid {MetaFile}: {e.Message}"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new DataException($"'{path}' cannot be read ({e.Message.TrimEnd('.')})"); }
    }

    static ITokenizer TokenizerOf(TokenFilesMeta? meta, string dir)
    {
        if (meta == null) return Gpt2Tokenizer.Instance;
        string path = System.IO.Path.Combine(dir, MetaFile);
        ITokenizer tokenizer;
        try
        {
            tokenizer = meta.Tokenizer == Tokenizers.Char
                ? CharTokenizer.FromItos(meta.Itos ?? throw new ConfigException("a char tokenizer needs 'itos'"))
                : Tokenizers.Create(meta.Tokenizer, "");
        }
        catch (ConfigException e) { throw new DataException($"'{path}': {e.Message}"); }
        if (tokenizer.VocabSize != meta.VocabSize)
            throw new DataException($"'{path}' says vocab_size {meta.VocabSize}, its {meta.Tokenizer} tokenizer has {tokenizer.VocabSize} ids");
        return tokenizer;
    }

    /// <summary>Writes train.bin, val.bin and meta.json into <paramref name="dir"/>; ids must fit uint16.</summary>
    public static void Write(string dir, ReadOnlySpan<int> train, ReadOnlySpan<int> val, TokenFilesMeta meta)
    {
        Directory.CreateDirectory(dir);
        WriteIds(System.IO.Path.Combine(dir, TrainFile), train);
        WriteIds(System.IO.Path.Combine(dir, ValFile), val);
        File.WriteAllBytes(System.IO.Path.Combine(dir, MetaFile), JsonSerializer.SerializeToUtf8Bytes(meta, Json.Indented));
        Identify(dir); // cache the identity now, while the files are hot
    }

    static void WriteIds(string path, ReadOnlySpan<int> ids)
    {
        var bytes = new byte[ids.Length * 2L];
        for (int i = 0; i < ids.Length; i++)
        {
            if ((uint)ids[i] > ushort.MaxValue) throw new DataException($"token id {ids[i]} does not fit a uint16 token file");
            System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(i * 2), (ushort)ids[i]);
        }
        string tmp = path + ".tmp";
        File.WriteAllBytes(tmp, bytes);
        File.Move(tmp, path, overwrite: true);
    }
}
