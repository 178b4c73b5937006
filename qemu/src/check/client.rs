//! A pipelined NBD client for `tandem check`: fixed newstyle, `NBD_OPT_GO`, simple replies,
//! every transmission command the reference model knows (READ, WRITE, WRITE_ZEROES with
//! NO_HOLE, TRIM, FLUSH, CACHE; FUA where it applies), many requests in flight.
//!
//! One [`Conn`] is one connection to one export. Requests are written from the caller's
//! thread; a reader thread per connection parses the replies (in whatever order the server
//! sends them) and delivers them as [`Event`]s on a channel shared by all connections, so a
//! driver waits on every connection at once. The reader keeps draining replies while the
//! caller writes, so a server blocked on sending replies never stalls the requests.
//!
//! Every I/O is bounded: the connect, the handshake, each write, and each request's wait for
//! its reply ([`Conn::connect`]'s `timeout`). A killed guest is an [`Event::Closed`], never a
//! hang.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::nbd_client::{negotiate, NbdError};

use tandem_formats::nbd_wire::{be32, be64, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC};
/// Transmission commands and command flags: the guest's own definitions.
pub use tandem_formats::nbd_wire::{cflag, cmd};

/// Transmission flags (what the export supports), named for this client.
pub mod tflag {
    pub use tandem_formats::nbd_wire::flags::{
        SEND_CACHE as CACHE, SEND_FLUSH as FLUSH, SEND_FUA as FUA, SEND_TRIM as TRIM,
        SEND_WRITE_ZEROES as WRITE_ZEROES,
    };
}

/// A reply (or the end of a connection), from a connection's reader thread.
#[derive(Debug)]
pub enum Event {
    /// The reply to request `handle` on connection `conn`.
    Reply {
        /// [`Conn::id`].
        conn: u64,
        /// The request's handle.
        handle: u64,
        /// 0, or the server's errno.
        error: u32,
        /// The data of a successful READ.
        data: Option<Vec<u8>>,
    },
    /// The connection ended (closed by either side, timed out, or the protocol broke);
    /// requests without a reply by then never get one.
    Closed {
        /// [`Conn::id`].
        conn: u64,
        /// Why.
        why: String,
    },
}

/// A request waiting for its reply.
struct Pending {
    read_len: u32,
    sent: Instant,
}

/// One connection to one export.
pub struct Conn {
    /// Unique among the connections of one driver (events carry it).
    pub id: u64,
    /// The export's size.
    pub size: u64,
    /// The export's transmission flags.
    pub flags: u16,
    stream: TcpStream,
    pending: Arc<Mutex<HashMap<u64, Pending>>>,
    stop: Arc<AtomicBool>,
    next_handle: u64,
    reader: Option<JoinHandle<()>>,
    closed: bool,
}

impl Conn {
    /// Connects to `export` at `addr`, negotiates, and starts the reader, which sends
    /// events to `events`. `timeout` bounds the connect, the handshake, every write, and the
    /// wait for each reply.
    pub fn connect(
        id: u64,
        addr: SocketAddr,
        export: &str,
        timeout: Duration,
        events: Sender<Event>,
    ) -> Result<Conn, NbdError> {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let (size, flags) = negotiate(&mut stream, export)?;
        // The reader wakes up every so often to look at the stop flag and the oldest
        // request's age.
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        let pending = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let stream = stream.try_clone()?;
            let pending = Arc::clone(&pending);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("nbd-reader-{id}"))
                .spawn(move || {
                    let why = read_replies(id, stream, &pending, &stop, timeout, &events);
                    let _ = events.send(Event::Closed { conn: id, why });
                })?
        };
        Ok(Conn {
            id,
            size,
            flags,
            stream,
            pending,
            stop,
            next_handle: 0,
            reader: Some(reader),
            closed: false,
        })
    }

    /// Sends one request; returns its handle. `payload` is a WRITE's data.
    pub fn send(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Result<u64, NbdError> {
        self.next_handle += 1;
        let handle = self.next_handle;
        let mut req = Vec::with_capacity(28 + payload.len());
        req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&flags.to_be_bytes());
        req.extend_from_slice(&command.to_be_bytes());
        req.extend_from_slice(&handle.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        req.extend_from_slice(payload);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                handle,
                Pending {
                    read_len: if command == cmd::READ { len } else { 0 },
                    sent: Instant::now(),
                },
            );
        if let Err(e) = self.stream.write_all(&req) {
            // Whether the server saw it is unknown: the request stays "without a reply".
            return Err(e.into());
        }
        Ok(handle)
    }

    /// Requests sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Closes the connection now (the reader ends with an [`Event::Closed`]); replies not
    /// received by then are never delivered.
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.stop.store(true, Ordering::SeqCst);
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }

    /// Says goodbye (NBD_CMD_DISC), then closes.
    pub fn disconnect(&mut self) {
        if !self.closed {
            let _ = self.send(cmd::DISC, 0, 0, 0, &[]);
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.next_handle);
        }
        self.close();
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.close();
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
    }
}

