using DistGpt.Contracts.Wire;
using DistGpt.Model.Engine;

namespace DistGpt.Coordinator.Hosting;

/// <summary>Dev mode's parameter memory: the coordinator's weights live in one unlinked /dev/shm region that every local
/// worker maps as its own weights, so a step's weights reach the workers with no copy (AdamW updates them in place
/// between steps, while no worker computes). Without /dev/shm the weights get ordinary memory and each connection its
/// own regions, as before.</summary>
public sealed unsafe class SharedWeights : IDisposable
{
    public SharedMemoryRegion? Region { get; private set; }

    /// <summary>The parameter buffer (FlatParameters' values factory); called once.</summary>
    public NativeBuffer Allocate(long count)
    {
        if (Region != null) throw new InvalidOperationException("the shared weights are already allocated");
        if (SharedMemoryRegion.Directory is not { } dir) return new NativeBuffer(count);
        Region = SharedMemoryRegion.CreateUnlinked(dir, count * sizeof(float));
        System.Runtime.InteropServices.NativeMemory.Clear(Region.Pointer, (nuint)Region.Capacity);
        return NativeBuffer.Over((float*)Region.Pointer, count);
    }

    public void Dispose() => Region?.Dispose();
}
