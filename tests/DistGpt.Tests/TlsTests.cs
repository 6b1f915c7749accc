using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Xunit;

namespace DistGpt.Tests;

/// <summary>Cluster mode over TLS: the coordinator serves --tls-cert/--tls-key, workers trust it through --tls-ca.</summary>
[Collection(ProcessHeavy.Name)]
public sealed class TlsTests(Xunit.Abstractions.ITestOutputHelper output)
{
    const string Model = "--n-layer 2 --n-head 2 --n-embd 32 --block-size 32 --batch-size 8 --eval-iters 1 --threads 1";
    const string ShardedModel = "--n-layer 2 --n-head 2 --n-embd 128 --block-size 32 --batch-size 8 --eval-iters 1 --threads 1"; // 7 of the norm's chunks: room for 2 ranges

    /// <summary>A CA and, signed by it, a certificate for 127.0.0.1 for each node (server and client use: a silo is both),
    /// as PEM files.</summary>
    internal static (string Ca, (string Cert, string Key) Coordinator, (string Cert, string Key) Worker) MakeCertificates(TempDirectory dir)
    {
        using var caKey = RSA.Create(2048);
        var caRequest = new CertificateRequest("CN=DistGpt test CA", caKey, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        caRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        caRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign, true));
        using var ca = caRequest.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        string caPath = dir.Combine("ca.pem");
        File.WriteAllText(caPath, ca.ExportCertificatePem());

        (string, string) Node(string name, byte serial)
        {
            using var key = RSA.Create(2048);
            var request = new CertificateRequest("CN=127.0.0.1", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
            var san = new SubjectAlternativeNameBuilder();
            san.AddIpAddress(IPAddress.Loopback);
            request.CertificateExtensions.Add(san.Build());
            request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1"), new Oid("1.3.6.1.5.5.7.3.2")], false));
            using var cert = request.Create(ca, DateTimeOffset.UtcNow.AddHours(-1), DateTimeOffset.UtcNow.AddHours(12), [1, 2, 3, serial]);
            string certPath = dir.Combine(name + ".pem"), keyPath = dir.Combine(name + ".key");
            File.WriteAllText(certPath, cert.ExportCertificatePem());
            File.WriteAllText(keyPath, key.ExportPkcs8PrivateKeyPem());
            return (certPath, keyPath);
        }
        return (caPath, Node("coordinator", 1), Node("worker", 2));
    }

    [Fact]
    public void TlsOnTheDataPlaneAndBetweenSilosForTrustingWorkersWhileAnUntrustingWorkerIsRefused()
    {
        using var tmp = new TempDirectory("tls");
        var (ca, (cert, key), (workerCert, workerKey)) = MakeCertificates(tmp);
        int port = DistributedTests.FreePort();
        var env = new Dictionary<string, string> { ["DISTGPT_DATA"] = TestData.CorpusPath(), ["DISTGPT_CLUSTER_TOKEN"] = "tls-token" };
        using var coordinator = CliRunner.Start(CliRunner.Split(
            $"coordinator --listen https://127.0.0.1:{port} --tls-cert {cert} --tls-key {key} --tls-ca {ca} --min-workers 1 {Model} --max-iters 5 --eval-interval 5 --out {tmp.Combine("out")}"), env);
        Assert.True(coordinator.WaitForOutput(o => o.Contains("listening on https://127.0.0.1"), TimeSpan.FromSeconds(60)), coordinator.StdOut + coordinator.StdErr);
        Assert.Contains("(TLS)", coordinator.StdOut);

        var untrusting = CliRunner.Run($"worker --coordinator https://127.0.0.1:{port} --name doubter --threads 1", env, TimeSpan.FromSeconds(60));
        Assert.Equal(2, untrusting.ExitCode);
        Assert.Contains("TLS", untrusting.StdErr);

        // The gateway speaks TLS too: `status` checks the coordinator's certificate against the CA.
        var status = CliRunner.Run($"status --coordinator https://127.0.0.1:{port} --tls-ca {ca} --json --timeout 60", env, TimeSpan.FromSeconds(90));
        Assert.True(status.ExitCode == 0, status.ToString());
        Assert.Contains("\"coordinator\"", status.StdOut);

        var trusting = CliRunner.Run($"worker --coordinator https://127.0.0.1:{port} --name believer --threads 1 --tls-ca {ca} --tls-cert {workerCert} --tls-key {workerKey}", env, TimeSpan.FromMinutes(2));
        Assert.True(trusting.ExitCode == 0, trusting.ToString());
        var r = coordinator.WaitForExit(TimeSpan.FromMinutes(1));
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(5, DistributedTests.Metrics(tmp.Combine("out")).Count);
    }

