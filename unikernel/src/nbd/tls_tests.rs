//! NBD over TLS, the real server against a rustls client over in-memory pipes: TLS 1.3 and
//! 1.2 with every cipher suite and server key type, a wrong CA, plaintext clients under
//! `require`, downgrade attempts, client certificates under `verify_peer`, and the session's
//! buffers staying bounded against a client that floods it or never reads.
//!
//! Certificates are made at test time with rcgen. The client runs rustls's unbuffered API
//! with the guest's own provider: a `std` rustls here would turn `std` on in the guest's rustls
//! (cargo unifies features; see the root Cargo.toml).

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use std::sync::OnceLock;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::unbuffered::ConnectionState;
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedCipherSuite};

use super::server::{ConnState, Server, Stream};
use super::server_tests::{request, server, Pipe};
use super::tls::{Session, TlsMode, TlsSettings, MAX_IN, MAX_RECORD, OUT_SOFT};
use super::wire::{self, cmd, opt, rep};
use crate::tls::{provider, Pem, Randomness, TlsConfig, TlsError};

pub(crate) fn host_entropy(buf: &mut [u8]) -> bool {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .is_ok()
}

pub(crate) fn host_clock() -> Option<u64> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// A CA and what it signed, as PEM.
pub(crate) struct Pki {
    pub(crate) ca: String,
    pub(crate) server_cert: String,
    pub(crate) server_key: String,
    issuer: Issuer<'static, KeyPair>,
}

/// The server key types the tests run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    P256,
    Ed25519,
    Rsa,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p
}

/// One 2048-bit RSA key per test run (PKCS#8 DER, made with the guest's own RSA crate).
fn rsa_key_der() -> &'static [u8] {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| {
        use rsa::pkcs8::EncodePrivateKey;
        let mut rng = Randomness(host_entropy).generator().unwrap();
        let key = rsa::PrivateKey::new(&mut rng, 2048).unwrap();
        key.to_pkcs8_der().unwrap().as_bytes().to_vec()
    })
}

fn key_pair(kind: KeyKind) -> KeyPair {
    match kind {
        KeyKind::P256 => KeyPair::generate().unwrap(),
        KeyKind::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
        KeyKind::Rsa => KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls::pki_types::PrivatePkcs8KeyDer::from(rsa_key_der()),
            &rcgen::PKCS_RSA_SHA256,
        )
        .unwrap(),
    }
}

impl Pki {
    pub(crate) fn new(name: &str, server_key: KeyKind) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let params = ca_params(name);
        let ca = params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(params, ca_key);
        let key = key_pair(server_key);
        let cert = CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        Self {
            ca,
            server_cert: cert.pem(),
            server_key: key.serialize_pem(),
            issuer,
        }
    }

    /// A client certificate signed by this CA: (chain PEM, key PEM).
    pub(crate) fn client(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "client");
        (
            p.signed_by(&key, &self.issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    }

    pub(crate) fn config(&self, verify_peer: bool) -> TlsConfig {
        let pem = Pem {
            ca_cert: self.ca.as_bytes(),
            server_cert: self.server_cert.as_bytes(),
            server_key: self.server_key.as_bytes(),
        };
        TlsConfig::from_pem(&pem, verify_peer, host_entropy, host_clock).unwrap()
    }
}

/// What the client offers and proves.
struct ClientOpts<'a> {
    trusts: &'a str,
    version: &'static rustls::SupportedProtocolVersion,
    suite: Option<SupportedCipherSuite>,
    cert: Option<(String, String)>,
}

fn client_config(o: &ClientOpts<'_>) -> Arc<ClientConfig> {
    let mut p = (*provider::provider(Randomness(host_entropy))).clone();
    if let Some(s) = o.suite {
        p.cipher_suites = vec![s];
    }
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(o.trusts.as_bytes()).unwrap())
        .unwrap();
    #[derive(Debug)]
    struct Clock;
    impl rustls::time_provider::TimeProvider for Clock {
        fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
            Some(rustls::pki_types::UnixTime::since_unix_epoch(
                core::time::Duration::from_secs(host_clock()?),
            ))
        }
    }
    let b = ClientConfig::builder_with_details(Arc::new(p), Arc::new(Clock))
        .with_protocol_versions(&[o.version])
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match &o.cert {
        Some((chain, key)) => b
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    })
}

