using System.Text;

namespace DistGpt.Model.Data;

/// <summary>The training data: a UTF-8 text file tokenised by characters and split 90/10 (nanoGPT's shakespeare_char
/// prepare.py, done at load), or a directory of token files (train.bin / val.bin, see <see cref="TokenFiles"/>),
/// memory-mapped. <see cref="Sha256"/> names the data for the check at join: the text file's SHA-256, or the token files'.</summary>
public sealed class Corpus
{
    public string Path { get; }
    public string Sha256 { get; }
    public ITokenizer Tokenizer { get; }
    public TokenSplit Train { get; }
    public TokenSplit Val { get; }
    /// <summary>The largest id in either split: a model needs vocab_size above it.</summary>
    public int MaxTokenId { get; }
    /// <summary>"text" or "token files", for messages.</summary>
    public string Kind { get; }
    public long Tokens => Train.Length + Val.Length;

    /// <summary>A model's vocab_size when none is given: the tokenizer's, GPT-2's padded to a multiple of 64 as nanoGPT's
    /// (50257 → 50304, for the matmuls). Characters are not padded, as nanoGPT's shakespeare_char (65).</summary>
    public int DefaultVocabSize => Tokenizer is CharTokenizer ? Tokenizer.VocabSize : (Tokenizer.VocabSize + 63) / 64 * 64;

    internal Corpus(string path, string sha, ITokenizer tokenizer, TokenSplit train, TokenSplit val, int maxTokenId, string kind) =>
        (Path, Sha256, Tokenizer, Train, Val, MaxTokenId, Kind) = (path, sha, tokenizer, train, val, maxTokenId, kind);

    /// <summary>Loads and checks a text file or a token directory; a problem a user can fix throws
    /// <see cref="DataException"/> naming the path. <paramref name="tokenizer"/> (a checkpoint's) must be the data's.</summary>
    public static Corpus Load(string path, ITokenizer? tokenizer = null) =>
        Directory.Exists(path) ? TokenFiles.Load(path, tokenizer) : LoadText(path, tokenizer);

    /// <summary>The data's SHA-256 without loading it: a text file's bytes, or a token directory's (cached beside it).</summary>
    public static string IdentityOf(string path) =>
        Directory.Exists(path) ? TokenFiles.Identify(path).Sha256 : Sha256OfFile(path);

    static string Sha256OfFile(string path)
    {
        using var f = File.OpenRead(path);
        return Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(f)).ToLowerInvariant();
    }

    static Corpus LoadText(string path, ITokenizer? tokenizer)
    {
        if (!File.Exists(path)) throw new DataException($"data file '{path}' does not exist");
        if (tokenizer != null && tokenizer is not CharTokenizer)
            throw new DataException($"data file '{path}' is text, but the checkpoint's model reads {tokenizer.Name} tokens: pass the token directory it was trained on (made by `distgpt prepare`)");
        byte[] bytes;
        try
        {
            // The length first: a device or /proc file reports 0 and could stream forever (/dev/zero).
            long length = new FileInfo(path).Length;
            if (length == 0) throw new DataException($"data file '{path}' is empty (or not a regular file)");
            if (length > 1L << 30) throw new DataException($"data file '{path}' is {length:N0} bytes; text files of at most 1 GiB are read whole (make token files with `distgpt prepare` for more)");
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
        string text = DecodeUtf8(bytes, path);
        var chars = (CharTokenizer?)tokenizer ?? CharTokenizer.FromText(text);
        if (chars.VocabSize > ushort.MaxValue) throw new DataException($"data file '{path}' has {chars.VocabSize} distinct characters; at most {ushort.MaxValue} are supported");
        int[] ids;
        try { ids = chars.Encode(text); }
        catch (ConfigException e) { throw new DataException($"data file '{path}': {e.Message}"); }
        int n = (int)(ids.Length * 0.9);
        var train = TokenSplit.InMemory(ids.AsSpan(0, n));
        var val = TokenSplit.InMemory(ids.AsSpan(n));
        string sha = Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(bytes)).ToLowerInvariant();
        return new Corpus(path, sha, chars, train, val, ids.Length == 0 ? 0 : ids.Max(), "text");
    }

    internal static string DecodeUtf8(byte[] bytes, string path)
    {
        try { return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes); }
        catch (DecoderFallbackException e) { throw new DataException($"data file '{path}' is not valid UTF-8 (bad byte at index {e.Index})"); }
    }

    public TokenSplit Split(DataSplit split) => split == DataSplit.Train ? Train : Val;

    /// <summary>Checks both splits can hold a (block_size + 1)-token window.</summary>
    public void RequireBlock(int blockSize)
    {
        if (Val.Length < blockSize + 1 || Train.Length < blockSize + 1)
            throw new DataException($"data {(Kind == "text" ? "file" : "directory")} '{Path}' is too short: its {(Val.Length < blockSize + 1 ? "validation" : "training")} split has {Math.Min(Val.Length, Train.Length)} tokens, block_size {blockSize} needs at least {blockSize + 1}");
    }

    /// <summary>Checks a model of <paramref name="vocabSize"/> can read every token and write every id the tokenizer has.</summary>
    public void RequireVocab(int vocabSize)
    {
        if (vocabSize < Tokenizer.VocabSize || vocabSize <= MaxTokenId)
            throw new ConfigException($"--vocab-size {vocabSize} is too small for '{Path}': its {Tokenizer.Name} tokenizer has {Tokenizer.VocabSize} ids and its largest token is {MaxTokenId}");
    }
}

public enum DataSplit { Train, Val }

/// <summary>A data file problem the user can fix; the CLI prints the message and exits with code 2.</summary>
public sealed class DataException(string message) : Exception(message);
