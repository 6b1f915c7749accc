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

    /// <summary>For files we must trust (checkpoint.json): a null where the type has none, a missing constructor field
    /// or an unknown field is an error, not a default.</summary>
    public static readonly JsonSerializerOptions Strict = new(Options)
    {
        RespectNullableAnnotations = true,
        RespectRequiredConstructorParameters = true,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
    };
}
