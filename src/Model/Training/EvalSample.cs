using DistGpt.Model.Data;

namespace DistGpt.Model.Training;

/// <summary>The text sample logged at every evaluation step (metrics.jsonl's `sample`), so a reader sees what the loss
/// means: <see cref="Length"/> tokens from a newline, temperature 0.8, top-k 200, seeded by the run's seed and the step.
/// Costs a few batch-1 forwards next to the evaluation's eval_iters full batches.</summary>
public sealed class EvalSample(Gpt model, ITokenizer tokenizer, ulong seed) : IDisposable
{
    public const int Length = 200;

    Generator? generator;

    public string Generate(long step)
    {
        generator ??= new Generator(model, tokenizer.VocabSize); // never a padded vocab_size's unused ids
        int[] prompt = NewlineOr0();
        var ids = generator.Generate(prompt, Length, temperature: 0.8f, topK: 200, seed ^ (ulong)step);
        return tokenizer.Decode(ids.Skip(prompt.Length));
    }

    /// <summary>A newline's tokens, or token 0 where the vocabulary has no newline.</summary>
    int[] NewlineOr0()
    {
        try { return tokenizer.Encode("\n") is { Length: > 0 } newline ? newline : [0]; }
        catch (ConfigException) { return [0]; }
    }

    public void Dispose() => generator?.Dispose();
}
