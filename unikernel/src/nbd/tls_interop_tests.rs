//! NBD over TLS against OpenSSL: Python's `ssl` module as the client, over a loopback TCP
//! connection to the real server. The rustls tests (`tls_tests`) run the guest's own provider
//! on both ends, where a mistake made the same way twice (a nonce, a signature encoding)
//! would cancel out; an independent implementation on the other end cannot share it.
//!
//! Every suite (the server offers one at a time), every server key type, a client certificate
//! under `verify_peer`. Fails, naming it, where `python3` is missing.

use alloc::string::String;
use alloc::vec::Vec;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::server::{ConnState, Stream};
use super::server_tests::server;
use super::tls::{TlsMode, TlsSettings};
use super::tls_tests::{host_clock, host_entropy, KeyKind, Pki};
use crate::tls::{provider as p, Pem, TlsConfig};

/// The client: NBD handshake in clear, STARTTLS, then LIST, GO, a 200 KiB WRITE and READ
/// back, DISC, over TLS. Prints `ok <version> <cipher>`.
const CLIENT: &str = r#"
import socket, ssl, struct, sys
port, cafile, version, cert, key = sys.argv[1:6]
def recvn(s, n):
    b = b''
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            sys.exit('closed by the server')
        b += c
    return b
def opt(s, code, data=b''):
    s.sendall(b'IHAVEOPT' + struct.pack('>II', code, len(data)) + data)
def reply(s):
    _, _, t, n = struct.unpack('>QIII', recvn(s, 20))
    return t, recvn(s, n) if n else b''
s = socket.create_connection(('127.0.0.1', int(port)))
recvn(s, 18)
s.sendall(struct.pack('>I', 3))
opt(s, 5)
assert reply(s)[0] == 1, 'STARTTLS refused'
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(cafile)
v = ssl.TLSVersion.TLSv1_3 if version == '1.3' else ssl.TLSVersion.TLSv1_2
ctx.minimum_version = ctx.maximum_version = v
if version == '1.2':
    ctx.set_ciphers('ECDHE+AESGCM:ECDHE+CHACHA20')
if cert != '-':
    ctx.load_cert_chain(cert, key)
t = ctx.wrap_socket(s, server_hostname='localhost')
opt(t, 3)
names = []
while True:
    ty, d = reply(t)
    if ty == 1:
        break
    assert ty == 2, 'LIST: %x' % ty
    names.append(d[4:].decode())
opt(t, 7, struct.pack('>I', 5) + b'disk0' + struct.pack('>H', 0))
while True:
    ty, d = reply(t)
    if ty == 1:
        break
    assert ty == 3, 'GO: %x' % ty
data = bytes((i * 31 + 7) & 0xff for i in range(204800))
req = lambda kind, cookie, off, n: struct.pack('>IHHQQI', 0x25609513, 0, kind, cookie, off, n)
t.sendall(req(1, 1, 4096, len(data)) + data)
assert struct.unpack('>IIQ', recvn(t, 16))[1] == 0, 'WRITE failed'
t.sendall(req(0, 2, 4096, len(data)))
assert struct.unpack('>IIQ', recvn(t, 16))[1] == 0, 'READ failed'
assert recvn(t, len(data)) == data, 'READ returned other data'
t.sendall(req(2, 3, 0, 0))
print('ok', t.version(), t.cipher()[0], ','.join(names))
"#;

/// A non-blocking TCP socket as the server sees one.
struct Tcp(TcpStream);

impl Stream for Tcp {
    fn recv(&mut self, buf: &mut [u8]) -> usize {
        self.0.read(buf).unwrap_or(0)
    }
    fn send(&mut self, data: &[u8]) -> usize {
        self.0.write(data).unwrap_or(0)
    }
}

