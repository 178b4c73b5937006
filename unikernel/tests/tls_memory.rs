//! How much guest heap one NBD-over-TLS connection holds: a counting allocator around a TLS
//! session (`unikernel::nbd::tls::Session`, the server side as the guest runs it) and a rustls
//! client, in a test binary of its own so that nothing else allocates meanwhile.
//!
//! Reported (`cargo test -p unikernel --test tls_memory -- --nocapture`): the configuration,
//! the peak during a TLS 1.3 handshake, what an idle connection holds after it, and the peak
//! while 1 MiB goes each way. Asserted: loose bounds that catch a buffer left unbounded.
//!
//! The one `unsafe` here is the counting allocator (a `GlobalAlloc` is an unsafe trait).

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::unbuffered::ConnectionState;
use rustls::{ClientConfig, RootCertStore};
use unikernel::nbd::server::Stream;
use unikernel::nbd::tls::Session;
use unikernel::tls::{provider, Pem, Randomness, TlsConfig};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn entropy(buf: &mut [u8]) -> bool {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .is_ok()
}

fn clock() -> Option<u64> {
    Some(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs(),
    )
}

/// The server's socket: what the client sent, and what the server sent.
#[derive(Default)]
struct Wire {
    to_server: VecDeque<u8>,
    to_client: Vec<u8>,
}

impl Stream for Wire {
    fn recv(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.to_server.len());
        for (b, x) in buf.iter_mut().zip(self.to_server.drain(..n)) {
            *b = x;
        }
        n
    }
    fn send(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(16 * 1024);
        self.to_client.extend_from_slice(&data[..n]);
        n
    }
}

/// The client side, driven by hand: returns how much of `app` it sealed.
fn client_turn(
    c: &mut UnbufferedClientConnection,
    input: &mut Vec<u8>,
    w: &mut Wire,
    app: &[u8],
    got: &mut usize,
) -> usize {
    let mut sealed = 0;
    for _ in 0..100 {
        let st = c.process_tls_records(input);
        let discard = st.discard;
        let mut stop = false;
        match st.state.expect("client TLS") {
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(Ok(rec)) = r.next_record() {
                    *got += rec.payload.len();
                }
            }
            ConnectionState::EncodeTlsData(mut e) => {
                let mut buf = vec![0; 1 << 16];
                let n = e.encode(&mut buf).unwrap();
                w.to_server.extend(&buf[..n]);
            }
            ConnectionState::TransmitTlsData(t) => t.done(),
            ConnectionState::WriteTraffic(mut wt) => {
                if sealed < app.len() {
                    let chunk = &app[sealed..app.len().min(sealed + 16384)];
                    let mut buf = vec![0; chunk.len() + 64];
                    let n = wt.encrypt(chunk, &mut buf).unwrap();
                    w.to_server.extend(&buf[..n]);
                    sealed += chunk.len();
                } else {
                    stop = true;
                }
            }
            _ => stop = true,
        }
        input.drain(..discard);
        if stop {
            break;
        }
    }
    sealed
}

struct Pki {
    ca: String,
    cert: String,
    key: String,
    /// The clients' provider, made once (its random-holding parts are leaked by design).
    provider: Arc<rustls::crypto::CryptoProvider>,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap()
        .pem();
    Pki {
        ca,
        cert,
        key: key.serialize_pem(),
        provider: provider::provider(Randomness(entropy)),
    }
}

fn client(pki: &Pki) -> UnbufferedClientConnection {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca.as_bytes()).unwrap())
        .unwrap();
    #[derive(Debug)]
    struct Clock;
    impl rustls::time_provider::TimeProvider for Clock {
        fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
            let secs = clock()?;
            let d = std::time::Duration::from_secs(secs);
            Some(rustls::pki_types::UnixTime::since_unix_epoch(d))
        }
    }
    let config = ClientConfig::builder_with_details(pki.provider.clone(), Arc::new(Clock))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    UnbufferedClientConnection::new(Arc::new(config), name).unwrap()
}

/// Handshakes `session` with a fresh client; then, if `bulk`, 1 MiB each way (the server
/// echoes what it decrypts). Returns the most the session's own buffers held.
fn exercise(session: &mut Session, pki: &Pki, bulk: bool) -> usize {
    let mut c = client(pki);
    let (mut w, mut input, mut got) = (Wire::default(), Vec::new(), 0);
    for _ in 0..20 {
        client_turn(&mut c, &mut input, &mut w, &[], &mut got);
        session.pump(&mut w);
        input.append(&mut w.to_client);
        if !session.is_handshaking() && !c.is_handshaking() {
            break;
        }
    }
    assert!(!session.is_handshaking(), "handshake did not finish");
    let mut most = session.buffered();
    if !bulk {
        return most;
    }
    let data = vec![0x5au8; 1 << 20];
    let (mut sent, mut echoed) = (0, 0);
    let mut buf = vec![0u8; 65536];
    for _ in 0..10_000 {
        if echoed == data.len() && got == data.len() {
            break;
        }
        sent += client_turn(&mut c, &mut input, &mut w, &data[sent..], &mut got);
        let n = session.recv(&mut w, &mut buf);
        let mut at = 0;
        while at < n {
            let k = session.send(&mut w, &buf[at..n]);
            assert!(k > 0, "the server could not send");
            at += k;
        }
        echoed += n;
        session.pump(&mut w);
        input.append(&mut w.to_client);
        most = most.max(session.buffered());
    }
    assert_eq!((echoed, got), (data.len(), data.len()));
    most
}

#[test]
fn heap_per_tls_connection() {
    let pki = pki();
    let pem = Pem {
        ca_cert: pki.ca.as_bytes(),
        server_cert: pki.cert.as_bytes(),
        server_key: pki.key.as_bytes(),
    };
    let before = LIVE.load(Ordering::Relaxed);
    let config = TlsConfig::from_pem(&pem, false, entropy, clock).unwrap();
    let config_bytes = LIVE.load(Ordering::Relaxed) - before;

    // What a session holds once its client, the wire and the test's buffers are gone.
    let base = LIVE.load(Ordering::Relaxed);
    let mut session = Session::new(&config, Vec::new(), Vec::new()).unwrap();
    let fresh = LIVE.load(Ordering::Relaxed) - base;
    let hs_buffers = exercise(&mut session, &pki, false);
    let idle = LIVE.load(Ordering::Relaxed) - base;
    drop(session);

    let mut session = Session::new(&config, Vec::new(), Vec::new()).unwrap();
    let bulk_buffers = exercise(&mut session, &pki, true);
    let after_bulk = LIVE.load(Ordering::Relaxed) - base;
    drop(session);
    assert_eq!(LIVE.load(Ordering::Relaxed), base, "a session leaked");

    println!(
        "TLS heap: configuration {config_bytes} B; per connection: at STARTTLS {fresh} B, \
         after the handshake {idle} B (its buffers {hs_buffers} B), after 1 MiB each way \
         {after_bulk} B (buffers at most {bulk_buffers} B)"
    );
    assert!(
        idle < 64 * 1024,
        "a connection holds {idle} B after its handshake"
    );
    assert!(
        after_bulk < 128 * 1024,
        "a connection holds {after_bulk} B after bulk"
    );
}
