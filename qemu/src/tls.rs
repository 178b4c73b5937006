//! TLS credentials for NBD over TLS: the directory layout QEMU's `tls-creds-x509` uses, so
//! that one directory serves the guest (server side), QEMU's NBD client, `qemu-img --object
//! tls-creds-x509,dir=DIR`, and libnbd's `nbds://...?tls-certificates=DIR`:
//!
//! | file | what |
//! |---|---|
//! | `ca-cert.pem` | the CA that signed both certificates (clients verify the server with it) |
//! | `server-cert.pem`, `server-key.pem` | the guest's certificate and key |
//! | `client-cert.pem`, `client-key.pem` | a client certificate, for servers that verify peers |
//!
//! `tandem tls create` makes a throwaway CA and certificates for tests and first use (ECDSA
//! P-256, or RSA with `--rsa`); real deployments bring their own files in the same layout.
//! Keys are written 0600.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The CA certificate.
pub const CA_CERT: &str = "ca-cert.pem";
/// The server's certificate (chain).
pub const SERVER_CERT: &str = "server-cert.pem";
/// The server's private key.
pub const SERVER_KEY: &str = "server-key.pem";
/// A client certificate.
pub const CLIENT_CERT: &str = "client-cert.pem";
/// Its private key.
pub const CLIENT_KEY: &str = "client-key.pem";

/// Names the certificates created here are valid for, besides those asked for: the host's
/// forwards (`127.0.0.1`, `localhost`) and the guest's default user-network address.
pub const DEFAULT_NAMES: [&str; 3] = ["127.0.0.1", "localhost", "10.0.2.15"];

/// What the guest needs from a credentials directory, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    /// `ca-cert.pem`'s text.
    pub ca_cert: String,
    /// `server-cert.pem`'s text.
    pub server_cert: String,
    /// `server-key.pem`'s text.
    pub server_key: String,
}

impl ServerFiles {
    /// Reads `dir`'s CA, server certificate and key; names a missing or unreadable file.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let read = |name: &str| -> anyhow::Result<String> {
            let p = dir.join(name);
            let text = fs::read_to_string(&p).with_context(|| {
                format!(
                    "TLS credentials: cannot read {} (the directory needs {CA_CERT}, \
                     {SERVER_CERT} and {SERVER_KEY}; `tandem tls create --dir {}` makes a \
                     throwaway set)",
                    p.display(),
                    dir.display()
                )
            })?;
            if !text.contains("-----BEGIN ") {
                bail!("TLS credentials: {} holds no PEM block", p.display());
            }
            Ok(text)
        };
        Ok(Self {
            ca_cert: read(CA_CERT)?,
            server_cert: read(SERVER_CERT)?,
            server_key: read(SERVER_KEY)?,
        })
    }
}

/// A guest boot module's text (`tandem_formats::boot_module`): `words` (the management key's word,
/// or nothing) and, with `files`, the TLS sections. Written 0600 by its callers: it holds
/// secrets.
pub fn boot_module_text(words: &str, files: Option<&ServerFiles>) -> anyhow::Result<String> {
    use tandem_formats::boot_module::{compose, TLS_CA_CERT, TLS_SERVER_CERT, TLS_SERVER_KEY};
    let sections: Vec<(&str, &str)> = match files {
        Some(f) => vec![
            (TLS_CA_CERT, f.ca_cert.as_str()),
            (TLS_SERVER_CERT, f.server_cert.as_str()),
            (TLS_SERVER_KEY, f.server_key.as_str()),
        ],
        None => Vec::new(),
    };
    compose(words, &sections).map_err(|e| anyhow::anyhow!("the guest's boot module: {e}"))
}

/// The key algorithm of [`create`]'s keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256 with SHA-256.
    EcdsaP256,
    /// RSA, 2048 bits, PKCS#1 v1.5 signatures with SHA-256.
    Rsa2048,
}

