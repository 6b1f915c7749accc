using Xunit;

namespace DistGpt.Tests.Data;

/// <summary>A memory cgroup of its own (v1's memory controller, or v2's memory.max) with a hard limit, for running a
/// process under less memory than its data. Needs root and a writable cgroup hierarchy.</summary>
public sealed class MemoryCgroup : IDisposable
{
    const string V1Root = "/sys/fs/cgroup/memory", V2Root = "/sys/fs/cgroup";
    readonly string dir;
    readonly bool v2;

    MemoryCgroup(string dir, bool v2) => (this.dir, this.v2) = (dir, v2);

    public string ProcsFile => Path.Combine(dir, "cgroup.procs");

    /// <summary>How many times the group's usage hit the limit (so the kernel had to reclaim, or kill).</summary>
    public long LimitHits => v2
        ? long.Parse(File.ReadAllLines(Path.Combine(dir, "memory.events")).First(l => l.StartsWith("max ")).Split(' ')[1])
        : long.Parse(File.ReadAllText(Path.Combine(dir, "memory.failcnt")).Trim());

    public long OomKills => v2
        ? long.Parse(File.ReadAllLines(Path.Combine(dir, "memory.events")).First(l => l.StartsWith("oom_kill ")).Split(' ')[1])
        : File.ReadAllLines(Path.Combine(dir, "memory.oom_control")).Where(l => l.StartsWith("oom_kill ")).Select(l => long.Parse(l.Split(' ')[1])).FirstOrDefault();

    public static MemoryCgroup? TryCreate(long limitBytes, out string why)
    {
        why = "";
        if (!OperatingSystem.IsLinux()) { why = "memory cgroups need Linux"; return null; }
        bool v2 = File.Exists(Path.Combine(V2Root, "cgroup.controllers"));
        string root = v2 ? V2Root : V1Root;
        if (v2 && !File.ReadAllText(Path.Combine(V2Root, "cgroup.controllers")).Split(' ', '\n').Contains("memory"))
        {
            why = "the cgroup v2 hierarchy has no memory controller";
            return null;
        }
        if (!v2 && !Directory.Exists(V1Root)) { why = $"no memory cgroup hierarchy ({V1Root} or {V2Root}/cgroup.controllers)"; return null; }
        string dir = Path.Combine(root, $"distgpt-test-{Environment.ProcessId}-{Guid.NewGuid():n}"[..40]);
        try
        {
            if (v2) File.AppendAllText(Path.Combine(V2Root, "cgroup.subtree_control"), "+memory");
            Directory.CreateDirectory(dir);
            var group = new MemoryCgroup(dir, v2);
            try
            {
                File.WriteAllText(Path.Combine(dir, v2 ? "memory.max" : "memory.limit_in_bytes"), limitBytes.ToString());
                if (v2 && File.Exists(Path.Combine(dir, "memory.swap.max"))) File.WriteAllText(Path.Combine(dir, "memory.swap.max"), "0");
                _ = group.LimitHits;
                return group;
            }
            catch
            {
                group.Dispose();
                throw;
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidOperationException or FormatException)
        {
            why = $"cannot make a memory cgroup under {root} ({e.Message.TrimEnd('.')}; needs root and a writable cgroup hierarchy)";
            return null;
        }
    }

    public void Dispose()
    {
        for (int i = 0; i < 50 && Directory.Exists(dir); i++)
        {
            try { Directory.Delete(dir); }
            catch (IOException) { Thread.Sleep(100); } // its last process is still exiting
        }
    }
}

/// <summary>A [Fact] reported as SKIPPED, with the reason, where a memory cgroup cannot be made.</summary>
public sealed class MemoryCgroupFactAttribute : FactAttribute
{
    public MemoryCgroupFactAttribute()
    {
        using var probe = MemoryCgroup.TryCreate(1L << 30, out string why);
        if (probe == null) Skip = why;
    }
}
