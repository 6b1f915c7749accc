using System.Security.Cryptography;
using System.Text.Json;
using DistGpt.Model;
using DistGpt.Model.Data;
using Xunit;

namespace DistGpt.Tests.Data;

/// <summary>`distgpt prepare`'s token files against nanoGPT's and tiktoken's (fixtures made by
/// tests/fixtures/make_gpt2_fixture.mjs with tiktoken itself), and token directories as training data.</summary>
public sealed class TokenFilesTests : IDisposable
{
    readonly TempDirectory temp = new("tokens");

    public void Dispose() => temp.Dispose();

    static JsonElement Fixture => JsonDocument.Parse(File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "fixtures", "gpt2_tokens.json"))).RootElement;

    static string Sha256(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path))).ToLowerInvariant();

    [Fact]
    public void Gpt2EncodingEqualsTiktokensTokenForToken()
    {
        var cases = Fixture.GetProperty("cases").EnumerateArray().ToList();
        Assert.True(cases.Count >= 15);
        foreach (var c in cases)
        {
            string text = c.GetProperty("text").GetString()!;
            int[] expected = c.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            Assert.True(expected.SequenceEqual(Gpt2Tokenizer.Instance.Encode(text)), $"GPT-2 ids differ from tiktoken's for {JsonSerializer.Serialize(text)}");
            Assert.Equal(text, Gpt2Tokenizer.Instance.Decode(expected));
        }
    }

    [Fact]
    public void PrepareGpt2MakesTheTokenFilesOfNanoGptsShakespearePrepare()
    {
        string dir = temp.Combine("shakespeare");
        var result = Preparation.Prepare(TestData.CorpusPath(), Tokenizers.Gpt2, dir, 0.1);
        var expected = Fixture.GetProperty("shakespeare");
        Assert.Equal(expected.GetProperty("characters").GetInt64(), result.Characters);
        foreach (var (split, file) in new[] { ("train", "train.bin"), ("val", "val.bin") })
        {
            Assert.Equal(expected.GetProperty(split).GetProperty("tokens").GetInt64() * 2, new FileInfo(Path.Combine(dir, file)).Length);
            Assert.Equal(expected.GetProperty(split).GetProperty("sha256").GetString(), Sha256(Path.Combine(dir, file)));
        }
        var meta = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, "meta.json"))).RootElement;
        Assert.Equal("gpt2", meta.GetProperty("tokenizer").GetString());
        Assert.Equal(50257, meta.GetProperty("vocab_size").GetInt32());
        Assert.Equal(Sha256(TestData.CorpusPath()), meta.GetProperty("source_sha256").GetString());
        var corpus = Corpus.Load(dir);
        Assert.Equal(50257, corpus.Tokenizer.VocabSize);
        Assert.Equal(301966, corpus.Train.Length);
    }

    [Fact]
    public void PrepareCharMakesShakespeareCharsFilesWithTheSplitsTheTextFileGives()
    {
        string dir = temp.Combine("shakespeare_char");
        var result = Preparation.Prepare(TestData.CorpusPath(), Tokenizers.Char, dir, 0.1);
        Assert.Equal((1003854L, 111540L, 65), (result.TrainTokens, result.ValTokens, result.VocabSize)); // nanoGPT's prepare.py prints these
        var fromDir = Corpus.Load(dir);
        var fromText = TestData.Corpus;
        Assert.Equal(fromText.Tokenizer.Vocabulary, fromDir.Tokenizer.Vocabulary);
        foreach (var split in new[] { DataSplit.Train, DataSplit.Val })
        {
            var a = fromText.Split(split);
            var b = fromDir.Split(split);
            Assert.Equal(a.Length, b.Length);
            Assert.True(a.Slice(0, (int)a.Length).SequenceEqual(b.Slice(0, (int)b.Length)), $"{split} tokens differ");
        }
        var meta = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, "meta.json"))).RootElement;
        Assert.Equal("\n", meta.GetProperty("itos").GetProperty("0").GetString());
        Assert.Equal(0, meta.GetProperty("stoi").GetProperty("\n").GetInt32());
    }

    /// <summary>Token files written directly, as nanoGPT's numpy tofile does.</summary>
    string WriteTokens(string name, ushort[] train, ushort[] val, string? meta)
    {
        string dir = temp.Subdirectory(name);
        File.WriteAllBytes(Path.Combine(dir, "train.bin"), System.Runtime.InteropServices.MemoryMarshal.AsBytes(train.AsSpan()).ToArray());
        File.WriteAllBytes(Path.Combine(dir, "val.bin"), System.Runtime.InteropServices.MemoryMarshal.AsBytes(val.AsSpan()).ToArray());
        if (meta != null) File.WriteAllText(Path.Combine(dir, "meta.json"), meta);
        return dir;
    }

    static string CharMeta(int vocab, long train, long val) =>
        JsonSerializer.Serialize(new { tokenizer = "char", vocab_size = vocab, train_tokens = train, val_tokens = val,
            itos = Enumerable.Range(0, vocab).ToDictionary(i => i.ToString(), i => ((char)('A' + i)).ToString()) });

    [Fact]
    public void ADirectoryWithoutMetaJsonIsReadAsGpt2TokensAsNanoGptDoes()
    {
        var corpus = Corpus.Load(WriteTokens("nometa", [1, 2, 3, 50256], [4, 5], null));
        Assert.Equal("gpt2", corpus.Tokenizer.Name);
        Assert.Equal(50256, corpus.MaxTokenId);
        Assert.Equal((4L, 2L), (corpus.Train.Length, corpus.Val.Length));
        Assert.Equal((ushort)50256, corpus.Train[3]);
    }

    [Fact]
    public void BadTokenDirectoriesAreDataExceptionsNamingTheProblem()
    {
        void Refused(string dir, string why)
        {
            var e = Assert.Throws<DataException>(() => Corpus.Load(dir));
            Assert.Contains(dir, e.Message);
            Assert.Contains(why, e.Message);
        }
        Refused(WriteTokens("toolarge", [1, 2, 50257], [1], null), "token id 50257");
        Refused(WriteTokens("charrange", [1, 2, 9], [1], CharMeta(8, 3, 1)), "token id 9");
        Refused(WriteTokens("count", [1, 2, 3], [1], CharMeta(8, 4, 1)), "truncated");
        Refused(WriteTokens("badjson", [1, 2, 3], [1], "{\"tokenizer\": \"char\""), "meta.json");
        Refused(WriteTokens("unknown", [1, 2, 3], [1], "{\"tokenizer\":\"bpe9\",\"vocab_size\":9,\"train_tokens\":3,\"val_tokens\":1}"), "unknown tokenizer 'bpe9'");
        Refused(WriteTokens("wrongvocab", [1, 2, 3], [1], "{\"tokenizer\":\"gpt2\",\"vocab_size\":100,\"train_tokens\":3,\"val_tokens\":1}"), "vocab_size 100");

        string pkl = WriteTokens("pkl", [1, 2, 3], [1], null);
        File.WriteAllBytes(Path.Combine(pkl, "meta.pkl"), [0x80, 4]);
        Refused(pkl, "meta.pkl");

        string odd = WriteTokens("odd", [1, 2, 3], [1], null);
        File.AppendAllText(Path.Combine(odd, "val.bin"), "x");
        Refused(odd, "odd number of bytes");

        string noVal = WriteTokens("noval", [1, 2, 3], [1], null);
        File.Delete(Path.Combine(noVal, "val.bin"));
        Refused(noVal, "no val.bin");
    }

    [Fact]
    public void TheDataIdentityIsCachedBesideTheFilesAndRecomputedWhenAFileChanges()
    {
        string dir = WriteTokens("cache", [1, 2, 3, 4], [5, 6], null);
        var first = TokenFiles.Identify(dir);
        byte[] both = [.. File.ReadAllBytes(Path.Combine(dir, "train.bin")), .. File.ReadAllBytes(Path.Combine(dir, "val.bin"))];
        Assert.Equal(Convert.ToHexString(SHA256.HashData(both)).ToLowerInvariant(), first.Sha256);
        Assert.Equal(6, first.MaxTokenId);

        // The cache is what a second start reads: a planted value comes back, so the files were not read again.
        string cache = Path.Combine(dir, TokenFiles.IdentityFile);
        File.WriteAllText(cache, File.ReadAllText(cache).Replace(first.Sha256, new string('a', 64)));
        Assert.Equal(new string('a', 64), TokenFiles.Identify(dir).Sha256);

        // Same size, new content and mtime: hashed afresh.
        string train = Path.Combine(dir, "train.bin");
        File.WriteAllBytes(train, [9, 0, 2, 0, 3, 0, 4, 0]);
        File.SetLastWriteTimeUtc(train, DateTime.UtcNow.AddMinutes(1));
        var again = TokenFiles.Identify(dir);
        Assert.NotEqual(new string('a', 64), again.Sha256);
        Assert.NotEqual(first.Sha256, again.Sha256);
        Assert.Equal(9, again.MaxTokenId);

    }

    [Fact]
    public void PaddedLogitsAreNeverSampled()
    {
        // Rows 0..99 of wte are zero, so those logits are 0; the padding rows are random, so about half of their logits
        // are positive and, if they could be drawn, would be drawn most of the time.
        using var model = new Gpt(new GptConfig(128, 8, 1, 2, 16, 0f, false));
        model.Initialize(3);
        var wte = model.Parameters.ValuesOf(model.Parameters.Slot("transformer.wte.weight"));
        wte[..(100 * 16)].Clear();
        for (int i = 100 * 16; i < wte.Length; i++) wte[i] *= 200;
        using (var unlimited = new Generator(model))
            Assert.Contains(unlimited.Generate([1], 40, 1f, 0, 7).Skip(1), id => id >= 100); // the control: padding wins when allowed
        using var limited = new Generator(model, tokenizerVocab: 100);
        Assert.All(limited.Generate([1], 40, 1f, 0, 7).Skip(1), id => Assert.InRange(id, 0, 99));
    }
}
