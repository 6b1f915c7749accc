using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Xunit;

namespace DistGpt.Tests;

/// <summary>Cluster mode over TLS: the coordinator serves --tls-cert/--tls-key, workers trust it through --tls-ca.</summary>
[Collection(ProcessHeavy.Name)]
public sealed class TlsTests
{
    const string Model = "--n-layer 2 --n-head 2 --n-embd 32 --block-size 32 --batch-size 8 --eval-iters 1 --threads 1";

    /// <summary>A CA and a server certificate for 127.0.0.1 signed by it, as PEM files.</summary>
    static (string Ca, string Cert, string Key) MakeCertificates(TempDirectory dir)
    {
        using var caKey = RSA.Create(2048);
        var caRequest = new CertificateRequest("CN=DistGpt test CA", caKey, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        caRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        caRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign, true));
        using var ca = caRequest.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));

        using var serverKey = RSA.Create(2048);
        var request = new CertificateRequest("CN=127.0.0.1", serverKey, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        var san = new SubjectAlternativeNameBuilder();
        san.AddIpAddress(IPAddress.Loopback);
        request.CertificateExtensions.Add(san.Build());
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
        using var server = request.Create(ca, DateTimeOffset.UtcNow.AddHours(-1), DateTimeOffset.UtcNow.AddHours(12), [1, 2, 3, 4]);

        string caPath = dir.Combine("ca.pem"), certPath = dir.Combine("server.pem"), keyPath = dir.Combine("server.key");
        File.WriteAllText(caPath, ca.ExportCertificatePem());
        File.WriteAllText(certPath, server.ExportCertificatePem());
        File.WriteAllText(keyPath, serverKey.ExportPkcs8PrivateKeyPem());
        return (caPath, certPath, keyPath);
    }

    [Fact]
    public void WorkersTrustingTheCaTrainOverTlsAndAnUntrustingWorkerIsRefused()
    {
        using var tmp = new TempDirectory("tls");
        var (ca, cert, key) = MakeCertificates(tmp);
        int port = DistributedTests.FreePort();
        var env = new Dictionary<string, string> { ["DISTGPT_DATA"] = TestData.CorpusPath(), ["DISTGPT_CLUSTER_TOKEN"] = "tls-token" };
        using var coordinator = CliRunner.Start(CliRunner.Split(
            $"coordinator --listen https://127.0.0.1:{port} --tls-cert {cert} --tls-key {key} --min-workers 1 {Model} --max-iters 5 --eval-interval 5 --out {tmp.Combine("out")}"), env);
        Assert.True(coordinator.WaitForOutput(o => o.Contains("listening on https://127.0.0.1"), TimeSpan.FromSeconds(60)), coordinator.StdOut + coordinator.StdErr);

        var untrusting = CliRunner.Run($"worker --coordinator https://127.0.0.1:{port} --name doubter --threads 1", env, TimeSpan.FromSeconds(60));
        Assert.Equal(2, untrusting.ExitCode);
        Assert.Contains("TLS", untrusting.StdErr);

        var trusting = CliRunner.Run($"worker --coordinator https://127.0.0.1:{port} --name believer --threads 1 --tls-ca {ca}", env, TimeSpan.FromMinutes(2));
        Assert.True(trusting.ExitCode == 0, trusting.ToString());
        var r = coordinator.WaitForExit(TimeSpan.FromMinutes(1));
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(5, DistributedTests.Metrics(tmp.Combine("out")).Count);
    }
}