/// Makes a throwaway CA in `dir` (created if missing) and a server and a client certificate
/// it signs; the server's is valid for [`DEFAULT_NAMES`] and `names` (IP addresses or DNS
/// names). Refuses to overwrite existing files. Returns the files written.
pub fn create(dir: &Path, names: &[String], kind: KeyKind) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for f in [CA_CERT, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY] {
        if dir.join(f).exists() {
            bail!(
                "{} exists: not overwriting TLS credentials (remove them first)",
                dir.join(f).display()
            );
        }
    }
    let ca_key = new_key(kind)?;
    let ca_params = ca_params();
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut all: Vec<String> = DEFAULT_NAMES.iter().map(|s| s.to_string()).collect();
    all.extend(names.iter().cloned());
    all.dedup();
    let server_key = new_key(kind)?;
    let server = leaf_params("tandem guest", &all, ExtendedKeyUsagePurpose::ServerAuth)?
        .signed_by(&server_key, &issuer)?;
    let client_key = new_key(kind)?;
    let client = leaf_params("tandem client", &[], ExtendedKeyUsagePurpose::ClientAuth)?
        .signed_by(&client_key, &issuer)?;

    let files = [
        (CA_CERT, ca_cert.pem(), 0o644),
        (SERVER_CERT, server.pem(), 0o644),
        (SERVER_KEY, server_key.serialize_pem(), 0o600),
        (CLIENT_CERT, client.pem(), 0o644),
        (CLIENT_KEY, client_key.serialize_pem(), 0o600),
    ];
    let mut written = Vec::new();
    for (name, text, mode) in files {
        let p = dir.join(name);
        write_new(&p, text.as_bytes(), mode)?;
        written.push(p);
    }
    Ok(written)
}

/// `tandem tls create`.
pub fn create_cli(a: &crate::cli::TlsCreateArgs) -> anyhow::Result<i32> {
    let kind = if a.rsa {
        KeyKind::Rsa2048
    } else {
        KeyKind::EcdsaP256
    };
    for p in create(&a.dir, &a.names, kind)? {
        println!("{}", p.display());
    }
    Ok(0)
}

fn new_key(kind: KeyKind) -> anyhow::Result<KeyPair> {
    Ok(match kind {
        KeyKind::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        KeyKind::Rsa2048 => rsa_key()?,
    })
}

/// An RSA key: `ring` cannot generate one, so `openssl genpkey` does (it is on every
/// machine of this project's kind); the PKCS#8 PEM is read back.
fn rsa_key() -> anyhow::Result<KeyPair> {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .context("running openssl genpkey (package openssl) for an RSA key")?;
    if !out.status.success() {
        bail!(
            "openssl genpkey failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let pem = String::from_utf8(out.stdout).context("openssl's key is not text")?;
    KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256)
        .context("reading openssl's RSA key")
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Tandem throwaway CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut p);
    p
}

fn leaf_params(
    cn: &str,
    names: &[String],
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    for n in names {
        p.subject_alt_names.push(match n.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                n.clone()
                    .try_into()
                    .with_context(|| format!("{n:?} is neither an IP address nor a DNS name"))?,
            ),
        });
    }
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![usage];
    p.use_authority_key_identifier_extension = true;
    validity(&mut p);
    Ok(p)
}

/// From a day ago (clock skew between host and guest) for ten years.
fn validity(p: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(3650);
}

fn write_new(p: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(p)
        .with_context(|| format!("creating {}", p.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_the_qemu_layout_and_reads_it_back() {
        let tmp = crate::scratch::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        let files = create(
            &dir,
            &["192.168.7.9".into(), "nas.example".into()],
            KeyKind::EcdsaP256,
        )
        .unwrap();
        assert_eq!(files.len(), 5);
        for (f, mode) in [(SERVER_KEY, 0o600), (CLIENT_KEY, 0o600), (CA_CERT, 0o644)] {
            let m = fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, mode, "{f}");
        }
        let s = ServerFiles::read(&dir).unwrap();
        assert!(s.server_key.contains("PRIVATE KEY") && s.ca_cert.contains("CERTIFICATE"));
        // openssl agrees: the server certificate chains to the CA, for the names asked.
        let out = std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(dir.join(CA_CERT))
            .args(["-verify_ip", "192.168.7.9"])
            .arg(dir.join(SERVER_CERT))
            .output()
            .expect("openssl (package openssl) to check the certificates");
        assert!(
            out.status.success(),
            "openssl verify: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Never overwritten.
        let e = create(&dir, &[], KeyKind::EcdsaP256).unwrap_err();
        assert!(format!("{e:#}").contains("not overwriting"), "{e:#}");
        // A missing file is named.
        fs::remove_file(dir.join(SERVER_KEY)).unwrap();
        let e = ServerFiles::read(&dir).unwrap_err();
        assert!(format!("{e:#}").contains(SERVER_KEY), "{e:#}");
    }
}