/// The reader thread: replies until the connection ends; returns why it ended.
fn read_replies(
    id: u64,
    mut s: TcpStream,
    pending: &Mutex<HashMap<u64, Pending>>,
    stop: &AtomicBool,
    timeout: Duration,
    events: &Sender<Event>,
) -> String {
    let mut waiter = Waiter {
        pending,
        stop,
        timeout,
    };
    loop {
        let mut hdr = [0u8; 16];
        if let Err(why) = waiter.fill(&mut s, &mut hdr) {
            return why;
        }
        if be32(&hdr[0..4]) != SIMPLE_REPLY_MAGIC {
            return format!("protocol: bad reply magic {:#x}", be32(&hdr[0..4]));
        }
        let error = be32(&hdr[4..8]);
        let handle = be64(&hdr[8..16]);
        let Some(p) = pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&handle)
        else {
            return format!("protocol: reply to unknown handle {handle}");
        };
        let data = if p.read_len > 0 && error == 0 {
            let mut buf = vec![0u8; p.read_len as usize];
            if let Err(why) = waiter.fill(&mut s, &mut buf) {
                return why;
            }
            Some(buf)
        } else {
            None
        };
        if events
            .send(Event::Reply {
                conn: id,
                handle,
                error,
                data,
            })
            .is_err()
        {
            return "the driver went away".into();
        }
    }
}

struct Waiter<'a> {
    pending: &'a Mutex<HashMap<u64, Pending>>,
    stop: &'a AtomicBool,
    timeout: Duration,
}

