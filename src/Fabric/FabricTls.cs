using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using DistGpt.Model;
using Orleans.Connections.Security;

namespace DistGpt.Fabric;

/// <summary>TLS between silos and to the gateway: every silo presents a certificate signed by the cluster's CA and accepts
/// only peers whose certificate chains to it (silos are addressed by IP, so the name is not checked; the cluster token's
/// handshake then runs inside the encrypted connection). A client (`distgpt status`) needs no certificate of its own but
/// checks the gateway's.</summary>
public sealed record FabricTls(X509Certificate2? Certificate, X509Certificate2 Authority)
{
    /// <summary>TLS is all or nothing: an https:// address (the coordinator's --listen, a worker's --coordinator) needs this
    /// node's certificate and key and the cluster's CA, since the silos use them too; TLS files with http:// would be
    /// silently unused.</summary>
    public static FabricTls? For(Uri address, string flag, string? cert, string? key, string? ca)
    {
        if (address.Scheme == "https")
        {
            if (cert == null || key == null || ca == null)
                throw new ConfigException($"{flag} {address} uses TLS: give --tls-cert/--tls-key (this node's certificate) and --tls-ca (the cluster's CA, which signed every node's)");
            return Load(cert, key, ca);
        }
        if (cert != null || key != null || ca != null)
            throw new ConfigException($"--tls-cert/--tls-key/--tls-ca are given but {flag} {address} is plain http://; use https:// for TLS");
        return null;
    }

    /// <summary>Loads PEM files, with one clear line naming the file that is missing or unreadable.</summary>
    public static FabricTls Load(string? certPath, string? keyPath, string caPath, string certFlag = "--tls-cert", string keyFlag = "--tls-key", string caFlag = "--tls-ca")
    {
        if ((certPath != null) != (keyPath != null)) throw new ConfigException($"{certFlag} and {keyFlag} go together");
        X509Certificate2 authority;
        try { authority = X509CertificateLoader.LoadCertificateFromFile(caPath); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or CryptographicException)
        { throw new ConfigException($"cannot load {caFlag} '{caPath}': {OneLine(e)}"); }
        if (certPath == null) return new FabricTls(null, authority);
        try { return new FabricTls(X509Certificate2.CreateFromPemFile(certPath, keyPath), authority); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or CryptographicException or ArgumentException)
        { throw new ConfigException($"cannot load {certFlag} '{certPath}' / {keyFlag} '{keyPath}': {OneLine(e)}"); }
    }

    static string OneLine(Exception e) => e.Message.ReplaceLineEndings(" ").Trim();

    /// <summary>Orleans' TLS settings: between silos both sides show a certificate of this cluster's CA; at the gateway only the
    /// silo does (a client proves itself with the token), so there the other side's certificate is optional. A client
    /// requires the gateway's.</summary>
    public TlsOptions Options(bool peersShowCertificates)
    {
        var mode = peersShowCertificates ? RemoteCertificateMode.RequireCertificate : RemoteCertificateMode.AllowCertificate;
        var o = new TlsOptions
        {
            LocalCertificate = Certificate, RemoteCertificateMode = mode,
            ClientCertificateMode = Certificate != null ? mode : RemoteCertificateMode.AllowCertificate, // a client has none to show
        };
        o.RemoteCertificateValidation = (certificate, _, _) => SignedByAuthority(certificate);
        return o;
    }

    /// <summary>The parameter shards' peer plane, worker to worker: mutual TLS with the nodes' own certificates, each side
    /// accepting only one the cluster's CA signed (workers are addressed by IP, so the name is not checked, as between
    /// silos); the run's peer secret is then proven inside.</summary>
    public SslServerAuthenticationOptions PeerServerOptions() =>
        new() { ServerCertificate = PeerCertificate, ClientCertificateRequired = true, RemoteCertificateValidationCallback = PeerSignedByAuthority };

    public SslClientAuthenticationOptions PeerClientOptions(string host) =>
        new() { TargetHost = host, ClientCertificates = [PeerCertificate], RemoteCertificateValidationCallback = PeerSignedByAuthority };

    X509Certificate2 PeerCertificate => Certificate ?? throw new InvalidOperationException("a peer plane needs this node's certificate");

    bool PeerSignedByAuthority(object sender, X509Certificate? certificate, X509Chain? chain, SslPolicyErrors errors) =>
        certificate is X509Certificate2 c && SignedByAuthority(c);

    public bool SignedByAuthority(X509Certificate2 certificate)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(Authority);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        return chain.Build(certificate);
    }
}
