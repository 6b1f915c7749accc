namespace DistGpt.Model.Engine;

/// <summary>One named parameter tensor's place in the flat buffers.</summary>
public sealed record ParameterSlot(string Name, int[] Shape, long Offset, long Length)
{
    /// <summary>nanoGPT's configure_optimizers: every tensor of rank >= 2 (matmul weights, embeddings) is decayed; biases and LayerNorm gains are not.</summary>
    public bool Decay => Shape.Length >= 2;
}

/// <summary>All parameters in one contiguous buffer and all gradients in another (llm.c style), with named views.
/// Averaging gradients, the optimizer and checkpointing are each one pass over one buffer.</summary>
public sealed unsafe class FlatParameters : IDisposable
{
    readonly Dictionary<string, ParameterSlot> byName = new();

    public IReadOnlyList<ParameterSlot> Slots { get; }
    public long Count { get; }
    public NativeBuffer Values { get; }
    public NativeBuffer Grads { get; }

    /// <param name="values">memory for the values (e.g. a shared-memory region); default a buffer of its own</param>
    /// <param name="grads">memory for the gradients, likewise</param>
    public FlatParameters(IEnumerable<(string Name, int[] Shape)> layout, Func<long, NativeBuffer>? values = null, Func<long, NativeBuffer>? grads = null)
    {
        var slots = new List<ParameterSlot>();
        long offset = 0;
        foreach (var (name, shape) in layout)
        {
            long n = 1;
            foreach (int d in shape) n *= d;
            var slot = new ParameterSlot(name, shape, offset, n);
            slots.Add(slot);
            byName.Add(name, slot);
            offset += n;
        }
        Slots = slots;
        Count = offset;
        Values = values?.Invoke(offset) ?? new NativeBuffer(offset);
        Grads = grads?.Invoke(offset) ?? new NativeBuffer(offset);
    }

    public ParameterSlot Slot(string name) =>
        byName.TryGetValue(name, out var slot) ? slot : throw new KeyNotFoundException($"no parameter named '{name}'");

    public bool Contains(string name) => byName.ContainsKey(name);

    /// <summary>The named parameter, with its gradient in <paramref name="grads"/> (a buffer laid out as Grads; default Grads itself).</summary>
    public Tensor View(string name, NativeBuffer? grads = null)
    {
        var s = Slot(name);
        grads ??= Grads;
        if (grads.Length != Count) throw new ArgumentException($"gradient buffer holds {grads.Length} values, the parameters {Count}");
        return new Tensor(name, Values.Pointer + s.Offset, grads.Pointer + s.Offset, s.Shape);
    }

    public Span<float> ValuesOf(ParameterSlot s) => new(Values.Pointer + s.Offset, checked((int)s.Length));
    public Span<float> GradsOf(ParameterSlot s) => new(Grads.Pointer + s.Offset, checked((int)s.Length));

    public void ZeroGrads() => Grads.Clear();

    public void Dispose()
    {
        Values.Dispose();
        Grads.Dispose();
    }
}
