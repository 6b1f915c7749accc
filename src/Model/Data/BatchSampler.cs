using DistGpt.Model.Engine;

namespace DistGpt.Model.Data;

/// <summary>Random (x, y) windows as nanoGPT's get_batch, but counter-based: sequence i of the global batch of
/// step s starts at hash(seed, split, s, i) mod (len - T). The global batch of a step therefore does not depend on how
/// many workers share it, and worker r of N reads only sequences [r B/N, (r+1) B/N). Resuming at step s replays exactly.</summary>
public static class BatchSampler
{
    /// <summary>Checks token windows given by a coordinator: <paramref name="sequences"/> × (block + 1) ids, each inside the vocabulary.</summary>
    public static void CheckWindows(ReadOnlySpan<int> windows, int sequences, int blockSize, int vocabSize)
    {
        if (windows.Length != sequences * (blockSize + 1)) throw new ArgumentException($"expected {sequences * (blockSize + 1)} window tokens, got {windows.Length}");
        foreach (int id in windows)
            if ((uint)id >= (uint)vocabSize) throw new ArgumentException($"token id {id} is outside the vocabulary");
    }

    const ulong TrainStream = 0x7472, ValStream = 0x76616c, EvalStream = 0x6576;

    public static long Start(ulong seed, DataSplit split, long step, long sequence, long dataLength, int blockSize)
    {
        ulong stream = split == DataSplit.Train ? TrainStream : ValStream;
        return Rng.Below(Rng.Key(seed, stream, (ulong)step, (ulong)sequence), dataLength - blockSize);
    }

    /// <summary>Fills tokens/targets (count × T, row-major) with sequences [first, first + count) of the step's batch.</summary>
    public static void Fill(TokenSplit data, ulong seed, DataSplit split, long step, long first, int count, int blockSize, int[] tokens, int[] targets)
    {
        for (int b = 0; b < count; b++)
        {
            long start = Start(seed, split, step, first + b, data.Length, blockSize);
            CopyWindow(data, start, b, blockSize, tokens, targets);
        }
    }

    /// <summary>Row <paramref name="row"/> of tokens/targets = the window data[start .. start + T] and its shift by one.</summary>
    public static void CopyWindow(TokenSplit data, long start, int row, int blockSize, int[] tokens, int[] targets)
    {
        var window = data.Slice(start, blockSize + 1);
        for (int t = 0; t < blockSize; t++)
        {
            tokens[row * blockSize + t] = window[t];
            targets[row * blockSize + t] = window[t + 1];
        }
    }

    /// <summary>Rows 0..count of tokens/targets = windows [first, first + count) of <paramref name="windows"/> (each block + 1
    /// ids, as <see cref="Windows"/> makes them) and their shift by one.</summary>
    public static void FillFromWindows(ReadOnlySpan<int> windows, int first, int count, int blockSize, Span<int> tokens, Span<int> targets)
    {
        for (int b = 0; b < count; b++)
        {
            var window = windows.Slice((first + b) * (blockSize + 1), blockSize + 1);
            window[..blockSize].CopyTo(tokens.Slice(b * blockSize, blockSize));
            window[1..].CopyTo(targets.Slice(b * blockSize, blockSize));
        }
    }

    /// <summary>Sequences [first, first + count) as raw windows of block_size + 1 tokens (inputs and the shifted targets).</summary>
    public static int[] Windows(TokenSplit data, ulong seed, long step, long first, int count, int blockSize)
    {
        var windows = new int[count * (blockSize + 1)];
        for (int b = 0; b < count; b++)
        {
            var window = data.Slice(Start(seed, DataSplit.Train, step, first + b, data.Length, blockSize), blockSize + 1);
            for (int t = 0; t <= blockSize; t++) windows[b * (blockSize + 1) + t] = window[t];
        }
        return windows;
    }

    /// <summary>The key for evaluation batches: distinct from training steps, fixed per (step, eval iteration).</summary>
    public static long EvalStep(long step, int evalIter) => (long)Rng.Key(EvalStream, (ulong)step, (ulong)evalIter) & long.MaxValue;
}