/// The client's TLS, driven by hand like the server's.
struct TlsClient {
    conn: UnbufferedClientConnection,
    incoming: Vec<u8>,
    plain: Vec<u8>,
    error: Option<rustls::Error>,
}

impl TlsClient {
    fn new(config: Arc<ClientConfig>) -> Self {
        let name = ServerName::try_from("localhost").unwrap();
        Self {
            conn: UnbufferedClientConnection::new(config, name).unwrap(),
            incoming: Vec::new(),
            plain: Vec::new(),
            error: None,
        }
    }

    /// Runs rustls over what arrived, queuing its records on `wire`; seals `app` once it
    /// may (returns whether `app` was sealed).
    fn drive(&mut self, wire: &mut VecDeque<u8>, app: &[u8]) -> bool {
        let mut sealed = app.is_empty();
        for _ in 0..1000 {
            // After a failure, one more call hands over the alert (as the server does).
            let failed = self.error.is_some();
            let st = self.conn.process_tls_records(&mut self.incoming);
            let discard = st.discard;
            let mut stop = false;
            match st.state {
                Err(e) => {
                    stop = failed;
                    self.error.get_or_insert(e);
                }
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    while let Some(Ok(rec)) = r.next_record() {
                        self.plain.extend_from_slice(rec.payload);
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    let mut buf = vec![0; 1 << 16];
                    let n = e.encode(&mut buf).unwrap();
                    wire.extend(&buf[..n]);
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    if !sealed && self.error.is_none() {
                        let mut buf = vec![0; app.len() + 64 * (app.len() / 16384 + 2)];
                        let n = w.encrypt(app, &mut buf).unwrap();
                        wire.extend(&buf[..n]);
                        sealed = true;
                    }
                    stop = true;
                }
                Ok(ConnectionState::PeerClosed) => {}
                Ok(_) => stop = true,
            }
            self.incoming.drain(..discard);
            if stop || failed {
                break;
            }
        }
        sealed
    }
}

/// An NBD client that may switch to TLS.
struct Peer {
    slot: usize,
    pipe: Pipe,
    /// Bytes of `pipe.from_server` taken.
    at: usize,
    tls: Option<TlsClient>,
    /// NBD bytes from the server (decrypted once in TLS), not yet parsed.
    plain: Vec<u8>,
    /// Plaintext waiting for the TLS handshake before it can be sealed.
    pending: Vec<u8>,
    closed: bool,
}

impl Peer {
    fn connect(s: &mut Server, slot: usize) -> Self {
        s.accept(slot);
        let mut p = Peer {
            slot,
            pipe: Pipe {
                send_limit: 5000,
                ..Default::default()
            },
            at: 0,
            tls: None,
            plain: Vec::new(),
            pending: Vec::new(),
            closed: false,
        };
        p.send(&(wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES).to_be_bytes());
        assert!(spin(s, &mut p, |p| p.plain.len() >= 18));
        assert_eq!(wire::be64(&p.plain), wire::NBDMAGIC);
        p.plain.drain(..18);
        p
    }