impl Waiter<'_> {
    /// Reads exactly `buf.len()` bytes, waking up on the socket's short read timeout to
    /// give up when asked to stop or when a request has waited longer than the timeout.
    fn fill(&mut self, s: &mut TcpStream, buf: &mut [u8]) -> Result<(), String> {
        let mut got = 0;
        while got < buf.len() {
            if self.stop.load(Ordering::SeqCst) {
                return Err("closed by the client".into());
            }
            match s.read(&mut buf[got..]) {
                Ok(0) => return Err("closed by the server".into()),
                Ok(n) => got += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    let oldest = self
                        .pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .values()
                        .map(|p| p.sent)
                        .min();
                    if let Some(t) = oldest
                        && t.elapsed() > self.timeout
                    {
                        return Err(format!("no reply within {:?} (timed out)", self.timeout));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("connection: {e}")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};
    use tandem_formats::nbd_wire::{
        info, opt, rep, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, NBDMAGIC, REPLY_MAGIC,
    };

    /// A toy server: greets, answers NBD_opt::GO, then answers requests in reverse order of
    /// arrival per batch of two (so replies come out of order), echoing a READ's offset.
    fn toy_server(l: TcpListener) {
        let (mut s, _) = l.accept().unwrap();
        let mut g = NBDMAGIC.to_be_bytes().to_vec();
        g.extend_from_slice(&IHAVEOPT.to_be_bytes());
        g.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        s.write_all(&g).unwrap();
        let mut cf = [0u8; 4];
        s.read_exact(&mut cf).unwrap();
        let mut oh = [0u8; 16];
        s.read_exact(&mut oh).unwrap();
        let mut od = vec![0u8; be32(&oh[12..16]) as usize];
        s.read_exact(&mut od).unwrap();
        let rep = |kind: u32, data: &[u8]| {
            let mut r = REPLY_MAGIC.to_be_bytes().to_vec();
            r.extend_from_slice(&opt::GO.to_be_bytes());
            r.extend_from_slice(&kind.to_be_bytes());
            r.extend_from_slice(&(data.len() as u32).to_be_bytes());
            r.extend_from_slice(data);
            r
        };
        let mut info = info::EXPORT.to_be_bytes().to_vec();
        info.extend_from_slice(&(1u64 << 20).to_be_bytes());
        info.extend_from_slice(&(1u16 | tflag::FLUSH | tflag::TRIM).to_be_bytes());
        s.write_all(&rep(rep::INFO, &info)).unwrap();
        s.write_all(&rep(rep::ACK, &[])).unwrap();
        let mut batch = Vec::new();
        loop {
            let mut h = [0u8; 28];
            if s.read_exact(&mut h).is_err() {
                return;
            }
            let command = u16::from_be_bytes([h[6], h[7]]);
            let handle = be64(&h[8..16]);
            let offset = be64(&h[16..24]);
            let len = be32(&h[24..28]);
            if command == cmd::DISC {
                return;
            }
            if command == cmd::WRITE {
                let mut d = vec![0u8; len as usize];
                s.read_exact(&mut d).unwrap();
            }
            let mut r = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
            let error: u32 = if command == cmd::TRIM { 5 } else { 0 };
            r.extend_from_slice(&error.to_be_bytes());
            r.extend_from_slice(&handle.to_be_bytes());
            if command == cmd::READ {
                r.extend(std::iter::repeat_n(offset as u8, len as usize));
            }
            batch.push(r);
            if batch.len() == 2 {
                for r in batch.drain(..).rev() {
                    s.write_all(&r).unwrap();
                }
            }
        }
    }

    #[test]
    fn pipelined_requests_and_out_of_order_replies() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || toy_server(l));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut c = Conn::connect(7, addr, "x", Duration::from_secs(5), tx).unwrap();
        assert_eq!(c.size, 1 << 20);
        assert_ne!(c.flags & tflag::TRIM, 0);
        let r1 = c.send(cmd::READ, 0, 3, 4, &[]).unwrap();
        let w = c.send(cmd::WRITE, cflag::FUA, 0, 3, &[1, 2, 3]).unwrap();
        let t = c.send(cmd::TRIM, 0, 0, 512, &[]).unwrap();
        let r2 = c.send(cmd::READ, 0, 9, 2, &[]).unwrap();
        let mut got = HashMap::new();
        while got.len() < 4 {
            match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
                Event::Reply {
                    conn,
                    handle,
                    error,
                    data,
                } => {
                    assert_eq!(conn, 7);
                    got.insert(handle, (error, data));
                }
                Event::Closed { why, .. } => panic!("closed: {why}"),
            }
        }
        assert_eq!(got[&r1], (0, Some(vec![3; 4])));
        assert_eq!(got[&w], (0, None));
        assert_eq!(got[&t], (5, None));
        assert_eq!(got[&r2], (0, Some(vec![9; 2])));
        assert_eq!(c.in_flight(), 0);
        c.disconnect();
        match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
            Event::Closed { conn: 7, .. } => {}
            e => panic!("{e:?}"),
        }
        server.join().unwrap();
    }

    #[test]
    fn a_silent_server_times_out_instead_of_hanging() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, _rx) = std::sync::mpsc::channel();
        // Accepted by the kernel's backlog, never greeted.
        let t0 = Instant::now();
        let e = Conn::connect(1, addr, "x", Duration::from_millis(300), tx);
        assert!(e.is_err());
        assert!(t0.elapsed() < Duration::from_secs(5));
        drop(l);
    }
}
