using System.Text.Json;
using System.Text.Json.Serialization;

namespace DistGpt.Model.IO;

/// <summary>One JSON style for every file we write: snake_case names as nanoGPT's, so `n_embd`, `val_loss`.</summary>
public static class Json
{
    public static readonly JsonSerializerOptions Options = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public static readonly JsonSerializerOptions Indented = new(Options) { WriteIndented = true };
}
