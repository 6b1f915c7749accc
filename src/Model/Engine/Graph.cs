namespace DistGpt.Model.Engine;

/// <summary>A node of the tape: a coarse fused kernel with its hand-written backward beside its forward.
/// Backward accumulates (+=) into the input gradients, so a tensor may feed several ops.</summary>
public abstract class Op
{
    public abstract void Forward(StepContext step);
    public abstract void Backward(StepContext step);

    /// <summary>The op's row in the DISTGPT_PROFILE table.</summary>
    public virtual string ProfileName => GetType().Name;

    /// <summary>The parameter tensors whose gradients this op's backward writes (none for most ops).</summary>
    public virtual IEnumerable<Tensor> Parameters => [];
}

/// <summary>What changes from one step to the next without changing the graph: train/eval mode and the
/// counter-based dropout key (seed, step, and the global index of this graph's first sequence).</summary>
public sealed class StepContext
{
    public bool Training { get; set; }
    public ulong DropoutKey { get; set; }
    public long FirstSequence { get; set; }
}

/// <summary>Reverse-mode autograd over a tape recorded once per (batch, time) shape and replayed every step:
/// the model's build code records ops and allocates every activation once, so a steady-state step allocates nothing.</summary>
public sealed unsafe class Graph : IDisposable
{
    readonly List<Op> ops = new();
    readonly List<NativeBuffer> buffers = new();
    readonly List<Tensor> activations = new();
    int profiledPasses;

    public Graph(bool withGrad) => WithGrad = withGrad;

    public bool WithGrad { get; }
    public StepContext Step { get; } = new();
    public IReadOnlyList<Op> Ops => ops;

    /// <summary>Allocates an activation (and its gradient when the graph trains).</summary>
    public Tensor Activation(string name, params int[] shape)
    {
        long n = Elements(shape);
        var data = Allocate(n);
        var grad = WithGrad ? Allocate(n) : null;
        var t = new Tensor(name, data.Pointer, grad == null ? null : grad.Pointer, shape);
        if (WithGrad) activations.Add(t);
        return t;
    }

    /// <summary>Allocates an activation whose gradient buffer is shared with every other activation of the same
    /// <paramref name="role"/> (one per layer, all the same size): a layer's backward writes and reads its gradients
    /// before the layer below starts, so one buffer per role serves every layer, and backward touches a few hot buffers
    /// instead of fresh memory per layer. Only for tensors whose only consumer assigns the gradient (checked at the first
    /// backward): nothing may accumulate onto another layer's leftovers.</summary>
    public Tensor LayerActivation(string name, string role, params int[] shape)
    {
        long n = Elements(shape);
        var data = Allocate(n);
        if (!WithGrad) return new Tensor(name, data.Pointer, null, shape);
        if (!roleGrads.TryGetValue(role, out var grad)) roleGrads[role] = grad = Allocate(n);
        if (grad.Length != n) throw new ArgumentException($"{name} ({n} values) cannot share the {role} gradient buffer ({grad.Length})");
        var t = new Tensor(name, data.Pointer, grad.Pointer, shape);
        roleShared.Add(t);
        return t;
    }

    readonly Dictionary<string, NativeBuffer> roleGrads = new();
    readonly List<Tensor> roleShared = new();

    /// <summary>Allocates an activation whose gradient IS <paramref name="owner"/>'s (same length): the residual stream,
    /// where y = a + b passes dy on to both unchanged, so every tensor on it can share one gradient buffer and the adds'
    /// backward has nothing to do. Zeroed before backward through its owner only.</summary>
    public Tensor ActivationSharingGrad(string name, Tensor owner, params int[] shape)
    {
        var t = new Tensor(name, Allocate(owner.Length).Pointer, WithGrad ? owner.Grad : null, shape);
        if (t.Length != owner.Length) throw new ArgumentException($"{name} ({t.Length} values) cannot share the gradient of {owner.Name} ({owner.Length})");
        return t;
    }