    fn pump(&mut self) {
        let new = &self.pipe.from_server[self.at..];
        self.at = self.pipe.from_server.len();
        match &mut self.tls {
            None => self.plain.extend_from_slice(new),
            Some(t) => {
                t.incoming.extend_from_slice(new);
                if t.drive(&mut self.pipe.to_server, &self.pending) {
                    self.pending.clear();
                }
                self.plain.append(&mut t.plain);
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        if self.tls.is_some() {
            self.pending.extend_from_slice(bytes);
            self.pump();
        } else {
            self.pipe.to_server.extend(bytes);
        }
    }

    fn option(&mut self, code: u32, data: &[u8]) {
        let mut v = Vec::new();
        v.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        self.send(&v);
    }

    /// The next complete option reply: (reply type, data).
    fn take_reply(&mut self) -> Option<(u32, Vec<u8>)> {
        let b = &self.plain;
        if b.len() < 20 || b.len() < 20 + wire::be32(&b[16..]) as usize {
            return None;
        }
        assert_eq!(wire::be64(b), wire::REPLY_MAGIC);
        let (kind, len) = (wire::be32(&b[12..]), wire::be32(&b[16..]) as usize);
        let data = b[20..20 + len].to_vec();
        self.plain.drain(..20 + len);
        Some((kind, data))
    }

    /// Sends an option and collects its replies up to the final one (None: closed first).
    fn ask(&mut self, s: &mut Server, code: u32, data: &[u8]) -> Option<Vec<(u32, Vec<u8>)>> {
        self.option(code, data);
        let mut got = Vec::new();
        loop {
            while let Some(r) = self.take_reply() {
                let last = r.0 != rep::SERVER && r.0 != rep::INFO && r.0 != rep::META_CONTEXT;
                got.push(r);
                if last {
                    return Some(got);
                }
            }
            if !spin(s, self, |p| p.closed || p.plain.len() >= 20) {
                return None;
            }
            if self.closed && self.take_reply().is_none() && self.plain.len() < 20 {
                return None;
            }
        }
    }

    /// STARTTLS; on its ack, the TLS handshake. Ok: the reply type of STARTTLS.
    fn starttls(&mut self, s: &mut Server, config: Arc<ClientConfig>) -> u32 {
        let r = self
            .ask(s, opt::STARTTLS, &[])
            .expect("a reply to STARTTLS");
        if r[0].0 != rep::ACK {
            return r[0].0;
        }
        let mut t = TlsClient::new(config);
        t.incoming.append(&mut self.plain);
        self.tls = Some(t);
        self.pump();
        spin(s, self, |p| {
            p.closed
                || p.tls
                    .as_ref()
                    .is_some_and(|t| t.error.is_some() || !t.conn.is_handshaking())
        });
        rep::ACK
    }

    fn tls_error(&self) -> Option<&rustls::Error> {
        self.tls.as_ref()?.error.as_ref()
    }

    /// GO to `name` (no structured replies): Ok, or the error reply.
    fn go(&mut self, s: &mut Server, name: &str) -> Result<(), u32> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        let r = self.ask(s, opt::GO, &d).ok_or(0u32)?;
        match r.last() {
            Some((rep::ACK, _)) => Ok(()),
            Some((e, _)) => Err(*e),
            None => Err(0),
        }
    }

    /// One simple-reply request: (error, data read).
    fn request(
        &mut self,
        s: &mut Server,
        kind: u16,
        offset: u64,
        payload: &[u8],
        len: u32,
    ) -> (u32, Vec<u8>) {
        let mut r = request(kind, 0, 9, offset, len);
        r.extend_from_slice(payload);
        self.send(&r);
        let want = 16 + if kind == cmd::READ { len as usize } else { 0 };
        assert!(spin(s, self, |p| p.plain.len() >= 16), "no reply");
        let error = wire::be32(&self.plain[4..]);
        let want = if error == 0 { want } else { 16 };
        assert!(spin(s, self, |p| p.plain.len() >= want), "reply cut short");
        let data = self.plain[16..want].to_vec();
        self.plain.drain(..want);
        (error, data)
    }
}

/// Services the client and the disks until `done` (false: not within the bound).
fn spin(s: &mut Server, p: &mut Peer, mut done: impl FnMut(&Peer) -> bool) -> bool {
    for _ in 0..20_000 {
        if done(p) {
            return true;
        }
        if !p.closed && s.service(p.slot, &mut p.pipe) == ConnState::Close {
            p.closed = true;
        }
        s.poll_disks();
        p.pump();
        if p.closed && p.at == p.pipe.from_server.len() && !done(p) {
            p.pump();
            return done(p);
        }
    }
    done(p)
}

fn tls_server(pki: &Pki, mode: TlsMode, verify_peer: bool) -> Server {
    let mut s = server(64, 4);
    s.set_tls(TlsSettings::new(mode, Some(pki.config(verify_peer))).unwrap());
    s
}

fn opts<'a>(pki: &'a Pki, version: &'static rustls::SupportedProtocolVersion) -> ClientOpts<'a> {
    ClientOpts {
        trusts: &pki.ca,
        version,
        suite: None,
        cert: None,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// STARTTLS, LIST, GO, and a WRITE then READ of `len` bytes, over TLS.
fn round_trip(pki: &Pki, o: &ClientOpts<'_>, len: u32) -> (ProtocolVersion, Server) {
    let mut s = tls_server(pki, TlsMode::Require, false);
    let mut p = Peer::connect(&mut s, 0);
    assert_eq!(p.starttls(&mut s, client_config(o)), rep::ACK);
    assert!(p.tls_error().is_none(), "client: {:?}", p.tls_error());
    assert!(s.is_tls(0) && !p.closed);
    let version = s.tls_session(0).and_then(Session::version).unwrap();
    let list = p.ask(&mut s, opt::LIST, &[]).unwrap();
    assert_eq!(list.iter().filter(|r| r.0 == rep::SERVER).count(), 2);
    p.go(&mut s, "disk0").unwrap();
    let data = pattern(len as usize, 7);
    assert_eq!(p.request(&mut s, cmd::WRITE, 4096, &data, len).0, 0);
    let (e, back) = p.request(&mut s, cmd::READ, 4096, &[], len);
    assert_eq!(e, 0);
    assert!(back == data, "data read back differs");
    (version, s)
}

#[test]
fn tls13_and_tls12_carry_reads_and_writes_with_every_suite_and_key() {
    use crate::tls::provider as p;
    let tls13 = [
        p::TLS13_AES_128_GCM_SHA256,
        p::TLS13_AES_256_GCM_SHA384,
        p::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    for kind in [KeyKind::P256, KeyKind::Ed25519, KeyKind::Rsa] {
        let pki = Pki::new("test CA", kind);
        let tls12 = if kind == KeyKind::Rsa {
            [
                p::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                p::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                p::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            ]
        } else {
            [
                p::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                p::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                p::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            ]
        };
        for (version, suites, want) in [
            (&rustls::version::TLS13, tls13, ProtocolVersion::TLSv1_3),
            (&rustls::version::TLS12, tls12, ProtocolVersion::TLSv1_2),
        ] {
            for suite in suites {
                let o = ClientOpts {
                    suite: Some(suite),
                    ..opts(&pki, version)
                };
                let (got, _) = round_trip(&pki, &o, 8192);
                assert_eq!(got, want, "{kind:?} {suite:?}");
            }
        }
    }
}

#[test]
fn large_requests_cross_many_records_both_ways() {
    let pki = Pki::new("test CA", KeyKind::P256);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (_, s) = round_trip(&pki, &opts(&pki, version), 1 << 20);
        assert_eq!(s.stats.closed_bad, 0);
    }
}

#[test]
fn a_client_trusting_another_ca_fails_and_is_closed() {
    let pki = Pki::new("test CA", KeyKind::P256);
    let other = Pki::new("another CA", KeyKind::P256);
    let mut s = tls_server(&pki, TlsMode::Require, false);
    let mut p = Peer::connect(&mut s, 0);
    let o = ClientOpts {
        trusts: &other.ca,
        ..opts(&pki, &rustls::version::TLS13)
    };
    assert_eq!(p.starttls(&mut s, client_config(&o)), rep::ACK);
    let e = p.tls_error().expect("the client refuses the server");
    assert!(
        matches!(e, rustls::Error::InvalidCertificate(_)),
        "client: {e}"
    );
    // The client's alert fails the server's session, which closes the connection.
    p.pump();
    spin(&mut s, &mut p, |p| p.closed);
    assert!(p.closed);
    assert_eq!(s.stats.closed_bad, 1);
}

#[test]
fn under_require_a_plaintext_client_sees_no_export_and_gets_tls_reqd() {
    let pki = Pki::new("test CA", KeyKind::P256);
    let mut s = tls_server(&pki, TlsMode::Require, false);
    let mut p = Peer::connect(&mut s, 0);
    let list = p.ask(&mut s, opt::LIST, &[]).unwrap();
    assert_eq!(list, vec![(rep::ERR_TLS_REQD, list[0].1.clone())]);
    assert_eq!(p.go(&mut s, "disk0"), Err(rep::ERR_TLS_REQD));
    assert_eq!(p.go(&mut s, ""), Err(rep::ERR_TLS_REQD));
    let info = p.ask(&mut s, opt::INFO, &[0, 0, 0, 0, 0, 0]).unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].0, rep::ERR_TLS_REQD);
    for code in [opt::STRUCTURED_REPLY, opt::LIST_META_CONTEXT, 99] {
        let r = p.ask(&mut s, code, &[]).unwrap();
        assert_eq!(r[0].0, rep::ERR_TLS_REQD, "option {code}");
    }
    // Nothing the server sent names an export.
    assert!(!p.pipe.from_server.windows(5).any(|w| w == b"disk0"));
    // EXPORT_NAME cannot be refused with a reply: the connection closes, nothing sent.
    let before = p.pipe.from_server.len();
    p.option(opt::EXPORT_NAME, b"disk0");
    assert!(spin(&mut s, &mut p, |p| p.closed));
    assert_eq!(p.pipe.from_server.len(), before);
}

#[test]
fn under_on_plaintext_is_served_and_starttls_is_offered() {
    let pki = Pki::new("test CA", KeyKind::P256);
    let mut s = tls_server(&pki, TlsMode::On, false);
    let mut p = Peer::connect(&mut s, 0);
    let list = p.ask(&mut s, opt::LIST, &[]).unwrap();
    assert_eq!(list.iter().filter(|r| r.0 == rep::SERVER).count(), 2);
    p.go(&mut s, "disk0").unwrap();
    assert_eq!(p.request(&mut s, cmd::READ, 0, &[], 512).0, 0);
    // Another client upgrades.
    let mut q = Peer::connect(&mut s, 1);
    let c = client_config(&opts(&pki, &rustls::version::TLS13));
    assert_eq!(q.starttls(&mut s, c), rep::ACK);
    q.go(&mut s, "disk0").unwrap();
    assert!(s.is_tls(1) && !s.is_tls(0));
}

#[test]
fn with_tls_off_starttls_is_unsupported_as_before() {
    let mut s = server(8, 2);
    let mut p = Peer::connect(&mut s, 0);
    let r = p.ask(&mut s, opt::STARTTLS, &[]).unwrap();
    assert_eq!(r[0].0, rep::ERR_UNSUP);
    p.go(&mut s, "disk0").unwrap();
}

#[test]
fn a_second_starttls_inside_tls_is_invalid_and_data_with_starttls_too() {
    let pki = Pki::new("test CA", KeyKind::P256);
    let mut s = tls_server(&pki, TlsMode::Require, false);
    let mut p = Peer::connect(&mut s, 0);
    let r = p.ask(&mut s, opt::STARTTLS, b"x").unwrap();
    assert_eq!(r[0].0, rep::ERR_INVALID);
    let c = client_config(&opts(&pki, &rustls::version::TLS12));
    assert_eq!(p.starttls(&mut s, c), rep::ACK);
    let r = p.ask(&mut s, opt::STARTTLS, &[]).unwrap();
    assert_eq!(r[0].0, rep::ERR_INVALID);
    p.go(&mut s, "disk0").unwrap();
    assert_eq!(p.request(&mut s, cmd::READ, 0, &[], 4096).0, 0);
}

#[test]
fn plaintext_after_the_starttls_ack_is_not_read_as_nbd() {
    // Downgrade: the client (or a man in the middle) takes the ack, then speaks plaintext.
    let pki = Pki::new("test CA", KeyKind::P256);
    let mut s = tls_server(&pki, TlsMode::Require, false);
    let mut p = Peer::connect(&mut s, 0);
    let r = p.ask(&mut s, opt::STARTTLS, &[]).unwrap();
    assert_eq!(r[0].0, rep::ACK);
    let after_ack = p.pipe.from_server.len();
    p.option(opt::LIST, &[]);
    p.option(opt::GO, &[0, 0, 0, 0, 0, 0]);
    assert!(spin(&mut s, &mut p, |p| p.closed));
    // At most a TLS alert came back, no NBD reply.
    let tail = &p.pipe.from_server[after_ack..];
    assert!(
        tail.is_empty() || tail[0] == 21,
        "sent after the ack: {tail:?}"
    );
    assert!(!tail
        .windows(8)
        .any(|w| w == wire::REPLY_MAGIC.to_be_bytes()));
    assert_eq!(s.stats.closed_bad, 1);
}

#[test]
fn plaintext_pipelined_behind_starttls_is_fed_to_tls_not_obeyed() {
    // STARTTLS and a GO in one segment: the GO's bytes are the "ClientHello".
    let pki = Pki::new("test CA", KeyKind::P256);
    let mut s = tls_server(&pki, TlsMode::Require, false);
    let mut p = Peer::connect(&mut s, 0);
    p.option(opt::STARTTLS, &[]);
    p.option(opt::GO, &[0, 0, 0, 5, b'd', b'i', b's', b'k', b'0', 0, 0]);
    assert!(spin(&mut s, &mut p, |p| p.closed));
    let acks = p.take_reply();
    assert_eq!(acks.map(|r| r.0), Some(rep::ACK));
    assert!(!p
        .plain
        .windows(8)
        .any(|w| w == wire::REPLY_MAGIC.to_be_bytes()));
    assert!(!s.is_active(0));
}

#[test]
fn a_client_that_skips_starttls_under_require_cannot_reach_transmission() {
    let pki = Pki::new("test CA", KeyKind::P256);
    let mut s = tls_server(&pki, TlsMode::Require, false);
    let mut p = Peer::connect(&mut s, 0);
    assert_eq!(p.go(&mut s, "disk0"), Err(rep::ERR_TLS_REQD));
    // Straight to transmission with a request: it is read as an option and refused.
    p.send(&request(cmd::READ, 0, 1, 0, 512));
    assert!(spin(&mut s, &mut p, |p| p.closed));
    assert_eq!(s.serving(), 0);
}

#[test]
fn verify_peer_refuses_a_client_without_a_certificate_or_with_a_foreign_one() {
    let pki = Pki::new("test CA", KeyKind::P256);
    let other = Pki::new("another CA", KeyKind::P256);
    for (cert, ok) in [
        (None, false),
        (Some(other.client()), false),
        (Some(pki.client()), true),
    ] {
        let mut s = tls_server(&pki, TlsMode::Require, true);
        let mut p = Peer::connect(&mut s, 0);
        let o = ClientOpts {
            cert,
            ..opts(&pki, &rustls::version::TLS13)
        };
        assert_eq!(p.starttls(&mut s, client_config(&o)), rep::ACK);
        // TLS 1.3 clients learn of a refused certificate from the server's alert, after
        // their own handshake has finished: try to use the connection.
        let went = p.go(&mut s, "disk0");
        assert_eq!(went.is_ok(), ok, "{:?} {:?}", went, p.tls_error());
        if !ok {
            assert!(spin(&mut s, &mut p, |p| p.closed));
            assert_eq!(s.stats.closed_bad, 1);
        }
    }
}

#[test]
fn negotiation_in_clear_does_not_survive_starttls() {
    let pki = Pki::new("test CA", KeyKind::P256);
    let mut s = tls_server(&pki, TlsMode::On, false);
    let mut p = Peer::connect(&mut s, 0);
    let r = p.ask(&mut s, opt::STRUCTURED_REPLY, &[]).unwrap();
    assert_eq!(r[0].0, rep::ACK);
    let c = client_config(&opts(&pki, &rustls::version::TLS13));
    assert_eq!(p.starttls(&mut s, c), rep::ACK);
    p.go(&mut s, "disk0").unwrap();
    // A simple reply, not a structured one: the clear-text STRUCTURED_REPLY was dropped.
    let (e, data) = p.request(&mut s, cmd::READ, 0, &[], 512);
    assert_eq!((e, data.len()), (0, 512));
}

/// A socket whose client sends a flood of records and never reads: it takes `room` bytes.
struct Flood {
    to_server: VecDeque<u8>,
    taken: usize,
    room: usize,
}

impl Stream for Flood {
    fn recv(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.to_server.len());
        for b in buf.iter_mut().take(n) {
            *b = self.to_server.pop_front().unwrap();
        }
        n
    }
    fn send(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.room - self.taken);
        self.taken += n;
        n
    }
}

