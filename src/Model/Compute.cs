using System.Diagnostics;

namespace DistGpt.Model;

/// <summary>Process-wide compute settings: how many cores the kernels may use.</summary>
public static class Compute
{
    static int threads = Environment.ProcessorCount;

    /// <summary>Cores used by matmul and the row-parallel kernels (the --threads flag).</summary>
    public static int Threads
    {
        get => threads;
        set
        {
            if (value < 1) throw new ArgumentOutOfRangeException(nameof(value), "threads must be at least 1");
            threads = value;
        }
    }

    /// <summary>How long the pool's helper threads spin after a job before they block: 200 µs by default, so back-to-back
    /// fork/joins cost ~1 µs. Zero where other processes' kernels run on the same cores (dev mode's coordinator, whose
    /// helpers' spin after its last job of a step took the workers' time: 17.3 against 18.2 ms a step, 2 workers on 2 cores).</summary>
    public static TimeSpan HelperSpin
    {
        get => TimeSpan.FromSeconds((double)WorkerPool.SpinTicks / Stopwatch.Frequency);
        set => WorkerPool.SpinTicks = (long)(Math.Max(0, value.TotalSeconds) * Stopwatch.Frequency);
    }

    /// <summary>Cores a kernel may use from the calling thread: 1 inside a <see cref="For"/> body (nested loops run inline,
    /// so each body keeps to its own core), else <see cref="Threads"/>.</summary>
    public static int AvailableThreads => WorkerPool.OnWorkerThread ? 1 : threads;

    /// <summary>Runs body(i) for i in [0, count), on up to Threads cores; inline when one thread, one item, or when called
    /// from inside another For body.
    /// Items are handed out dynamically, so a body must only write state of its own item (every kernel here
    /// writes a disjoint slice), which keeps results independent of scheduling.</summary>
    public static void For(int count, Action<int> body)
    {
        if (threads == 1 || count <= 1 || WorkerPool.OnWorkerThread)
        {
            for (int i = 0; i < count; i++) body(i);
            return;
        }
        if (!WorkerPool.TryRun(count, body, Math.Min(threads, count)))
            Parallel.For(0, count, new ParallelOptions { MaxDegreeOfParallelism = threads }, body);
    }

    /// <summary>A persistent pool of helper threads for <see cref="For"/>: the caller works too, and helpers spin briefly
    /// after each job before blocking (like OpenMP's ACTIVE-then-PASSIVE wait), so the back-to-back fork/joins of a
    /// training step cost ~1 us instead of Parallel.For's ~10 us. The caller waits only for items that were claimed, never
    /// for a helper to check in: a helper that is late (descheduled on a busy machine) finds nothing left and the caller
    /// has already moved on. Items are claimed with a CAS on (generation, index), so a late helper can never run an item
    /// of a newer job with an older body (nor read a stale count: the counters are checked before the job's fields matter). One caller at a time; others fall back to Parallel.For.</summary>
    static class WorkerPool
    {
        internal static long SpinTicks = Stopwatch.Frequency / 5000;
        static readonly object growLock = new();
        static Helper[] helpers = [];
        static int busy;

        // The current job. Items are split into one contiguous range per participant (the caller is participant 0,
        // helper h is h + 1), so that consecutive ops touch the same rows from the same core (cache affinity, as an
        // OpenMP static schedule); a participant that finishes its range steals from the others'. Each range has its
        // own claim counter, (generation << 32) | next index, spaced a cache line apart.
        const int Stride = 16;
        static long[] next = new long[Stride];
        static Action<int>? job;
        static int jobCount, jobParticipants, done;
        static long state, generation;
        static Exception? failure;

        [ThreadStatic] static bool onWorker;
        public static bool OnWorkerThread => onWorker;

        sealed class Helper
        {
            public readonly SemaphoreSlim Wake = new(0);
            public int Sleeping;
        }

