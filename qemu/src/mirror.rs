//! The NVLOG mirror link between two hosts (issue 16): the sending end, which ships a node's
//! log region over the interconnect, and the receiving end, which keeps the copy (a file:
//! `/dev/shm/tandem-nvlog-A` in production, the region the node maps when it is started on
//! this host) and acknowledges commits.
//!
//! The stream format and the receiver's rules are `tandem_formats::mirror`; this module is the
//! I/O around them: TCP, the mutual HMAC handshake (each end proves the pair's key bound to its
//! role, so neither a rogue receiver nor a rogue sender is accepted), `Hello` (the receiver
//! says how far it has applied, so a reconnecting sender knows where to continue or that it
//! must resend), writes into the copy, and bounded waits for acknowledgements.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tandem_formats::mgmt_auth::{Key, NONCE_LEN};
use tandem_formats::mirror::{
    auth_tag, auth_verify, hello_payload, parse_hello, Decoder, Frame, Kind, Receiver, Role,
    MAX_PAYLOAD,
};

/// How long a handshake step may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Both ends' handshake on `stream`: nonces out, tags back, each checked.
fn handshake(stream: &mut TcpStream, key: &Key, me: Role) -> anyhow::Result<()> {
    let peer_role = match me {
        Role::Sender => Role::Receiver,
        Role::Receiver => Role::Sender,
    };
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mine = crate::mgmt::generate_key()?.0;
    stream.write_all(&mine)?;
    let mut theirs = [0u8; NONCE_LEN];
    stream
        .read_exact(&mut theirs)
        .context("mirror handshake: no nonce from the peer")?;
    stream.write_all(&auth_tag(key, &theirs, me))?;
    let mut tag = [0u8; 32];
    stream
        .read_exact(&mut tag)
        .context("mirror handshake: no answer from the peer")?;
    if !auth_verify(key, &mine, peer_role, &tag) {
        bail!("mirror handshake: the peer does not hold the pair's key");
    }
    Ok(())
}

/// Reads frames from `stream` until `want` accepts one (returning its value), within
/// `timeout`. A frame `want` passes over (`None`) is dropped.
fn read_frame<T>(
    stream: &mut TcpStream,
    decoder: &mut Decoder,
    timeout: Duration,
    want: &mut dyn FnMut(&Frame<'_>) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("mirror: nothing from the peer within {timeout:?}");
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut buf) {
            Ok(0) => bail!("mirror: the peer closed the link"),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut rest = &buf[..n];
        let mut found = None;
        while !rest.is_empty() {
            let used = decoder
                .feed(rest, &mut |f| {
                    if found.is_none() {
                        found = want(&f);
                    }
                })
                .map_err(|e| anyhow::anyhow!("mirror: {e}"))?;
            rest = &rest[used..];
        }
        if let Some(v) = found {
            return Ok(v);
        }
    }
}

/// What a receiver says first: how far it applied, and its copy's superblock.
#[derive(Debug, Clone, Copy)]
pub struct Hello {
    /// The last stream sequence number the receiver applied.
    pub applied: u64,
    /// The copy's newest valid superblock and its slot (`None`: the copy holds no log).
    pub copy: Option<(usize, tandem_formats::nvlog::Superblock)>,
}

/// The sending end of one connection.
pub struct MirrorSender {
    stream: TcpStream,
    decoder: Decoder,
    log_id: u64,
    /// The last stream sequence number sent.
    sent: u64,
    /// The highest NVLOG sequence number acknowledged.
    acked: u64,
}

impl MirrorSender {
    /// Connects to the receiver at `addr` for log `log_id` and authenticates. Returns the
    /// sender and the last stream sequence number the receiver holds: the sender continues
    /// after it (resending the whole region when it cannot say what came after).
    pub fn connect(addr: SocketAddr, key: &Key, log_id: u64) -> anyhow::Result<(Self, u64)> {
        let (s, hello) = Self::connect_within(addr, key, log_id, HANDSHAKE_TIMEOUT)?;
        Ok((s, hello.applied))
    }

