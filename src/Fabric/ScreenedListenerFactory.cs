using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection;

namespace DistGpt.Fabric;

/// <summary>Orleans' silo and gateway listeners, each accepted connection counted as a stranger's the moment it is
/// accepted, before Orleans queues it to the thread pool: its accept loop can outrun the connection middleware by hundreds
/// of sockets, and a process out of file descriptors dies (a thread pool that cannot start a thread). The token
/// handshake (<see cref="ClusterAuthentication.AcceptAsync"/>) marks the connection authenticated.</summary>
public sealed class ScreenedListenerFactory(IConnectionListenerFactory inner, UnauthenticatedConnections strangers) : IConnectionListenerFactory
{
    /// <summary>Wraps every connection listener factory Orleans registered (one for the silo port, one for the gateway).</summary>
    public static void Decorate(IServiceCollection services, UnauthenticatedConnections strangers)
    {
        var registered = services.Where(d => d.ServiceType == typeof(IConnectionListenerFactory) && d.IsKeyedService).ToList();
        if (registered.Count == 0)
            throw new InvalidOperationException("Orleans registered no connection listener factory to screen: has Orleans changed how it listens?");
        foreach (var d in registered)
        {
            services.Remove(d);
            services.Add(new ServiceDescriptor(d.ServiceType, d.ServiceKey, (provider, key) => new ScreenedListenerFactory(Original(d, provider, key), strangers), d.Lifetime));
        }
    }

    static IConnectionListenerFactory Original(ServiceDescriptor d, IServiceProvider provider, object? key) =>
        (IConnectionListenerFactory)(d.KeyedImplementationInstance ?? d.KeyedImplementationFactory?.Invoke(provider, key)
            ?? ActivatorUtilities.CreateInstance(provider, d.KeyedImplementationType!));

    public async ValueTask<IConnectionListener> BindAsync(EndPoint endpoint, CancellationToken cancel = default) =>
        new Listener(await inner.BindAsync(endpoint, cancel), strangers);

    sealed class Listener(IConnectionListener inner, UnauthenticatedConnections strangers) : IConnectionListener
    {
        public EndPoint EndPoint => inner.EndPoint;

        public async ValueTask<ConnectionContext?> AcceptAsync(CancellationToken cancel = default)
        {
            var connection = await inner.AcceptAsync(cancel);
            if (connection == null) return null;
            var stranger = strangers.Track(connection.RemoteEndPoint, connection.Abort);
            connection.Items[typeof(UnauthenticatedConnections.Entry)] = stranger;
            connection.ConnectionClosed.Register(stranger.Dispose); // one refused by TLS or the handshake frees its place at once
            return connection;
        }

        public ValueTask UnbindAsync(CancellationToken cancel = default) => inner.UnbindAsync(cancel);
        public ValueTask DisposeAsync() => inner.DisposeAsync();
    }
}
