using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace DistGpt.Model.IO;

/// <summary>The safetensors format (u64 header length, JSON header, raw little-endian data), F32 and I32 only.</summary>
public static class SafeTensors
{
    public sealed record Entry(string Name, string DType, int[] Shape, ReadOnlyMemory<byte> Bytes)
    {
        public float[] ToFloats() => MemoryMarshal.Cast<byte, float>(Bytes.Span).ToArray();
        public int[] ToInts() => MemoryMarshal.Cast<byte, int>(Bytes.Span).ToArray();
        public ReadOnlySpan<float> Floats => MemoryMarshal.Cast<byte, float>(Bytes.Span);
    }

    public sealed record File(IReadOnlyDictionary<string, Entry> Tensors, IReadOnlyDictionary<string, string> Metadata)
    {
        public Entry this[string name] => Tensors.TryGetValue(name, out var e) ? e : throw new CheckpointException($"tensor '{name}' is missing");
    }

    /// <summary>Writes tensors (name, shape, float data) in the given order.</summary>
    public static void Write(Stream stream, IEnumerable<(string Name, int[] Shape, ReadOnlyMemory<float> Data)> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.ToList();
        var header = new JsonObject();
        long offset = 0;
        foreach (var (name, shape, data) in list)
        {
            long bytes = (long)data.Length * sizeof(float);
            header[name] = new JsonObject
            {
                ["dtype"] = "F32",
                ["shape"] = new JsonArray(shape.Select(d => (JsonNode)d).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }
        if (metadata != null)
            header["__metadata__"] = new JsonObject(metadata.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value)));
        byte[] json = Encoding.UTF8.GetBytes(header.ToJsonString());
        int padded = (json.Length + 7) / 8 * 8;
        Span<byte> len = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)padded);
        stream.Write(len);
        stream.Write(json);
        for (int i = json.Length; i < padded; i++) stream.WriteByte((byte)' ');
        foreach (var (_, _, data) in list) stream.Write(MemoryMarshal.AsBytes(data.Span));
    }

    /// <summary>Parses a whole file; any structural problem throws <see cref="CheckpointException"/> naming the file.</summary>
    public static File Read(string path)
    {
        byte[] bytes;
        try { bytes = System.IO.File.ReadAllBytes(path); }
        catch (IOException e) { throw new CheckpointException($"cannot read '{path}': {e.Message}"); }
        try { return Parse(bytes); }
        catch (Exception e)
        {
            throw new CheckpointException($"'{path}' is not a valid safetensors file: {e.Message}");
        }
    }

    public static File Parse(byte[] bytes)
    {
        if (bytes.Length < 8) throw new FormatException("shorter than its 8-byte header length");
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        if (headerLength > (ulong)(bytes.Length - 8)) throw new FormatException($"header length {headerLength} runs past the end of the file ({bytes.Length} bytes)");
        var root = JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, (int)headerLength))?.AsObject()
                   ?? throw new FormatException("header is not a JSON object");
        long dataStart = 8 + (long)headerLength;
        var tensors = new Dictionary<string, Entry>();
        var metadata = new Dictionary<string, string>();
        foreach (var (name, node) in root)
        {
            if (name == "__metadata__")
            {
                foreach (var (k, v) in node!.AsObject()) metadata[k] = v?.GetValue<string>() ?? "";
                continue;
            }
            var o = node!.AsObject();
            string dtype = o["dtype"]!.GetValue<string>();
            if (dtype != "F32" && dtype != "I32") throw new FormatException($"tensor '{name}' has unsupported dtype {dtype}");
            int[] shape = o["shape"]!.AsArray().Select(d => d!.GetValue<int>()).ToArray();
            var offsets = o["data_offsets"]!.AsArray();
            long begin = offsets[0]!.GetValue<long>(), end = offsets[1]!.GetValue<long>();
            long count = shape.Aggregate(1L, (a, d) => a * d);
            if (begin < 0 || end < begin || dataStart + end > bytes.Length)
                throw new FormatException($"tensor '{name}' data [{begin}, {end}) runs past the end of the file (truncated?)");
            if (end - begin != count * 4) throw new FormatException($"tensor '{name}' has {end - begin} bytes but shape [{string.Join(",", shape)}] needs {count * 4}");
            tensors[name] = new Entry(name, dtype, shape, bytes.AsMemory((int)(dataStart + begin), (int)(end - begin)));
        }
        return new File(tensors, metadata);
    }
}

/// <summary>A checkpoint or fixture that cannot be used; the message names the file. The CLI exits with code 2.</summary>
public sealed class CheckpointException(string message) : Exception(message);