    /// [`MirrorSender::connect`] with a bound on the connect and each handshake step, and
    /// all the receiver's `Hello` says.
    pub fn connect_within(
        addr: SocketAddr,
        key: &Key,
        log_id: u64,
        timeout: Duration,
    ) -> anyhow::Result<(Self, Hello)> {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("mirror: connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        handshake(&mut stream, key, Role::Sender)?;
        let mut decoder = Decoder::new();
        let hello = read_frame(&mut stream, &mut decoder, timeout, &mut |f| {
            (f.kind == Kind::Hello && f.log_id == log_id).then(|| Hello {
                applied: f.arg,
                copy: parse_hello(f.payload),
            })
        })?;
        let sender = MirrorSender {
            stream,
            decoder,
            log_id,
            sent: hello.applied,
            acked: 0,
        };
        Ok((sender, hello))
    }

    /// Tells an idle receiver the sender is alive.
    pub fn heartbeat(&mut self) -> anyhow::Result<()> {
        let mut out = Vec::with_capacity(64);
        Frame {
            kind: Kind::Heartbeat,
            stream_seq: self.sent,
            log_id: self.log_id,
            arg: 0,
            payload: &[],
        }
        .encode(&mut out);
        self.stream.write_all(&out).context("mirror: sending")
    }

    fn send(&mut self, kind: Kind, arg: u64, payload: &[u8]) -> anyhow::Result<()> {
        self.sent += 1;
        let mut out = Vec::with_capacity(payload.len() + 64);
        Frame {
            kind,
            stream_seq: self.sent,
            log_id: self.log_id,
            arg,
            payload,
        }
        .encode(&mut out);
        self.stream.write_all(&out).context("mirror: sending")
    }

    /// Ships `bytes` written at `offset` of the region (in frames of at most 1 MiB).
    pub fn write(&mut self, offset: u64, bytes: &[u8]) -> anyhow::Result<()> {
        for (i, chunk) in bytes.chunks(MAX_PAYLOAD).enumerate() {
            self.send(Kind::Write, offset + (i * MAX_PAYLOAD) as u64, chunk)?;
        }
        Ok(())
    }

    /// Says that the writes so far complete the records up to NVLOG sequence number `seq`.
    pub fn commit(&mut self, seq: u64) -> anyhow::Result<()> {
        self.send(Kind::Commit, seq, &[])
    }

    /// Waits until the receiver acknowledges `seq` (or a later one); returns the highest
    /// acknowledged. An error (timeout, closed link, a bad frame) means the mirror is lost.
    pub fn wait_ack(&mut self, seq: u64, timeout: Duration) -> anyhow::Result<u64> {
        if self.acked >= seq {
            return Ok(self.acked);
        }
        let log_id = self.log_id;
        let acked = read_frame(&mut self.stream, &mut self.decoder, timeout, &mut |f| {
            (f.kind == Kind::Ack && f.log_id == log_id && f.arg >= seq).then_some(f.arg)
        })?;
        self.acked = acked;
        Ok(acked)
    }
}

/// How a served connection ended.
#[derive(Debug)]
pub enum Ended {
    /// The sender closed the link.
    Closed,
    /// The link broke or the sender broke the protocol (the reason); the copy holds every
    /// frame applied before it.
    Broken(String),
}

/// The receiving end: a listener and the copy it keeps.
pub struct MirrorReceiver {
    listener: TcpListener,
    key: Key,
    copy: File,
    receiver: Receiver,
    /// Told of each change the status file shows: connected, and the first acknowledgement
    /// of a connection (the sender's first pass is a full one: the copy is then synced).
    watch: Option<Box<dyn FnMut(LinkEvent) + Send>>,
    acks: u64,
}

/// What a receiver tells its watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// A sender authenticated.
    Connected,
    /// The first acknowledgement of a connection, with its sequence number.
    Synced(u64),
    /// The connection ended.
    Disconnected,
}

