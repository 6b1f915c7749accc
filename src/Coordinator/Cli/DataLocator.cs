using DistGpt.Model.Data;

namespace DistGpt.Coordinator.Cli;

/// <summary>Finds the corpus (a text file or a token directory): --data, then DISTGPT_DATA, then data/tinyshakespeare.txt, then a download into data/.</summary>
public static class DataLocator
{
    public const string EnvVar = "DISTGPT_DATA";
    public const string LocalPath = "data/tinyshakespeare.txt";
    public const string PublicUrl = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt";

    public static string Resolve(string? flag)
    {
        if (!string.IsNullOrEmpty(flag)) return Existing(flag, "--data");
        string? env = Environment.GetEnvironmentVariable(EnvVar);
        if (!string.IsNullOrEmpty(env)) return Existing(env, EnvVar);
        if (File.Exists(LocalPath)) return LocalPath;
        try
        {
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
            byte[] bytes = http.GetByteArrayAsync(PublicUrl).GetAwaiter().GetResult();
            Directory.CreateDirectory("data");
            File.WriteAllBytes(LocalPath + ".tmp", bytes);
            File.Move(LocalPath + ".tmp", LocalPath, overwrite: true);
            return LocalPath;
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or IOException)
        {
            throw new DataException($"no data file: pass --data PATH, set {EnvVar}, or put Tiny Shakespeare at {LocalPath} (download from {PublicUrl} failed: {e.Message})");
        }
    }

    static string Existing(string path, string source) =>
        File.Exists(path) || Directory.Exists(path) ? path : throw new DataException($"data file '{path}' (from {source}) does not exist");
}
