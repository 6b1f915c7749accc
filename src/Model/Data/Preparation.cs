using System.Security.Cryptography;
using System.Text;

namespace DistGpt.Model.Data;

/// <summary>nanoGPT's prepare.py scripts as one function: split the text at 90% of its characters (train first, then
/// validation), encode each part, write train.bin / val.bin as uint16 and meta.json. "char" builds the vocabulary from
/// the sorted distinct characters of the whole text (shakespeare_char); "gpt2" uses tiktoken's encode_ordinary (shakespeare).</summary>
public static class Preparation
{
    public sealed record Result(long Characters, long TrainTokens, long ValTokens, int VocabSize);

    public static Result Prepare(string input, string tokenizerName, string outDir, double valFraction)
    {
        if (!(valFraction > 0 && valFraction < 1)) throw new ConfigException($"--val-fraction must be between 0 and 1 (got {valFraction})");
        if (Directory.Exists(input)) throw new DataException($"input '{input}' is a directory, not a text file");
        if (!File.Exists(input)) throw new DataException($"input '{input}' does not exist");
        long length = new FileInfo(input).Length;
        if (length == 0) throw new DataException($"input '{input}' is empty (or not a regular file)");
        if (length > 1L << 30) throw new DataException($"input '{input}' is {length:N0} bytes; prepare reads at most 1 GiB at once (split the corpus and prepare the parts)");
        byte[] bytes;
        try { bytes = File.ReadAllBytes(input); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new DataException($"input '{input}' cannot be read ({e.Message.TrimEnd('.')})"); }
        string text = Corpus.DecodeUtf8(bytes, input);

        // Python's len() and slicing count code points; so does this split, so a surrogate pair is never cut.
        var runes = text.EnumerateRunes().ToArray();
        int cut = (int)(runes.Length * (1.0 - valFraction));
        int cutChars = runes.Take(cut).Sum(r => r.Utf16SequenceLength);
        string train = text[..cutChars], val = text[cutChars..];

        ITokenizer tokenizer = tokenizerName switch
        {
            Tokenizers.Char => CharTokenizer.FromText(text),
            Tokenizers.Gpt2 => Gpt2Tokenizer.Instance,
            _ => throw new ConfigException($"--tokenizer must be {Tokenizers.Char} or {Tokenizers.Gpt2}"),
        };
        if (tokenizer.VocabSize > ushort.MaxValue + 1)
            throw new DataException($"input '{input}' has {tokenizer.VocabSize:N0} distinct characters; uint16 token files hold at most {ushort.MaxValue + 1:N0}");
        int[] trainIds = tokenizer.Encode(train), valIds = tokenizer.Encode(val);
        var chars = tokenizer as CharTokenizer;
        var meta = new TokenFilesMeta(tokenizer.Name, tokenizer.VocabSize, trainIds.Length, valIds.Length, Path.GetFileName(input),
            Convert.ToHexString(SHA256.HashData(bytes)).ToLowerInvariant(), chars?.Itos(), chars?.Stoi());
        try { TokenFiles.Write(outDir, trainIds, valIds, meta); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new DataException($"cannot write the token files into '{outDir}' ({e.Message.TrimEnd('.')})"); }
        return new Result(runes.Length, trainIds.Length, valIds.Length, tokenizer.VocabSize);
    }
}