        static int RangeStart(int participant, int count, int participants) => (int)((long)count * participant / participants);

        public static bool TryRun(int count, Action<int> body, int participants)
        {
            if (Interlocked.CompareExchange(ref busy, 1, 0) != 0) return false;
            try
            {
                int wanted = participants - 1;
                if (helpers.Length < wanted) Grow(wanted);
                if (next.Length < participants * Stride) next = new long[participants * Stride];
                long gen = ++generation;
                for (int p = 0; p < next.Length / Stride; p++)   // invalidates claims on the previous job first
                    Interlocked.Exchange(ref next[p * Stride], gen << 32 | (long)(p < participants ? RangeStart(p, count, participants) : 0));
                Volatile.Write(ref job, body);
                jobCount = count;
                jobParticipants = participants;
                failure = null;
                Volatile.Write(ref done, 0);
                Interlocked.Exchange(ref state, gen << 16 | (long)wanted); // full fence: publishes the job before the Sleeping checks
                for (int h = 0; h < wanted; h++)
                    if (Volatile.Read(ref helpers[h].Sleeping) != 0) helpers[h].Wake.Release();
                onWorker = true; // the caller's share of the job runs nested loops inline, as the helpers do
                try { Work(gen, 0); }
                finally { onWorker = false; }
                var spin = new SpinWait();
                while (Volatile.Read(ref done) != count) spin.SpinOnce(-1);
                Volatile.Write(ref job, null);
                if (failure != null) throw new AggregateException(failure);
                return true;
            }
            finally { Volatile.Write(ref busy, 0); }
        }

        /// Runs items of job 'gen': its own range first, then steals from the others; stops if a newer job replaced it.
        static void Work(long gen, int self)
        {
            var body = Volatile.Read(ref job);
            int count = jobCount, participants = jobParticipants;
            var counters = next;
            if (self >= participants || counters.Length < participants * Stride) return;
            for (int k = 0; k < participants; k++)
            {
                int owner = (self + k) % participants;
                int end = RangeStart(owner + 1, count, participants);
                ref long counter = ref counters[owner * Stride];
                while (true)
                {
                    long claim = Volatile.Read(ref counter);
                    if (claim >> 32 != gen) return;
                    int i = (int)claim;
                    if (i >= end) break;
                    if (Interlocked.CompareExchange(ref counter, claim + 1, claim) != claim) continue;
                    try { body!(i); }
                    catch (Exception e) { Interlocked.CompareExchange(ref failure, e, null); }
                    Interlocked.Increment(ref done);
                }
            }
        }

        static void Grow(int needed)
        {
            lock (growLock)
            {
                var grown = new Helper[needed];
                Array.Copy(helpers, grown, helpers.Length);
                for (int h = helpers.Length; h < needed; h++)
                {
                    var helper = grown[h] = new Helper();
                    int id = h;
                    long seen = Volatile.Read(ref state);
                    new Thread(() => Loop(helper, id, seen)) { IsBackground = true, Name = $"distgpt-compute-{id + 1}" }.Start();
                }
                helpers = grown;
            }
        }

        static void Loop(Helper self, int id, long seen)
        {
            onWorker = true;
            while (true)
            {
                long start = Stopwatch.GetTimestamp();
                int spins = 0;
                while (Volatile.Read(ref state) == seen)
                {
                    if (++spins < 64 || Stopwatch.GetTimestamp() - start < SpinTicks) { Thread.SpinWait(20); continue; }
                    Interlocked.Exchange(ref self.Sleeping, 1); // full fence before re-checking the state
                    if (Volatile.Read(ref state) == seen) self.Wake.Wait();
                    Volatile.Write(ref self.Sleeping, 0);
                    start = Stopwatch.GetTimestamp();
                    spins = 0;
                }
                seen = Volatile.Read(ref state);
                if (id < (int)(seen & 0xFFFF)) Work(seen >> 16, id + 1);
            }
        }
    }
}