    /// <summary>Review #15, finding 1: a worker whose --coordinator scheme does not match what the coordinator serves is
    /// told so in one line, at once, whichever connection (data plane or silo) finds out first.</summary>
    [Fact]
    public void AWorkerWithTheWrongSchemeIsToldWhatTheCoordinatorServes()
    {
        using var tmp = new TempDirectory("tls-scheme");
        var (ca, (cert, key), (workerCert, workerKey)) = MakeCertificates(tmp);
        var env = new Dictionary<string, string> { ["DISTGPT_DATA"] = TestData.CorpusPath(), ["DISTGPT_CLUSTER_TOKEN"] = "scheme-token" };
        int tlsPort = DistributedTests.FreePort(), plainPort = DistributedTests.FreePort();
        using var tlsCoordinator = CliRunner.Start(CliRunner.Split(
            $"coordinator --listen https://127.0.0.1:{tlsPort} --tls-cert {cert} --tls-key {key} --tls-ca {ca} --min-workers 1 {Model} --max-iters 5 --out {tmp.Combine("tls")}"), env);
        using var plainCoordinator = CliRunner.Start(CliRunner.Split(
            $"coordinator --listen http://127.0.0.1:{plainPort} --min-workers 1 {Model} --max-iters 5 --out {tmp.Combine("plain")}"), env);
        Assert.True(tlsCoordinator.WaitForOutput(o => o.Contains("waiting for 1 worker"), TimeSpan.FromSeconds(60)), tlsCoordinator.StdOut + tlsCoordinator.StdErr);
        Assert.True(plainCoordinator.WaitForOutput(o => o.Contains("waiting for 1 worker"), TimeSpan.FromSeconds(60)), plainCoordinator.StdOut + plainCoordinator.StdErr);

        var plainWorker = CliRunner.Run($"worker --coordinator http://127.0.0.1:{tlsPort} --name plain --threads 1 --connect-timeout 20", env, TimeSpan.FromSeconds(60));
        output.WriteLine(plainWorker.ToString());
        Hardening.UserErrors.AssertOneLineError(plainWorker, 2, "serves TLS", $"https://127.0.0.1:{tlsPort}", "--tls-ca", "--tls-cert");
        Assert.True(plainWorker.Elapsed < TimeSpan.FromSeconds(15), $"the hint took {plainWorker.Elapsed.TotalSeconds:F0} s");

        var tlsWorker = CliRunner.Run($"worker --coordinator https://127.0.0.1:{plainPort} --name secure --threads 1 --connect-timeout 20 --tls-ca {ca} --tls-cert {workerCert} --tls-key {workerKey}",
            env, TimeSpan.FromSeconds(60));
        output.WriteLine(tlsWorker.ToString());
        Hardening.UserErrors.AssertOneLineError(tlsWorker, 2, "does not serve TLS", $"http://127.0.0.1:{plainPort}");
        Assert.True(tlsWorker.Elapsed < TimeSpan.FromSeconds(15), $"the hint took {tlsWorker.Elapsed.TotalSeconds:F0} s");
    }

    [Theory]
    [InlineData("coordinator --listen https://127.0.0.1:1 --out {out}", "uses TLS")]
    [InlineData("coordinator --listen http://127.0.0.1:1 --tls-cert {cert} --tls-key {key} --tls-ca {ca} --out {out}", "plain http://")]
    [InlineData("worker --coordinator http://127.0.0.1:1 --tls-ca {ca}", "plain http://")]
    [InlineData("worker --coordinator https://127.0.0.1:1 --tls-ca {out}/missing.pem --tls-cert {cert} --tls-key {key}", "cannot load --tls-ca")]
    [InlineData("worker --coordinator https://127.0.0.1:1 --tls-ca {key} --tls-cert {cert} --tls-key {key}", "cannot load --tls-ca")]
    [InlineData("status --coordinator https://127.0.0.1:1", "give --tls-ca")]
    public void TlsIsAllOrNothingAndBadTlsFilesAreOneLine(string command, string message)
    {
        using var tmp = new TempDirectory("tls-flags");
        var (ca, (cert, key), _) = MakeCertificates(tmp);
        var r = CliRunner.Run(command.Replace("{out}", tmp.Combine("out")).Replace("{ca}", ca).Replace("{cert}", cert).Replace("{key}", key),
            new Dictionary<string, string> { ["DISTGPT_DATA"] = TestData.CorpusPath(), ["DISTGPT_CLUSTER_TOKEN"] = "t" }, TimeSpan.FromSeconds(60));
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.Contains(message, r.StdErr);
        Assert.Single(r.StdErrLines);
        Assert.DoesNotContain("   at ", r.StdErr);
    }

    /// <summary>Parameter shards in a TLS cluster: the workers' peer links are mutual TLS with their node certificates
    /// (the run's tensors never go in the clear), and the run completes with the tensors moving worker to worker.</summary>
    [Fact]
    public void ParameterShardsRunOverMutualTlsPeerLinks()
    {
        using var tmp = new TempDirectory("tls-shards");
        var (ca, (cert, key), (workerCert, workerKey)) = MakeCertificates(tmp);
        int port = DistributedTests.FreePort();
        var env = new Dictionary<string, string> { ["DISTGPT_DATA"] = TestData.CorpusPath(), ["DISTGPT_CLUSTER_TOKEN"] = "tls-shards-token" };
        using var coordinator = CliRunner.Start(CliRunner.Split(
            $"coordinator --listen https://127.0.0.1:{port} --tls-cert {cert} --tls-key {key} --tls-ca {ca} --min-workers 2 --shards auto {ShardedModel} --max-iters 5 --eval-interval 5 --out {tmp.Combine("out")}"), env);
        string worker = $"worker --coordinator https://127.0.0.1:{port} --threads 1 --tls-ca {ca} --tls-cert {workerCert} --tls-key {workerKey} --name";
        using var alpha = CliRunner.Start(CliRunner.Split($"{worker} alpha"), env);
        using var beta = CliRunner.Start(CliRunner.Split($"{worker} beta"), env);
        var r = coordinator.WaitForExit(TimeSpan.FromMinutes(3));
        Assert.True(r.ExitCode == 0, $"{r}\n--- alpha ---\n{alpha.StdOut}{alpha.StdErr}\n--- beta ---\n{beta.StdOut}{beta.StdErr}");
        var last = DistributedTests.Metrics(tmp.Combine("out"))[^1].GetProperty("node_bytes");
        foreach (var name in new[] { "alpha", "beta" })
            Assert.True(last.GetProperty(name).GetProperty("peer").GetProperty("sent").GetInt64() > 0, last.ToString());
    }
}