#[test]
fn a_client_that_floods_requests_and_never_reads_is_held_to_bounded_buffers() {
    let pki = Pki::new("test CA", KeyKind::P256);
    let mut s = tls_server(&pki, TlsMode::Require, false);
    let mut p = Peer::connect(&mut s, 0);
    let c = client_config(&opts(&pki, &rustls::version::TLS13));
    assert_eq!(p.starttls(&mut s, c), rep::ACK);
    p.go(&mut s, "disk0").unwrap();
    // 20,000 READs of 64 KiB sealed by the client, which never reads a reply.
    let mut reqs = Vec::new();
    for i in 0..20_000u64 {
        reqs.extend(request(cmd::READ, 0, i, 0, 65536));
    }
    let mut wire = VecDeque::new();
    assert!(p.tls.as_mut().unwrap().drive(&mut wire, &reqs));
    let sent = wire.len();
    let mut flood = Flood {
        to_server: wire,
        taken: 0,
        room: 100_000,
    };
    let (mut peak_tls, mut peak_queued) = (0, 0);
    for _ in 0..3_000 {
        s.service(0, &mut flood);
        s.poll_disks();
        peak_tls = peak_tls.max(s.tls_session(0).map_or(0, Session::buffered));
        peak_queued = peak_queued.max(s.queued(0));
    }
    assert!(
        peak_tls <= MAX_IN + OUT_SOFT + MAX_RECORD + (1 << 14) + 1024,
        "TLS buffers grew to {peak_tls}"
    );
    assert!(
        peak_queued <= super::server::MAX_QUEUED + 65536,
        "queued {peak_queued}"
    );
    // Read: what the session holds, and the requests in progress.
    let read = sent - flood.to_server.len();
    assert!(
        read <= MAX_IN + 2 * MAX_RECORD,
        "the server went on reading: {read} of {sent} bytes"
    );
}