fn python() -> bool {
    Command::new("python3")
        .args(["-c", "import ssl; assert ssl.HAS_TLSv1_3"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Serves one Python client with `config`; its output (Err: its error output).
fn serve(
    config: TlsConfig,
    version: &str,
    client: Option<(&str, &str)>,
    ca: &str,
) -> Result<String, String> {
    let dir = std::env::temp_dir().join(alloc::format!(
        "tandem-tls-interop-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let cafile = file("ca.pem", ca);
    let (cert, key) = match client {
        Some((c, k)) => (file("client.pem", c), file("client-key.pem", k)),
        None => ("-".into(), "-".into()),
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut child = Command::new("python3")
        .args(["-c", CLIENT, &port, &cafile, version, &cert, &key])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (sock, _) = listener.accept().unwrap();
    sock.set_nonblocking(true).unwrap();
    let mut tcp = Tcp(sock);
    let mut s = server(64, 2);
    s.set_tls(TlsSettings::new(TlsMode::Require, Some(config)).unwrap());
    s.accept(0);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut open = true;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        if open {
            open = s.service(0, &mut tcp) == ConnState::Open;
        }
        s.poll_disks();
        std::thread::sleep(Duration::from_micros(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn config(pki: &Pki, verify_peer: bool, suite: Option<rustls::SupportedCipherSuite>) -> TlsConfig {
    let pem = Pem {
        ca_cert: pki.ca.as_bytes(),
        server_cert: pki.server_cert.as_bytes(),
        server_key: pki.server_key.as_bytes(),
    };
    let suites: Vec<_> = suite.into_iter().collect();
    let suites = (!suites.is_empty()).then_some(&suites[..]);
    TlsConfig::build(&pem, verify_peer, host_entropy, host_clock, suites).unwrap()
}

#[test]
fn openssl_clients_work_with_every_suite_and_key_type() {
    assert!(
        python(),
        "python3 with an ssl module that speaks TLS 1.3 is needed (package python3)"
    );
    let tls13 = [
        ("TLS_AES_128_GCM_SHA256", p::TLS13_AES_128_GCM_SHA256),
        ("TLS_AES_256_GCM_SHA384", p::TLS13_AES_256_GCM_SHA384),
        (
            "TLS_CHACHA20_POLY1305_SHA256",
            p::TLS13_CHACHA20_POLY1305_SHA256,
        ),
    ];
    for kind in [KeyKind::P256, KeyKind::Ed25519, KeyKind::Rsa] {
        let pki = Pki::new("interop CA", kind);
        let tls12 = if kind == KeyKind::Rsa {
            [
                (
                    "ECDHE-RSA-AES128-GCM-SHA256",
                    p::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                ),
                (
                    "ECDHE-RSA-AES256-GCM-SHA384",
                    p::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                ),
                (
                    "ECDHE-RSA-CHACHA20-POLY1305",
                    p::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
                ),
            ]
        } else {
            [
                (
                    "ECDHE-ECDSA-AES128-GCM-SHA256",
                    p::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                ),
                (
                    "ECDHE-ECDSA-AES256-GCM-SHA384",
                    p::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                ),
                (
                    "ECDHE-ECDSA-CHACHA20-POLY1305",
                    p::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                ),
            ]
        };
        for (version, suites) in [("1.3", tls13), ("1.2", tls12)] {
            for (name, suite) in suites {
                let out = serve(config(&pki, false, Some(suite)), version, None, &pki.ca)
                    .unwrap_or_else(|e| panic!("{kind:?} {name}: {e}"));
                let want = alloc::format!("TLSv{version} {name} disk0,ro");
                assert!(out.contains(&want), "{kind:?}: {out} (wanted {want})");
            }
        }
    }
}

#[test]
fn an_openssl_client_with_a_certificate_passes_verify_peer_and_one_without_fails() {
    assert!(
        python(),
        "python3 with an ssl module that speaks TLS 1.3 is needed (package python3)"
    );
    let pki = Pki::new("interop CA", KeyKind::P256);
    let (cert, key) = pki.client();
    for version in ["1.3", "1.2"] {
        let out = serve(
            config(&pki, true, None),
            version,
            Some((&cert, &key)),
            &pki.ca,
        );
        assert!(
            out.as_ref().is_ok_and(|o| o.starts_with("ok")),
            "{version}: {out:?}"
        );
        let out = serve(config(&pki, true, None), version, None, &pki.ca);
        assert!(
            out.is_err(),
            "{version}: served without a client certificate: {out:?}"
        );
    }
}
