namespace DistGpt.Contracts;

public sealed class WorkerLostException(string worker, string reason, Exception? inner = null)
    : Exception($"worker '{worker}' lost: {reason}", inner)
{
    public string Worker { get; } = worker;
    public string Reason { get; } = reason;
}
