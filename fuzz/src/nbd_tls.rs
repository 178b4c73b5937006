//! `nbd_tls`: the NBD server with TLS on or required (`unikernel::nbd::tls`), fed arbitrary
//! client bytes cut into arbitrary pieces: option haggling in clear, STARTTLS, then whatever
//! follows taken as the client's TLS (a ClientHello, records, garbage), through rustls's
//! deframer and handshake and the session's own buffering.
//!
//! Input: `[mode, cut seed, send limit, client bytes...]` (mode bit 0: on, else required).
//! The seeds carry a real ClientHello after STARTTLS, so the fuzzer starts inside the
//! handshake. Randomness is a counter run through SplitMix64, restarted every run: runs
//! repeat.
//!
//! Checked, besides no panic and no hang:
//! - the session's buffers stay within their bounds whatever the client sends;
//! - before STARTTLS is acknowledged the server sends only well-formed option replies, and
//!   under `require` only `NBD_REP_ERR_TLS_REQD` or the answers to STARTTLS and ABORT;
//! - after the acknowledgement, every byte the server sends is part of a TLS record
//!   (a content type of 20 to 23, version 3.x, at most 2^14 + 2048 bytes): nothing in clear.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use frontend_drivers::ramdisk::RamDisk;
use hpdi::{BufferPool, QueuePair};
use tandem_formats::nbd_wire as wire;
use unikernel::nbd::server::{ConnState, Disk, Server, Stream, CHUNK};
use unikernel::nbd::tls::{Session, TlsMode, TlsSettings, MAX_IN, MAX_RECORD, OUT_SOFT};
use unikernel::tls::{Pem, TlsConfig};

use crate::nbd_handshake::exports;
use crate::{Input, Rng};

/// A throwaway self-signed P-256 certificate and its key, for the harness only.
pub const CERT: &str = r"-----BEGIN CERTIFICATE-----
MIIBlTCCATugAwIBAgIUMfD8jNaaFIwl/pXuI0pL910G1hswCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwMzE2NTE1N1oYDzIxMjYxMTA5
MTY1MTU3WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQeMF9jFA08TGG5UsrH3X3qfslAwEUWaCTiC62GSqRJX8pjG4bU9GHA
htLhhAbLegO1Kyyl+2K6RSHT5Me0NF2po2kwZzAdBgNVHQ4EFgQUNybrB54aAX4A
yJ/LrYFNPdRSrTQwHwYDVR0jBBgwFoAUNybrB54aAX4AyJ/LrYFNPdRSrTQwDwYD
VR0TAQH/BAUwAwEB/zAUBgNVHREEDTALgglsb2NhbGhvc3QwCgYIKoZIzj0EAwID
SAAwRQIgbdcG7xSWseWKP6rZ8FzQOdqgBW5ir7jJH/50WFS8t+ACIQC+b2RZKEkg
q6fvVMjkocwJsW6kvZ68az4Sq9x16CLTFg==
-----END CERTIFICATE-----";
pub const KEY: &str = r"-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgv5nMREu6Jz7Yr1Up
rSwaMj0xI7cvKgrqrP8syEf38dqhRANCAAQeMF9jFA08TGG5UsrH3X3qfslAwEUW
aCTiC62GSqRJX8pjG4bU9GHAhtLhhAbLegO1Kyyl+2K6RSHT5Me0NF2p
-----END PRIVATE KEY-----";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Deterministic "randomness": SplitMix64 over a counter.
pub fn entropy(buf: &mut [u8]) -> bool {
    for chunk in buf.chunks_mut(8) {
        let mut rng = Rng::new(COUNTER.fetch_add(1, Ordering::Relaxed));
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes()[..chunk.len()]);
    }
    true
}

fn clock() -> Option<u64> {
    Some(1_800_000_000)
}

fn config() -> &'static TlsConfig {
    static CONFIG: OnceLock<TlsConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let pem = Pem {
            ca_cert: CERT.as_bytes(),
            server_cert: CERT.as_bytes(),
            server_key: KEY.as_bytes(),
        };
        TlsConfig::from_pem(&pem, false, entropy, clock).unwrap()
    })
}

struct Pipe {
    to_server: VecDeque<u8>,
    from_server: Vec<u8>,
    send_limit: usize,
}

impl Stream for Pipe {
    fn recv(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.to_server.len());
        for (d, s) in buf.iter_mut().zip(self.to_server.drain(..n)) {
            *d = s;
        }
        n
    }

    fn send(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.send_limit);
        self.from_server.extend_from_slice(&data[..n]);
        n
    }
}

fn build(mode: TlsMode) -> Server {
    let disks = (0..2)
        .map(|_| Disk {
            dev: Box::new(RamDisk::new(crate::nbd_server::DISK, 64)),
            queue: QueuePair::new(64).unwrap(),
        })
        .collect();
    let pool = BufferPool::host(16, CHUNK).unwrap();
    let mut s = Server::new(exports(2), disks, pool, 1);
    s.set_tls(TlsSettings::new(mode, Some(config().clone())).unwrap());
    s
}

