namespace DistGpt.TorchTests;

/// <summary>The device the in-process torch tests run on: DISTGPT_TORCH_DEVICE (bench/gpu-check.sh sets cuda), else cpu.</summary>
static class TestDevice
{
    public static string Name => Environment.GetEnvironmentVariable("DISTGPT_TORCH_DEVICE") is { Length: > 0 } d ? d : "cpu";
}
