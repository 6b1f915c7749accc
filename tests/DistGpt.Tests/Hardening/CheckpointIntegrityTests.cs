using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using Xunit;
using Xunit.Abstractions;

namespace DistGpt.Tests.Hardening;

/// <summary>checkpoint.json (finding 10): every field is validated, and the file is covered by the integrity check as
/// the tensor files are, so any edit is refused with one line, exit 2, and nothing in --out changes.</summary>
public sealed class CheckpointIntegrityTests : IDisposable
{
    readonly TempDirectory temp = new("ckptjson");
    readonly ITestOutputHelper output;
    readonly UserErrors cli;

    public CheckpointIntegrityTests(ITestOutputHelper output) => (this.output, cli) = (output, new UserErrors(output, temp));

    public void Dispose() => temp.Dispose();

    static string StatePath(string run) => Path.Combine(run, "ckpt", "checkpoint.json");

    /// <summary>Both commands that read a checkpoint refuse it, naming the file, and leave --out as it was.</summary>
    void AssertRefused(string run, params string[] mentions)
    {
        var before = UserErrors.Snapshot(run);
        UserErrors.AssertBadInput(cli.Distgpt(["train", "--resume", "--max-iters", "4", "--out", run, .. UserErrors.Tiny]), mentions);
        UserErrors.AssertBadInput(cli.Distgpt("sample", "--checkpoint", run, "--max-new-tokens", "5"), mentions);
        Assert.Equal(before, UserErrors.Snapshot(run));
    }

    static void Edit(string run, Action<JsonObject> edit)
    {
        var json = JsonNode.Parse(File.ReadAllText(StatePath(run)))!.AsObject();
        edit(json);
        File.WriteAllText(StatePath(run), json.ToJsonString());
    }

    [Theory]
    [InlineData("file_sha256")]
    [InlineData("config")]
    [InlineData("vocabulary")]
    [InlineData("settings")]
    [InlineData("run_id")]
    public void ANullFieldIsRefusedNotDereferenced(string field)
    {
        string run = cli.TrainedRun();
        Edit(run, j => j[field] = null);
        AssertRefused(run, StatePath(run), "corrupted");
    }

    [Fact]
    public void ANegativeStepIsRefused()
    {
        string run = cli.TrainedRun();
        Edit(run, j => j["step"] = -5);
        AssertRefused(run, StatePath(run));
    }

    [Fact]
    public void AnEditedStepIsRefusedEvenWhenPlausible()
    {
        string run = cli.TrainedRun(steps: 2);
        Edit(run, j => j["step"] = 1);
        AssertRefused(run, StatePath(run), "edited or corrupted");
    }

    [Fact]
    public void AFieldOutOfRangeIsRefusedEvenWithARecomputedDigest()
    {
        string run = cli.TrainedRun();
        var state = DistGpt.Model.IO.Checkpoint.Open(run).State;
        var bad = state with { Step = -5 };
        File.WriteAllText(StatePath(run), System.Text.Json.JsonSerializer.Serialize(bad with { StateSha256 = bad.Digest() }, DistGpt.Model.IO.Json.Options));
        AssertRefused(run, StatePath(run), "step -5");
    }

    [Fact]
    public void ACheckpointOfTheOldFormatIsRefusedSayingWhy()
    {
        string run = cli.TrainedRun();
        Edit(run, j =>
        {
            j["format"] = 1;
            j.Remove("state_sha256");
        });
        AssertRefused(run, StatePath(run), "format 1", "cannot be verified");
    }

    /// <summary>Generated corruptions of each checkpoint file: byte flips, truncations, appended bytes, JSON values replaced.</summary>
    static IEnumerable<(string Name, Action<string> Corrupt)> Corruptions(Random random)
    {
        string[] files = ["checkpoint.json", "model.safetensors", "optimizer.safetensors"];
        foreach (string file in files)
        {
            yield return ($"flip a byte of {file}", dir =>
            {
                string p = Path.Combine(dir, file);
                var b = File.ReadAllBytes(p);
                int i = random.Next(b.Length);
                b[i] ^= (byte)(1 << random.Next(8));
                File.WriteAllBytes(p, b);
            });
            yield return ($"truncate {file}", dir =>
            {
                string p = Path.Combine(dir, file);
                var b = File.ReadAllBytes(p);
                File.WriteAllBytes(p, b[..random.Next(b.Length)]);
            });
        }
        yield return ("append to model.safetensors", dir => File.AppendAllText(Path.Combine(dir, "model.safetensors"), "x"));
        yield return ("delete optimizer.safetensors", dir => File.Delete(Path.Combine(dir, "optimizer.safetensors")));
        string[] fields = ["step", "optimizer_steps", "config", "vocabulary", "file_sha256", "data_sha256", "state_sha256", "format"];
        JsonNode?[] values = [null, -5, 0, 1e300, "x", new JsonArray(), new JsonObject(), true];
        for (int k = 0; k < 4; k++)
        {
            string field = fields[random.Next(fields.Length)];
            var value = values[random.Next(values.Length)];
            yield return ($"{field} = {value?.ToJsonString() ?? "null"}", dir =>
            {
                string p = Path.Combine(dir, "checkpoint.json");
                var json = JsonNode.Parse(File.ReadAllText(p))!.AsObject();
                json[field] = value?.DeepClone();
                File.WriteAllText(p, json.ToJsonString());
            });
        }
        yield return ("checkpoint.json replaced by a directory", dir =>
        {
            File.Delete(Path.Combine(dir, "checkpoint.json"));
            Directory.CreateDirectory(Path.Combine(dir, "checkpoint.json"));
        });
    }

    [Fact]
    public void GeneratedCorruptionsAreRefusedWithOneLineAndChangeNothing()
    {
        string pristine = cli.TrainedRun("pristine");
        var clock = Stopwatch.StartNew();
        int n = 0;
        foreach (var (name, corrupt) in Corruptions(new Random(1202)))
        {
            string run = temp.Combine($"corrupt-{n++}");
            CopyDirectory(pristine, run);
            corrupt(Path.Combine(run, "ckpt"));
            output.WriteLine($"--- {name}");
            var before = UserErrors.Snapshot(run);
            var r = cli.Distgpt(["train", "--resume", "--max-iters", "4", "--out", run, .. UserErrors.Tiny]);
            // A deleted checkpoint.json leaves no checkpoint at all: "no checkpoint", also exit 2.
            UserErrors.AssertBadInput(r);
            Assert.Equal(before, UserErrors.Snapshot(run));
        }
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(40), $"took {clock.Elapsed}");
    }

    static void CopyDirectory(string from, string to)
    {
        foreach (string dir in Directory.EnumerateDirectories(from, "*", SearchOption.AllDirectories))
            Directory.CreateDirectory(Path.Combine(to, Path.GetRelativePath(from, dir)));
        Directory.CreateDirectory(to);
        foreach (string file in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories))
            File.Copy(file, Path.Combine(to, Path.GetRelativePath(from, file)));
    }
}