/// Checks what the server sent: the greeting, option replies up to the STARTTLS ack, then
/// TLS records only.
fn check_output(mut out: &[u8], mode: TlsMode) {
    if out.len() < 18 {
        return;
    }
    out = &out[18..];
    let mut tls = false;
    while !tls && out.len() >= 20 {
        assert_eq!(wire::be64(out), wire::REPLY_MAGIC, "not an option reply");
        let (option, kind) = (wire::be32(&out[8..]), wire::be32(&out[12..]));
        let len = wire::be32(&out[16..]) as usize;
        if mode == TlsMode::Require {
            assert!(
                kind == wire::rep::ERR_TLS_REQD
                    || option == wire::opt::STARTTLS
                    || option == wire::opt::ABORT,
                "option {option} answered {kind:#x} in clear under require"
            );
        }
        tls = option == wire::opt::STARTTLS && kind == wire::rep::ACK;
        out = &out[(20 + len).min(out.len())..];
    }
    while tls && out.len() >= 5 {
        let (kind, major, len) = (out[0], out[1], usize::from(wire::be16(&out[3..])));
        assert!(
            (20..=23).contains(&kind),
            "not a TLS record: {:02x?}",
            &out[..5]
        );
        assert_eq!(major, 3, "not a TLS record: {:02x?}", &out[..5]);
        assert!(len <= (1 << 14) + 2048, "record of {len} bytes");
        out = &out[(5 + len).min(out.len())..];
    }
}

/// A real ClientHello (TLS 1.3 and 1.2 offered), made with the guest's own provider, for
/// the seeds.
pub fn client_hello() -> Vec<u8> {
    use rustls::client::UnbufferedClientConnection;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::unbuffered::ConnectionState;
    use std::sync::Arc;

    #[derive(Debug)]
    struct Fixed;
    impl rustls::time_provider::TimeProvider for Fixed {
        fn current_time(&self) -> Option<UnixTime> {
            Some(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                clock()?,
            )))
        }
    }
    COUNTER.store(1 << 40, Ordering::Relaxed);
    let provider = unikernel::tls::provider::provider(unikernel::tls::Randomness(entropy));
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(CERT.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_details(provider, Arc::new(Fixed))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = UnbufferedClientConnection::new(Arc::new(config), name).unwrap();
    let mut buf = vec![0u8; 4096];
    match c.process_tls_records(&mut []).state {
        Ok(ConnectionState::EncodeTlsData(mut e)) => {
            let n = e.encode(&mut buf).unwrap();
            buf.truncate(n);
            buf
        }
        other => panic!("no ClientHello: {other:?}"),
    }
}

pub fn run(data: &[u8]) {
    serve(data);
}

/// Runs the input; what the server sent.
fn serve(data: &[u8]) -> Vec<u8> {
    COUNTER.store(0, Ordering::Relaxed);
    let mut inp = Input::new(data);
    let mode = if inp.u8() & 1 == 1 {
        TlsMode::On
    } else {
        TlsMode::Require
    };
    let mut rng = Rng::new(u64::from(inp.u8()));
    let send_limit = 1 + usize::from(inp.u8()) * 64;
    let mut stream = inp.rest();
    let mut s = build(mode);
    s.accept(0);
    let mut pipe = Pipe {
        to_server: VecDeque::new(),
        from_server: Vec::new(),
        send_limit,
    };
    let bound = MAX_IN + OUT_SOFT + MAX_RECORD + (1 << 14) + 16 * 1024;
    for _ in 0..100_000 {
        let n = rng.piece().min(stream.len());
        pipe.to_server.extend(&stream[..n]);
        stream = &stream[n..];
        let before = (pipe.to_server.len(), pipe.from_server.len());
        if s.service(0, &mut pipe) == ConnState::Close {
            break;
        }
        s.poll_disks();
        let held = s.tls_session(0).map_or(0, Session::buffered);
        assert!(held <= bound, "the session holds {held} bytes");
        if stream.is_empty() && before == (pipe.to_server.len(), pipe.from_server.len()) {
            break;
        }
    }
    check_output(&pipe.from_server, mode);
    pipe.from_server
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_client_hello_gets_the_server_s_flight() {
        let mut input = vec![0, 0, 255];
        input.extend_from_slice(&3u32.to_be_bytes());
        input.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
        input.extend_from_slice(&wire::opt::STARTTLS.to_be_bytes());
        input.extend_from_slice(&0u32.to_be_bytes());
        input.extend(client_hello());
        let out = serve(&input);
        // Greeting, the STARTTLS ack, then a handshake record (the ServerHello).
        let tls = &out[18 + 20..];
        assert_eq!(tls.first(), Some(&22), "{out:02x?}");
        assert!(tls.len() > 200, "only {} bytes of TLS", tls.len());
    }
}
