using System.Globalization;
using System.Text;

namespace DistGpt.Contracts;

/// <summary>Strings from the other side of a connection (a join request's fields, a peer's reasons and exception messages,
/// what a coordinator's grain returns to `status`), made safe for a log line, a span or the console: every control or
/// invisible formatting character (newline, ESC, bidi override…) becomes a JSON-style escape, so no line can be forged and no
/// terminal driven, and the length is capped.</summary>
public static class Untrusted
{
    public const int DefaultMaxLength = 200;
    /// <summary>For identifiers (run ids, config hashes, worker and silo names): DistGpt's own are at most 64 characters.</summary>
    public const int IdLength = 64;

    /// <summary>The value in double quotes, escaped and cut: "admin\n[coordinator] …" (null: null).</summary>
    public static string Quote(string? value, int maxLength = DefaultMaxLength) =>
        value == null ? "null" : $"\"{Escape(value, maxLength, quoted: true)}\"";

    /// <summary>Escaped and cut, without quotes: for a message that carries untrusted parts.</summary>
    public static string Escape(string? text, int maxLength = DefaultMaxLength) => Escape(text ?? "", maxLength, quoted: false);

    static string Escape(string text, int maxLength, bool quoted)
    {
        int keep = Math.Min(text.Length, maxLength);
        if (keep > 0 && keep < text.Length && char.IsHighSurrogate(text[keep - 1])) keep--; // never half a pair
        var s = new StringBuilder(keep + 8);
        for (int i = 0; i < keep; i++)
        {
            char c = text[i];
            if (char.IsSurrogatePair(text, i))
            {
                s.Append(c).Append(text[++i]);
                continue;
            }
            switch (c)
            {
                case '\n': s.Append("\\n"); break;
                case '\r': s.Append("\\r"); break;
                case '\t': s.Append("\\t"); break;
                case '"' or '\\' when quoted: s.Append('\\').Append(c); break;
                default:
                    if (Invisible(c)) s.Append("\\u").Append(((int)c).ToString("x4"));
                    else s.Append(c);
                    break;
            }
        }
        if (keep < text.Length) s.Append('…');
        return s.ToString();
    }

    static bool Invisible(char c) => CharUnicodeInfo.GetUnicodeCategory(c) is UnicodeCategory.Control or UnicodeCategory.Format
        or UnicodeCategory.LineSeparator or UnicodeCategory.ParagraphSeparator or UnicodeCategory.Surrogate;
}
