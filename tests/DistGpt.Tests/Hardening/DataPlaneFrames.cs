using System.Buffers.Binary;

namespace DistGpt.Tests.Hardening;

/// <summary>Data-plane frames built byte by byte, so a test can send what FrameChannel never would.</summary>
public static class DataPlaneFrames
{
    public const ushort Magic = 0x4744; // "DG"

    /// <summary>Magic, kind, flags, header length, payload length (16 bytes), then the header.</summary>
    public static byte[] Raw(byte kind, byte[] header, long payloadLength = 0, byte flags = 0, int? headerLength = null, ushort magic = Magic)
    {
        var frame = new byte[16 + header.Length];
        BinaryPrimitives.WriteUInt16LittleEndian(frame, magic);
        (frame[2], frame[3]) = (kind, flags);
        BinaryPrimitives.WriteInt32LittleEndian(frame.AsSpan(4), headerLength ?? header.Length);
        BinaryPrimitives.WriteInt64LittleEndian(frame.AsSpan(8), payloadLength);
        header.CopyTo(frame, 16);
        return frame;
    }
}
