//! TLS for the guest's services (NBD's `NBD_OPT_STARTTLS`: `nbd::tls`): the server
//! configuration made from the PEM files the host delivers.
//!
//! The guest has no OS, so the two things a TLS stack takes from one are named by the kernel:
//! random bytes ([`Entropy`], the CPU's RDSEED/RDRAND) and the wall clock ([`Clock`], the RTC),
//! which rustls needs only to check client certificates' validity dates. Everything else here
//! is plain data in, data out, and host-tested.
//!
//! The files are those of QEMU's `tls-creds-x509` directories: `ca-cert.pem` (the CA that
//! signs clients' certificates, and usually the server's), `server-cert.pem` (the server's
//! chain, leaf first), `server-key.pem` (its key: PKCS#8, SEC1 or PKCS#1).

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::time_provider::TimeProvider;
use rustls::{RootCertStore, ServerConfig};

pub mod provider;
pub mod rng;

pub use rng::{Entropy, Randomness};

/// The wall clock: seconds since the UNIX epoch, `None` when unknown (then client
/// certificates cannot be checked and are refused).
pub type Clock = fn() -> Option<u64>;

/// The PEM files a server is made from (QEMU's `tls-creds-x509` names).
#[derive(Debug, Clone, Copy)]
pub struct Pem<'a> {
    /// `ca-cert.pem`: one or more CA certificates; client certificates must chain to one of
    /// them when `verify_peer` is on.
    pub ca_cert: &'a [u8],
    /// `server-cert.pem`: the server's certificate, then any intermediates.
    pub server_cert: &'a [u8],
    /// `server-key.pem`: the server certificate's private key.
    pub server_key: &'a [u8],
}

/// Why a TLS configuration could not be made.
#[derive(Debug)]
pub enum TlsError {
    /// The entropy source gave nothing, or the same bytes twice.
    NoEntropy,
    /// A PEM file had nothing usable (which file, and why).
    Pem(&'static str, String),
    /// rustls refused the certificates or key.
    Config(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::NoEntropy => f.write_str(
                "no usable hardware randomness (RDSEED/RDRAND gave nothing or a constant)",
            ),
            TlsError::Pem(file, why) => write!(f, "{file}: {why}"),
            TlsError::Config(why) => write!(f, "TLS configuration refused: {why}"),
        }
    }
}

/// A server-side TLS configuration, shared by every connection (cheap to clone).
#[derive(Clone)]
pub struct TlsConfig {
    pub(crate) server: Arc<ServerConfig>,
    verify_peer: bool,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("verify_peer", &self.verify_peer)
            .finish()
    }
}

#[derive(Debug)]
struct WallClock(Clock);

impl TimeProvider for WallClock {
    fn current_time(&self) -> Option<UnixTime> {
        (self.0)().map(|s| UnixTime::since_unix_epoch(Duration::from_secs(s)))
    }
}

fn certs(file: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(file, format!("{e:?}")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem(file, "no CERTIFICATE section".into()));
    }
    Ok(certs)
}

impl TlsConfig {
    /// Whether clients must present a certificate signed by the CA.
    pub fn verify_peer(&self) -> bool {
        self.verify_peer
    }

    /// A server configuration: TLS 1.3 and 1.2, the server's chain and key from `pem`;
    /// `verify_peer` (QEMU's `verify-peer`): clients must present a certificate signed by
    /// `pem.ca_cert`, else none is asked for.
    pub fn from_pem(
        pem: &Pem<'_>,
        verify_peer: bool,
        entropy: Entropy,
        clock: Clock,
    ) -> Result<Self, TlsError> {
        Self::build(pem, verify_peer, entropy, clock, None)
    }

    /// [`Self::from_pem`], offering only `suites` when given (tests pin one suite).
    pub(crate) fn build(
        pem: &Pem<'_>,
        verify_peer: bool,
        entropy: Entropy,
        clock: Clock,
        suites: Option<&[rustls::SupportedCipherSuite]>,
    ) -> Result<Self, TlsError> {
        let rand = Randomness(entropy);
        if !rand.works() {
            return Err(TlsError::NoEntropy);
        }
        let ca = certs("ca-cert.pem", pem.ca_cert)?;
        let chain = certs("server-cert.pem", pem.server_cert)?;
        let key = PrivateKeyDer::from_pem_slice(pem.server_key)
            .map_err(|e| TlsError::Pem("server-key.pem", format!("{e:?}")))?;
        let config = |e: rustls::Error| TlsError::Config(format!("{e}"));
        let mut provider = provider::provider(rand);
        if let Some(suites) = suites {
            Arc::make_mut(&mut provider).cipher_suites = suites.to_vec();
        }
        let verifier = if verify_peer {
            let mut roots = RootCertStore::empty();
            for c in ca {
                roots
                    .add(c)
                    .map_err(|e| TlsError::Pem("ca-cert.pem", format!("{e}")))?;
            }
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsError::Config(format!("{e}")))?
        } else {
            WebPkiClientVerifier::no_client_auth()
        };
        let mut server = ServerConfig::builder_with_details(provider, Arc::new(WallClock(clock)))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(config)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(config)?;
        // No session resumption: nothing stores sessions, so tickets would only cost bytes.
        server.send_tls13_tickets = 0;
        Ok(Self {
            server: Arc::new(server),
            verify_peer,
        })
    }
}
