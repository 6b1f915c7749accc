using Orleans.Placement;
using Orleans.Runtime;
using Orleans.Runtime.Placement;

namespace DistGpt.Fabric;

/// <summary>Activates a grain on the silo whose name is the grain's key: a worker grain on its own worker's silo, the
/// coordinator grain on the coordinator's. (Orleans' role placement keys on the assembly name and prefer-local placement
/// on whoever calls first; neither pins a grain to one named node.)</summary>
[Serializable, GenerateSerializer, Immutable, SuppressReferenceTracking]
public sealed class SiloNamedByKeyPlacement : PlacementStrategy
{
    public static SiloNamedByKeyPlacement Instance { get; } = new();
}

[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class SiloNamedByKeyPlacementAttribute() : PlacementAttribute(SiloNamedByKeyPlacement.Instance);

public sealed class SiloNamedByKeyPlacementDirector(IClusterMembershipService membership) : IPlacementDirector
{
    public Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        string name = target.GrainIdentity.Key.ToString()!;
        var compatible = context.GetCompatibleSilos(target);
        var silo = membership.CurrentSnapshot.Members.Values
            .Where(m => m.Status == SiloStatus.Active && m.Name == name && compatible.Contains(m.SiloAddress))
            .Select(m => m.SiloAddress)
            .OrderByDescending(a => a.Generation) // a restarted node's newest silo
            .FirstOrDefault();
        return silo != null ? Task.FromResult(silo)
            : throw new OrleansException($"no active silo named '{name}' to place {target.GrainIdentity} on");
    }
}
