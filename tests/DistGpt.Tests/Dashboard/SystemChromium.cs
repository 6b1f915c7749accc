using Microsoft.Playwright;
using Xunit;

namespace DistGpt.Tests.Dashboard;

/// <summary>The machine's own Chromium (Debian's `chromium`, which `.ci/run` installs), driven by Playwright: no browser
/// is ever downloaded. DISTGPT_CHROMIUM names another executable.</summary>
public static class SystemChromium
{
    static readonly string[] Candidates = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome", "/usr/bin/google-chrome-stable"];

    public static string? Path =>
        Environment.GetEnvironmentVariable("DISTGPT_CHROMIUM") is { Length: > 0 } env ? env : Candidates.FirstOrDefault(File.Exists);

    public static string MissingReason =>
        $"no Chromium on this machine (looked for $DISTGPT_CHROMIUM, {string.Join(", ", Candidates)}): `apt-get install chromium` (bash .ci/run does)";

    public static async Task<(IPlaywright Playwright, IBrowser Browser)> LaunchAsync()
    {
        var playwright = await Playwright.CreateAsync();
        try
        {
            var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions { ExecutablePath = Path, Headless = true });
            return (playwright, browser);
        }
        catch
        {
            playwright.Dispose();
            throw;
        }
    }

    /// <summary>A page of a fresh headless browser, opened at <paramref name="url"/>, with every console error and
    /// uncaught page exception collected in <see cref="BrowserPage.Errors"/>.</summary>
    public static async Task<BrowserPage> OpenAsync(Uri url, int height)
    {
        var (playwright, browser) = await LaunchAsync();
        var page = await browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 1400, Height = height } });
        var opened = new BrowserPage(playwright, browser, page);
        page.Console += (_, m) => { if (m.Type == "error") opened.Errors.Add(m.Text); };
        page.PageError += (_, e) => opened.Errors.Add(e);
        await page.GotoAsync(url.ToString());
        return opened;
    }

    /// <summary>Where a test leaves its screenshots: $DISTGPT_TEST_ARTIFACTS, else artifacts/ beside the test assembly.</summary>
    public static string ArtifactPath(string name)
    {
        string dir = Environment.GetEnvironmentVariable("DISTGPT_TEST_ARTIFACTS") is { Length: > 0 } env ? env : System.IO.Path.Combine(AppContext.BaseDirectory, "artifacts");
        Directory.CreateDirectory(dir);
        return System.IO.Path.Combine(dir, name);
    }
}

public sealed record BrowserPage(IPlaywright Playwright, IBrowser Browser, IPage Page) : IAsyncDisposable
{
    public List<string> Errors { get; } = new();

    public async ValueTask DisposeAsync()
    {
        await Browser.DisposeAsync();
        Playwright.Dispose();
    }
}

/// <summary>A [Fact] reported as SKIPPED, with the reason, where no Chromium can be found: never a silent pass.</summary>
public sealed class BrowserFactAttribute : FactAttribute
{
    public BrowserFactAttribute()
    {
        if (SystemChromium.Path == null) Skip = SystemChromium.MissingReason;
    }
}
