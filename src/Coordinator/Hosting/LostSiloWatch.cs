using DistGpt.Coordinator.Grains;
using Orleans.Runtime;

namespace DistGpt.Coordinator.Hosting;

/// <summary>Orleans membership as a failure detector for the run: when a worker's silo is declared dead (or leaves), that
/// worker is lost, whatever its data-plane connection still says. A restarted worker has a new silo address, so its new
/// membership in the run is not touched by its old silo's death.</summary>
public static class LostSiloWatch
{
    public static async Task RunAsync(IClusterMembershipService cluster, RunMembership membership, Action<string> log, CancellationToken stop)
    {
        try
        {
            await foreach (var snapshot in cluster.MembershipUpdates.WithCancellation(stop))
                foreach (var silo in snapshot.Members.Values.Where(m => m.Status is SiloStatus.Dead or SiloStatus.ShuttingDown or SiloStatus.Stopping))
                {
                    string address = silo.SiloAddress.ToParsableString();
                    foreach (var worker in membership.Members().Where(w => w.Silo == address))
                        worker.Lose($"Orleans membership declared its silo {silo.SiloAddress} {silo.Status.ToString().ToLowerInvariant()}");
                }
        }
        catch (OperationCanceledException) { }
        catch (Exception e) { log($"membership watch ended: {e.Message}"); }
    }
}
