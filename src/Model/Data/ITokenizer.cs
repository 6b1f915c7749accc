namespace DistGpt.Model.Data;

/// <summary>Text to token ids and back. Two kinds: <see cref="CharTokenizer"/> (nanoGPT's shakespeare_char) and
/// <see cref="Gpt2Tokenizer"/> (tiktoken's GPT-2 BPE, nanoGPT's shakespeare and openwebtext).</summary>
public interface ITokenizer
{
    /// <summary>"char" or "gpt2": what checkpoints and meta.json record.</summary>
    string Name { get; }

    /// <summary>Ids are in [0, VocabSize); a model's vocab_size may be larger (padded), those logits are never sampled.</summary>
    int VocabSize { get; }

    /// <summary>What else a checkpoint needs to rebuild the tokenizer: the characters for "char", empty for "gpt2".</summary>
    string Vocabulary { get; }

    int[] Encode(string text);

    string Decode(IEnumerable<int> ids);
}

public static class Tokenizers
{
    public const string Char = "char", Gpt2 = "gpt2";

    /// <summary>Rebuilds a tokenizer from what a checkpoint or meta.json recorded.</summary>
    public static ITokenizer Create(string name, string vocabulary) => name switch
    {
        Char => CharTokenizer.FromCharacters(vocabulary),
        Gpt2 => Gpt2Tokenizer.Instance,
        _ => throw new ConfigException(name.Length <= 32 && name.All(char.IsAsciiLetterOrDigit)
            ? $"unknown tokenizer '{name}' (expected {Char} or {Gpt2})" : $"unknown tokenizer (expected {Char} or {Gpt2})"),
    };
}
