using System.Text;

namespace DistGpt.Model.Data;

/// <summary>A UTF-8 text file tokenised by characters and split 90/10 into train and validation (nanoGPT's prepare.py).</summary>
public sealed class TextCorpus
{
    public string Path { get; }
    public string Sha256 { get; }
    public CharTokenizer Tokenizer { get; }
    public ushort[] Train { get; }
    public ushort[] Val { get; }
    public long Characters => Train.LongLength + Val.LongLength;

    TextCorpus(string path, string sha, CharTokenizer tokenizer, ushort[] train, ushort[] val) =>
        (Path, Sha256, Tokenizer, Train, Val) = (path, sha, tokenizer, train, val);

    /// <summary>Loads and checks the file; a problem a user can fix throws <see cref="DataException"/> naming the file.</summary>
    public static TextCorpus Load(string path, CharTokenizer? tokenizer = null)
    {
        if (Directory.Exists(path)) throw new DataException($"data file '{path}' is a directory, not a file");
        if (!File.Exists(path)) throw new DataException($"data file '{path}' does not exist");
        byte[] bytes;
        try
        {
            // The length first: a device or /proc file reports 0 and could stream forever (/dev/zero).
            long length = new FileInfo(path).Length;
            if (length == 0) throw new DataException($"data file '{path}' is empty (or not a regular file)");
            if (length > 1L << 30) throw new DataException($"data file '{path}' is {length:N0} bytes; at most 1 GiB is supported");
            bytes = new byte[length];
            using var f = File.OpenRead(path);
            f.ReadExactly(bytes);
        }
        catch (FileNotFoundException)
        {
            throw new DataException($"data file '{path}' does not exist (a link to nowhere?)");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new DataException($"data file '{path}' cannot be read ({e.Message.TrimEnd('.')})");
        }
        string text;
        try { text = new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes); }
        catch (DecoderFallbackException e) { throw new DataException($"data file '{path}' is not valid UTF-8 (bad byte at index {e.Index})"); }
        tokenizer ??= CharTokenizer.FromText(text);
        if (tokenizer.VocabSize > ushort.MaxValue) throw new DataException($"data file '{path}' has {tokenizer.VocabSize} distinct characters; at most {ushort.MaxValue} are supported");
        int[] ids;
        try { ids = tokenizer.Encode(text); }
        catch (ConfigException e) { throw new DataException($"data file '{path}': {e.Message}"); }
        int n = (int)(ids.Length * 0.9);
        var train = ids.AsSpan(0, n).ToArray().Select(i => (ushort)i).ToArray();
        var val = ids.AsSpan(n).ToArray().Select(i => (ushort)i).ToArray();
        string sha = Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(bytes)).ToLowerInvariant();
        return new TextCorpus(path, sha, tokenizer, train, val);
    }

    public ushort[] Split(DataSplit split) => split == DataSplit.Train ? Train : Val;

    /// <summary>Checks both splits can hold a (block_size + 1)-token window.</summary>
    public void RequireBlock(int blockSize)
    {
        if (Val.Length < blockSize + 1 || Train.Length < blockSize + 1)
            throw new DataException($"data file '{Path}' is too short: its {(Val.Length < blockSize + 1 ? "validation" : "training")} split has {Math.Min(Val.Length, Train.Length)} tokens, block_size {blockSize} needs at least {blockSize + 1}");
    }
}

public enum DataSplit { Train, Val }

/// <summary>A data file problem the user can fix; the CLI prints the message and exits with code 2.</summary>
public sealed class DataException(string message) : Exception(message);
