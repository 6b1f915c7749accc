using System.Text;

namespace DistGpt.Model.Data;

/// <summary>Character-level vocabulary: the sorted unique Unicode scalar values of the corpus (nanoGPT's shakespeare_char).</summary>
public sealed class CharTokenizer : ITokenizer
{
    readonly Dictionary<int, int> idOf = new();

    public IReadOnlyList<int> CodePoints { get; }
    public int VocabSize => CodePoints.Count;
    public string Name => Tokenizers.Char;
    public string Vocabulary => Characters;

    public CharTokenizer(IEnumerable<int> codePoints)
    {
        CodePoints = codePoints.Distinct().Order().ToArray();
        for (int i = 0; i < CodePoints.Count; i++) idOf[CodePoints[i]] = i;
    }

    public static CharTokenizer FromText(string text) =>
        new(text.EnumerateRunes().Select(r => r.Value));

    /// <summary>The vocabulary as a string of its characters, in id order (what the checkpoint stores).</summary>
    public string Characters => string.Concat(CodePoints.Select(cp => new Rune(cp).ToString()));

    public static CharTokenizer FromCharacters(string characters) => FromText(characters);

    /// <summary>From nanoGPT's itos (id → character, ids as strings): every id 0..n-1 once, one character each, in
    /// code-point order as nanoGPT's prepare.py sorts them (so the ids mean what they meant there).</summary>
    public static CharTokenizer FromItos(IReadOnlyDictionary<string, string> itos)
    {
        var characters = new System.Text.StringBuilder();
        for (int id = 0; id < itos.Count; id++)
        {
            if (!itos.TryGetValue(id.ToString(System.Globalization.CultureInfo.InvariantCulture), out var c) || c.EnumerateRunes().Count() != 1)
                throw new ConfigException($"'itos' must map every id 0..{itos.Count - 1} to one character (id {id} does not)");
            characters.Append(c);
        }
        var tokenizer = FromCharacters(characters.ToString());
        if (tokenizer.Characters != characters.ToString())
            throw new ConfigException("'itos' is not in code-point order or repeats a character, so its ids would not be this tokenizer's");
        return tokenizer;
    }

    /// <summary>nanoGPT's meta.pkl maps: id → character and character → id.</summary>
    public IReadOnlyDictionary<string, string> Itos() =>
        CodePoints.Select((cp, id) => (id, cp)).ToDictionary(p => p.id.ToString(System.Globalization.CultureInfo.InvariantCulture), p => new Rune(p.cp).ToString());

    public IReadOnlyDictionary<string, int> Stoi() =>
        CodePoints.Select((cp, id) => (id, cp)).ToDictionary(p => new Rune(p.cp).ToString(), p => p.id);

    public int[] Encode(string text)
    {
        var ids = new List<int>(text.Length);
        foreach (var rune in text.EnumerateRunes())
        {
            if (!idOf.TryGetValue(rune.Value, out int id))
                throw new ConfigException($"character '{rune}' (U+{rune.Value:X4}) is not in the model's vocabulary");
            ids.Add(id);
        }
        return ids.ToArray();
    }

    public string Decode(IEnumerable<int> ids)
    {
        var sb = new StringBuilder();
        foreach (int id in ids) sb.Append(new Rune(CodePoints[id]).ToString());
        return sb.ToString();
    }

    public string Hash() =>
        Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes(Characters)), 0, 8).ToLowerInvariant();
}
