namespace DistGpt.WorkerSilo;

/// <summary>How a worker silo finds and joins its coordinator.</summary>
public sealed record WorkerOptions
{
    public required Uri Coordinator { get; init; }
    public required string Name { get; init; }
    public int Threads { get; init; } = Environment.ProcessorCount;
    /// <summary>This node's copy of the corpus; null to receive each step's token windows from the coordinator.</summary>
    public string? DataPath { get; init; }
    public string? ClusterToken { get; init; }
    /// <summary>Give up when the coordinator cannot be reached for this long (at start, or after it went away).</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>Refuse to join a run whose model-config hash differs (optional pin for cluster deployments).</summary>
    public string? ExpectConfigHash { get; init; }
    public string? TlsCaPath { get; init; }
    /// <summary>TLS between silos (an https:// coordinator): this worker's silo certificate and the cluster's CA.</summary>
    public Fabric.FabricTls? SiloTls { get; init; }
    /// <summary>Runs on the coordinator's host: accept its offer to move payloads through /dev/shm instead of the socket.</summary>
    public bool SharedMemory { get; init; }
    public Action<string> Log { get; init; } = Console.WriteLine;
    /// <summary>What computes this worker's gradients (--backend, --device): the engine, or the TorchSharp backend.</summary>
    public Model.Training.IGradientBackend Backend { get; init; } = Model.Training.EngineBackend.Instance;
    /// <summary>This worker's Orleans silo port (0: a free one, chosen at each start), and the coordinator's (the primary
    /// of the cluster's membership).</summary>
    public int SiloPort { get; init; }
    public required int CoordinatorSiloPort { get; init; }
    /// <summary>The address this worker's silo and peer plane advertise; null: the one it reaches the coordinator from.</summary>
    public System.Net.IPAddress? Advertise { get; init; }
    /// <summary>The peer plane's port with parameter shards (0: a free one, chosen at each join).</summary>
    public int PeerPort { get; init; }
}
