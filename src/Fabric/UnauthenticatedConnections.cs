using System.Net;

namespace DistGpt.Fabric;

/// <summary>Connections from peers that have not proven who they are yet (a data-plane connection before its admission
/// ticket, an Orleans one before the cluster-token handshake): at most <see cref="Capacity"/> at once, each for at most
/// <see cref="Deadline"/>. One more closes the oldest: a real peer proves itself within milliseconds of connecting, so the
/// oldest are the idle ones. A flood of idle sockets so holds a bounded number of file descriptors, and those the run
/// needs (its members' connections, checkpoint files) stay free.</summary>
public sealed class UnauthenticatedConnections(string listener, Action<string> log)
{
    /// <summary>Time to connect, finish TLS and prove oneself; a worker or silo takes milliseconds.</summary>
    public static readonly TimeSpan Deadline = TimeSpan.FromSeconds(5);

    readonly LinkedList<Entry> pending = new();
    readonly ThrottledLog closures = new(log);

    /// <summary>An eighth of the file descriptors free when the listener starts, from 4 to 64. The coordinator has two such
    /// bounds (its data plane; its silo and gateway ports), so strangers hold at most a quarter of what was free.</summary>
    public int Capacity { get; } = Math.Clamp(FileDescriptors.Free() / 8, 4, 64);

    /// <summary>Counts a new connection; <paramref name="close"/> ends it when it is evicted or its deadline passes, unless
    /// <see cref="Entry.Authenticated"/> came first. Dispose the entry when the connection ends.</summary>
    public Entry Track(EndPoint? remote, Action close)
    {
        var entry = new Entry(this, remote, close);
        Entry? evicted = null;
        lock (pending)
        {
            if (pending.Count >= Capacity)
            {
                evicted = pending.First!.Value;
                Remove(evicted);
            }
            entry.Node = pending.AddLast(entry);
        }
        if (evicted != null) Close(evicted, $"more than {Capacity} connections are waiting to authenticate; the oldest is closed");
        return entry;
    }

    void Close(Entry entry, string why)
    {
        closures.Write($"closed an unauthenticated connection from {entry.Remote} to the {listener}: {why}");
        entry.CloseConnection();
    }

    bool Remove(Entry entry)
    {
        lock (pending)
        {
            if (entry.Node == null) return false;
            pending.Remove(entry.Node);
            entry.Node = null;
        }
        entry.Expiry.Dispose();
        return true;
    }

    public sealed class Entry : IDisposable
    {
        readonly UnauthenticatedConnections owner;
        readonly Action close;

        internal Entry(UnauthenticatedConnections owner, EndPoint? remote, Action close)
        {
            (this.owner, Remote, this.close) = (owner, remote, close);
            Expiry = new Timer(_ =>
            {
                if (owner.Remove(this)) owner.Close(this, $"it proved nothing within {UnauthenticatedConnections.Deadline.TotalSeconds:F0} s");
            }, null, UnauthenticatedConnections.Deadline, Timeout.InfiniteTimeSpan);
        }

        internal LinkedListNode<Entry>? Node { get; set; }
        internal EndPoint? Remote { get; }
        internal Timer Expiry { get; }

        /// <summary>The peer proved itself: no deadline, and it no longer counts.</summary>
        public void Authenticated() => owner.Remove(this);

        public void Dispose() => owner.Remove(this);

        internal void CloseConnection()
        {
            try { close(); }
            catch (Exception e) when (e is ObjectDisposedException or InvalidOperationException or IOException) { }
        }
    }
}