#[test]
fn a_record_claiming_more_than_the_maximum_is_refused() {
    let pki = Pki::new("test CA", KeyKind::P256);
    let mut s = tls_server(&pki, TlsMode::Require, false);
    let mut p = Peer::connect(&mut s, 0);
    let r = p.ask(&mut s, opt::STARTTLS, &[]).unwrap();
    assert_eq!(r[0].0, rep::ACK);
    // A handshake record header announcing 65,535 bytes, then a lot of them.
    p.send(&[22, 3, 1, 0xff, 0xff]);
    p.send(&vec![0u8; 70_000]);
    assert!(spin(&mut s, &mut p, |p| p.closed));
    assert_eq!(s.stats.closed_bad, 1);
}

#[test]
fn configuration_refuses_missing_entropy_and_bad_pem() {
    let pki = Pki::new("test CA", KeyKind::P256);
    let pem = Pem {
        ca_cert: pki.ca.as_bytes(),
        server_cert: pki.server_cert.as_bytes(),
        server_key: pki.server_key.as_bytes(),
    };
    let none = |_: &mut [u8]| false;
    let constant = |b: &mut [u8]| {
        b.fill(0xff);
        true
    };
    for e in [none as fn(&mut [u8]) -> bool, constant] {
        let r = TlsConfig::from_pem(&pem, false, e, host_clock);
        assert!(matches!(r, Err(TlsError::NoEntropy)), "{r:?}");
    }
    let no_key = Pem {
        server_key: b"",
        ..pem
    };
    let r = TlsConfig::from_pem(&no_key, false, host_entropy, host_clock);
    assert!(
        matches!(r, Err(TlsError::Pem("server-key.pem", _))),
        "{r:?}"
    );
    let no_cert = Pem {
        server_cert: pki.ca.as_bytes().get(..10).unwrap(),
        ..pem
    };
    let r = TlsConfig::from_pem(&no_cert, false, host_entropy, host_clock);
    assert!(
        matches!(r, Err(TlsError::Pem("server-cert.pem", _))),
        "{r:?}"
    );
    // A key that does not match the certificate.
    let other = Pki::new("another CA", KeyKind::P256);
    let mismatch = Pem {
        server_key: other.server_key.as_bytes(),
        ..pem
    };
    let r = TlsConfig::from_pem(&mismatch, false, host_entropy, host_clock);
    assert!(matches!(r, Err(TlsError::Config(_))), "{r:?}");
    assert!(TlsSettings::new(TlsMode::Require, None).is_err());
    assert_eq!(TlsMode::parse("require"), Some(TlsMode::Require));
    assert_eq!(TlsMode::parse("yes"), None);
}
