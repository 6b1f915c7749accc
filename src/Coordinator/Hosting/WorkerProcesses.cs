using System.Diagnostics;

namespace DistGpt.Coordinator.Hosting;

/// <summary>Dev mode's supervisor: starts `distgpt worker` child processes, relays their output, restarts a crashed one
/// (a bounded number of times) or reports it, and kills every child when the run ends or the parent exits.</summary>
public sealed class WorkerProcesses : IDisposable
{
    readonly List<(string Name, Process Process)> children = new();
    readonly object gate = new();
    readonly Func<string, ProcessStartInfo> startInfo;
    readonly int maxRestarts;
    int restarts;
    bool stopping;

    public WorkerProcesses(Func<string, ProcessStartInfo> startInfo, int maxRestarts)
    {
        (this.startInfo, this.maxRestarts) = (startInfo, maxRestarts);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => Dispose();
    }

    /// <summary>Called when a child exits unexpectedly and will not be restarted.</summary>
    public event Action<string>? Failed;

    public IReadOnlyList<(string Name, int Pid)> Running
    {
        get { lock (gate) return children.Where(c => !c.Process.HasExited).Select(c => (c.Name, c.Process.Id)).ToList(); }
    }

    /// <summary>The command line that runs this same distgpt build (apphost, or `dotnet distgpt.dll`).</summary>
    public static ProcessStartInfo SelfCommand(IEnumerable<string> args)
    {
        string exe = Environment.ProcessPath!;
        var info = new ProcessStartInfo(exe) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        if (Path.GetFileNameWithoutExtension(exe) == "dotnet") info.ArgumentList.Add(typeof(WorkerProcesses).Assembly.Location);
        foreach (var a in args) info.ArgumentList.Add(a);
        return info;
    }

    public void Start(string name)
    {
        var process = new Process { StartInfo = startInfo(name), EnableRaisingEvents = true };
        process.OutputDataReceived += (_, e) => { if (e.Data != null) Console.WriteLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data != null) Console.Error.WriteLine(e.Data); };
        process.Exited += (_, _) => OnExited(name, process);
        lock (gate)
        {
            if (stopping) return;
            process.Start();
            children.Add((name, process));
        }
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
    }

    void OnExited(string name, Process process)
    {
        int code = process.ExitCode;
        bool restart;
        lock (gate)
        {
            children.RemoveAll(c => c.Process == process);
            if (stopping || code == 0) return;
            restart = restarts < maxRestarts;
            if (restart) restarts++;
        }
        string what = $"worker process '{name}' (pid {process.Id}) exited with code {code}";
        if (restart)
        {
            Console.WriteLine($"[dev] {what}; restarting it ({restarts} of at most {maxRestarts} restarts)");
            Start(name);
        }
        else Failed?.Invoke(maxRestarts > 0 ? $"{what} and the restart budget ({maxRestarts}) is used up" : what);
    }

    public void Kill(string name)
    {
        lock (gate)
            foreach (var c in children.Where(c => c.Name == name)) c.Process.Kill(entireProcessTree: true);
    }

    public void Dispose()
    {
        List<Process> all;
        lock (gate)
        {
            stopping = true;
            all = children.Select(c => c.Process).ToList();
        }
        foreach (var p in all)
        {
            try
            {
                if (!p.WaitForExit(TimeSpan.FromSeconds(5))) p.Kill(entireProcessTree: true);
            }
            catch (InvalidOperationException) { }
        }
    }
}