impl MirrorReceiver {
    /// Listens on `addr` for log `log_id`, keeping its copy in `copy` (created or kept,
    /// `region_len` bytes).
    pub fn bind(
        addr: SocketAddr,
        key: Key,
        copy: &Path,
        log_id: u64,
        region_len: u64,
    ) -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("mirror: binding {addr}"))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(copy)
            .with_context(|| format!("mirror: opening the copy {}", copy.display()))?;
        file.set_len(region_len)?;
        Ok(Self {
            listener,
            key,
            copy: file,
            receiver: Receiver::new(log_id, region_len, 0),
            watch: None,
            acks: 0,
        })
    }

    /// Calls `f` on each [`LinkEvent`].
    pub fn set_watch(&mut self, f: impl FnMut(LinkEvent) + Send + 'static) {
        self.watch = Some(Box::new(f));
    }

    fn tell(&mut self, e: LinkEvent) {
        if let Some(w) = self.watch.as_mut() {
            w(e);
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// The last stream sequence number applied, and the highest NVLOG sequence committed.
    pub fn progress(&self) -> (u64, u64) {
        (self.receiver.applied(), self.receiver.committed())
    }

    /// Makes [`MirrorReceiver::serve_next`] return when no sender is waiting.
    pub fn set_nonblocking_accept(&self, on: bool) -> anyhow::Result<()> {
        Ok(self.listener.set_nonblocking(on)?)
    }

    /// Serves the next connection if one is waiting (else waits `wait` and returns `None`);
    /// the listener must be non-blocking.
    pub fn serve_next(&mut self, idle: Duration, wait: Duration) -> anyhow::Result<Option<Ended>> {
        match self.listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                self.serve(stream, idle).map(Some)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(wait);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Accepts one connection and serves it to its end: authenticates the sender, says how
    /// far the copy goes, applies its frames, acknowledges its commits. An unauthenticated
    /// peer is an error (nothing of it is applied).
    pub fn serve_one(&mut self, idle: Duration) -> anyhow::Result<Ended> {
        let (stream, _) = self.listener.accept()?;
        self.serve(stream, idle)
    }

    fn serve(&mut self, mut stream: TcpStream, idle: Duration) -> anyhow::Result<Ended> {
        stream.set_nodelay(true)?;
        handshake(&mut stream, &self.key, Role::Receiver)?;
        let applied = self.receiver.applied();
        let copy = self.copy_superblock()?;
        self.send_with(&mut stream, Kind::Hello, applied, &hello_payload(copy))?;
        self.acks = 0;
        self.tell(LinkEvent::Connected);
        let end = self.apply_stream(&mut stream, idle);
        self.tell(LinkEvent::Disconnected);
        Ok(end)
    }

    /// Sends a frame of the receiver's own (`Hello`, `Ack`) carrying `arg`.
    fn send(&self, stream: &mut TcpStream, kind: Kind, arg: u64) -> std::io::Result<()> {
        self.send_with(stream, kind, arg, &[])
    }

    fn send_with(
        &self,
        stream: &mut TcpStream,
        kind: Kind,
        arg: u64,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let mut out = Vec::new();
        Frame {
            kind,
            stream_seq: self.receiver.applied(),
            log_id: self.receiver.log_id(),
            arg,
            payload,
        }
        .encode(&mut out);
        stream.write_all(&out)
    }

    /// The copy's newest valid superblock and its slot (what `Hello` tells the sender).
    fn copy_superblock(
        &self,
    ) -> anyhow::Result<Option<(usize, tandem_formats::nvlog::Superblock)>> {
        let len = self.copy.metadata()?.len();
        let mut bytes = vec![0u8; len as usize];
        self.copy.read_exact_at(&mut bytes, 0)?;
        Ok(tandem_formats::nvlog_region::newest_superblock(&bytes[..]))
    }

    /// Applies frames from `stream` until it ends.
    fn apply_stream(&mut self, stream: &mut TcpStream, idle: Duration) -> Ended {
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            if let Err(e) = stream.set_read_timeout(Some(idle)) {
                return Ended::Broken(e.to_string());
            }
            let n = match stream.read(&mut buf) {
                Ok(0) => return Ended::Closed,
                Ok(n) => n,
                Err(e) => return Ended::Broken(format!("reading: {e}")),
            };
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                match self.feed(&mut decoder, rest, stream) {
                    Ok(used) => rest = &rest[used..],
                    Err(why) => return Ended::Broken(why),
                }
            }
        }
    }

    /// Feeds bytes to the decoder; each whole frame is applied and a commit acknowledged.
    fn feed(
        &mut self,
        decoder: &mut Decoder,
        bytes: &[u8],
        stream: &mut TcpStream,
    ) -> Result<usize, String> {
        let mut outcome: Result<Option<u64>, String> = Ok(None);
        let (copy, receiver) = (&self.copy, &mut self.receiver);
        let used = decoder
            .feed(bytes, &mut |f| {
                let mut io = Ok(());
                let taken = receiver.take(&f, &mut |offset, data| {
                    if io.is_ok() {
                        io = copy.write_all_at(data, offset);
                    }
                });
                outcome = match (taken, io) {
                    (Ok(ack), Ok(())) => Ok(ack),
                    (Err(e), _) => Err(format!("{e:?}")),
                    (_, Err(e)) => Err(format!("writing the copy: {e}")),
                };
            })
            .map_err(|e| e.to_string())?;
        if let Some(seq) = outcome? {
            self.send(stream, Kind::Ack, seq)
                .map_err(|e| format!("acknowledging: {e}"))?;
            self.acks += 1;
            if self.acks == 1 {
                self.tell(LinkEvent::Synced(seq));
            }
        }
        Ok(used)
    }
}

pub mod daemon;

#[cfg(test)]
mod tests;
