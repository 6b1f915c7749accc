using System.Threading.Channels;
using DistGpt.Contracts;
using DistGpt.Contracts.Wire;
using DistGpt.Model.Engine;
using DistGpt.Model.Training;

namespace DistGpt.WorkerSilo;

/// <summary>Streams one step's gradient sum to the coordinator bucket by bucket while the backward pass is still running
/// (as PyTorch DDP overlaps its bucket all-reduces with the backward): the compute threads report each bucket as it
/// becomes final, and this sends the buckets in plan order, from the end of the buffer to its start, each in its own
/// GradientsBucket frame (narrowed to bfloat16 when the run says so).</summary>
/// <param name="narrowed">for bf16, a buffer of 2 bytes per gradient value to narrow into (kept by the caller across steps)</param>
sealed class BucketUploader(FrameChannel channel, IReadOnlyList<GradientBucket> plan, NativeBuffer grads, WireDType dtype,
    byte[]? narrowed, Func<GradientBucket, GradientsBucket> header)
{
    readonly Channel<int> ready = Channel.CreateUnbounded<int>(new UnboundedChannelOptions { SingleReader = true });

    public int Count => plan.Count;

    /// <summary>Buckets whose frame has been handed to the socket.</summary>
    public int Sent { get; private set; }

    /// <summary>Called from a compute thread: the bucket's range of the gradients is final.</summary>
    public void Ready(GradientBucket bucket) => ready.Writer.TryWrite(bucket.Index);

    /// <summary>The computation failed: stop waiting for buckets.</summary>
    public void Abandon(Exception error) => ready.Writer.TryComplete(error);

    /// <summary>Sends every bucket, in plan order, as they become ready. <paramref name="beforeSend"/> lets the fault
    /// injection tamper with a bucket (index, payload) or stall.</summary>
    public async Task RunAsync(Func<int, ReadOnlyMemory<byte>, ReadOnlyMemory<byte>>? beforeSend, CancellationToken cancel)
    {
        var arrived = new bool[plan.Count];
        while (Sent < plan.Count)
        {
            arrived[await ready.Reader.ReadAsync(cancel)] = true;
            while (Sent < plan.Count && arrived[Sent])
            {
                var bucket = plan[Sent];
                var payload = Encode(bucket);
                if (beforeSend != null) payload = beforeSend(bucket.Index, payload);
                await channel.SendAsync(MessageKind.GradientsBucket, header(bucket), cancel, payload);
                Sent++;
            }
        }
    }

    ReadOnlyMemory<byte> Encode(GradientBucket b) => Encode(grads, b.Offset, b.Count, dtype, narrowed);

    /// <summary>Values [offset, offset + count) of the gradients in the wire dtype: their own float32 bytes, or narrowed to
    /// bfloat16 into the same range of <paramref name="narrowed"/> (2 bytes per gradient value).</summary>
    internal static ReadOnlyMemory<byte> Encode(NativeBuffer grads, long offset, long count, WireDType dtype, byte[]? narrowed)
    {
        int bytes = checked((int)count * dtype.Size());
        if (dtype == WireDType.Fp32) return NativeMemoryManager.Bytes(grads).Slice(checked((int)offset * sizeof(float)), bytes);
        var target = narrowed!.AsMemory(checked((int)offset * sizeof(ushort)), bytes);
        BFloat16.Narrow(grads.Span.Slice((int)offset, (int)count), System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(target.Span));
        return target;
    }
}
