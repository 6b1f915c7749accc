using System.Runtime.InteropServices;
using DistGpt.Model.Engine;
using Tensor = TorchSharp.torch.Tensor;
using TorchSharp;
using static TorchSharp.torch;

namespace DistGpt.TorchBackend;

/// <summary>The model's flat weight and gradient buffers as two 1-D float32 tensors on the device. On the CPU they ARE the
/// buffers (tensors over the same memory, no copy): libtorch reads the weights the coordinator wrote and its backward
/// accumulates straight into the gradients the worker sends. On a GPU they are device tensors, filled from the host weights
/// before a step through a pinned staging copy and copied back into the host gradients after it.</summary>
sealed class FlatTensors : IDisposable
{
    public Tensor Values { get; }
    public Tensor Grads { get; }
    readonly Tensor hostValues, hostGrads;
    readonly Tensor? pinnedValues, pinnedGrads; // CUDA only: page-locked staging, so the transfers run at full speed

    public FlatTensors(NativeBuffer values, NativeBuffer grads, Device device)
    {
        hostValues = Over(values);
        hostGrads = Over(grads);
        if (device.type == DeviceType.CPU)
        {
            Values = hostValues;
            Grads = hostGrads;
            return;
        }
        pinnedValues = Pinned(values.Length);
        pinnedGrads = Pinned(grads.Length);
        Values = torch.empty(values.Length, ScalarType.Float32, device);
        Grads = torch.zeros(grads.Length, ScalarType.Float32, device);
    }

    public bool OnHost => pinnedValues is null;

    /// <summary>Before a step: the host weights (just received) onto the device.</summary>
    public void UploadValues()
    {
        if (OnHost) return;
        pinnedValues!.copy_(hostValues);
        Values.copy_(pinnedValues, nonBlocking: true);
    }

    /// <summary>After a step's backward: the device's gradient sum into the host buffer the worker sends.</summary>
    public void DownloadGrads()
    {
        if (OnHost) return;
        pinnedGrads!.copy_(Grads); // synchronises with the backward on the device's stream
        hostGrads.copy_(pinnedGrads);
    }

    static Tensor Pinned(long length)
    {
        using var pageable = torch.empty(length, ScalarType.Float32);
        return pageable.pin_memory();
    }

    /// A tensor over memory owned by the NativeBuffer (which outlives it): libtorch never frees it.
    static unsafe Tensor Over(NativeBuffer buffer)
    {
        long length = buffer.Length;
        IntPtr handle = THSTensor_new((IntPtr)buffer.Pointer, KeepMemory, (IntPtr)(&length), 1,
            (sbyte)ScalarType.Float32, (sbyte)ScalarType.Float32, (int)DeviceType.CPU, 0, false);
        if (handle == IntPtr.Zero) torch.CheckForErrors();
        return Tensor.UnsafeCreateTensor(handle);
    }

    delegate void Deleter(IntPtr memory);

    static readonly Deleter KeepMemory = _ => { }; // static: libtorch holds its function pointer for the tensor's life

    [DllImport("LibTorchSharp")]
    static extern IntPtr THSTensor_new(IntPtr data, Deleter deleter, IntPtr sizes, int dimensions, sbyte type, sbyte dtype,
        int deviceType, int deviceIndex, [MarshalAs(UnmanagedType.U1)] bool requiresGrad);

    public void Dispose()
    {
        if (!OnHost)
        {
            Values.Dispose();
            Grads.Dispose();
            pinnedValues!.Dispose();
            pinnedGrads!.Dispose();
        }
        hostValues.Dispose();
        hostGrads.Dispose();
    }
}
