namespace DistGpt.Model.Engine;

/// <summary>A float32 view over contiguous native memory, with an optional gradient view of the same shape.
/// Parameters are views into the flat parameter/gradient buffers; activations own buffers of their graph.</summary>
public sealed unsafe class Tensor
{
    public float* Data { get; }
    public float* Grad { get; }
    public int[] Shape { get; }
    public int Length { get; }
    public string Name { get; }

    public Tensor(string name, float* data, float* grad, params int[] shape)
    {
        Name = name;
        Data = data;
        Grad = grad;
        Shape = shape;
        long n = 1;
        foreach (int d in shape) n *= d;
        Length = checked((int)n);
    }

    public bool HasGrad => Grad != null;

    /// <summary>Set by the tensor's only consumer when its backward assigns (=) this gradient rather than adding to it;
    /// the graph then skips zeroing it before backward. Never set on a tensor that feeds more than one op.</summary>
    public bool GradAssignedByConsumer { get; set; }
    public int LastDim => Shape[^1];
    public int Rows => Length / LastDim;
    public Span<float> DataSpan => new(Data, Length);
    public Span<float> GradSpan => Grad == null ? throw new InvalidOperationException($"{Name} has no gradient") : new(Grad, Length);

    public override string ToString() => $"{Name}[{string.Join(",", Shape)}]";
}