    static long Elements(int[] shape)
    {
        long n = 1;
        foreach (int d in shape) n *= d;
        return n;
    }

    /// <summary>Scratch memory that lives as long as the graph (saved statistics, masks, partial sums).</summary>
    public NativeBuffer Allocate(long length)
    {
        var b = new NativeBuffer(length);
        buffers.Add(b);
        return b;
    }

    public T Add<T>(T op) where T : Op
    {
        ops.Add(op);
        return op;
    }

    /// <summary>Runs the tape forwards; <paramref name="beforeOp"/>, when given, is called with each op's index before
    /// the op runs (e.g. to wait for the weights it reads, see <see cref="Training.WeightsArrival"/>).</summary>
    public void Forward(Action<int>? beforeOp = null)
    {
        bool profile = OpProfiler.Enabled && ++profiledPasses > OpProfiler.SkipPasses;
        for (int i = 0; i < ops.Count; i++)
        {
            beforeOp?.Invoke(i);
            long t0 = profile ? OpProfiler.Now() : 0;
            ops[i].Forward(Step);
            if (profile) OpProfiler.Record(ops[i].ProfileName + " fwd", t0);
        }
    }

    /// <summary>Zeroes activation gradients (except those their only consumer assigns), then runs the tape backwards. The caller seeds the loss gradient
    /// through the loss op and owns zeroing of parameter gradients (so several graphs could accumulate).
    /// <paramref name="afterOp"/> is called with each op's index once its backward has run (indices descend), so the
    /// caller can act on parameter gradients as they become final (see <see cref="Training.GradientBuckets"/>).</summary>
    public void Backward(Action<int>? afterOp = null)
    {
        if (!WithGrad) throw new InvalidOperationException("this graph was built for inference (no gradients)");
        bool profile = OpProfiler.Enabled && profiledPasses > OpProfiler.SkipPasses;
        long z = profile ? OpProfiler.Now() : 0;
        ClearActivationGrads();
        if (profile) OpProfiler.Record("(zero activation grads)", z);
        for (int i = ops.Count - 1; i >= 0; i--)
        {
            long t0 = profile ? OpProfiler.Now() : 0;
            ops[i].Backward(Step);
            if (profile) OpProfiler.Record(ops[i].ProfileName + " bwd", t0);
            afterOp?.Invoke(i);
        }
    }

    long[]? gradOffsets; // prefix sums of the zeroed activations' lengths, as one virtual array split evenly between cores
    Tensor[] zeroed = [];
    int zeroedFrom = -1;

    void ClearActivationGrads()
    {
        if (zeroedFrom != activations.Count)
        {
            foreach (var t in roleShared)
                if (!t.GradAssignedByConsumer)
                    throw new InvalidOperationException($"{t.Name} shares its gradient buffer across layers, but its consumer adds to the gradient instead of assigning it");
            zeroed = activations.Where(a => !a.GradAssignedByConsumer).ToArray();
            zeroedFrom = activations.Count;
            gradOffsets = new long[zeroed.Length + 1];
            for (int i = 0; i < zeroed.Length; i++) gradOffsets[i + 1] = gradOffsets[i] + zeroed[i].Length;
        }
        var tensors = zeroed;
        var offsets = gradOffsets!;
        long total = offsets[^1];
        int chunks = (int)Math.Clamp(total / (1 << 16), 1, Compute.Threads);
        Compute.For(chunks, chunk =>
        {
            long start = total * chunk / chunks, end = total * (chunk + 1) / chunks;
            for (int i = 0; i < tensors.Length; i++)
            {
                long lo = Math.Max(start, offsets[i]), hi = Math.Min(end, offsets[i + 1]);
                if (lo < hi) new Span<float>(tensors[i].Grad + (lo - offsets[i]), (int)(hi - lo)).Clear();
            }
        });
    }

    public long ActivationBytes => buffers.Sum(b => b.Length) * sizeof(float);

    public void Dispose()
    {
        foreach (var b in buffers) b.Dispose();
        buffers.Clear();
    }
}
