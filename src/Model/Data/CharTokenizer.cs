using System.Text;

namespace DistGpt.Model.Data;

/// <summary>Character-level vocabulary: the sorted unique Unicode scalar values of the corpus (nanoGPT's shakespeare_char).</summary>
public sealed class CharTokenizer
{
    readonly Dictionary<int, int> idOf = new();

    public IReadOnlyList<int> CodePoints { get; }
    public int VocabSize => CodePoints.Count;

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
