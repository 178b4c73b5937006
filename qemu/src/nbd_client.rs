//! A small blocking NBD client (fixed newstyle, `NBD_OPT_GO`, simple replies) for tests and
//! benchmarks that must see every reply themselves: a write ledger counts a write as
//! acknowledged exactly when its reply arrives, which a client library would hide.
//!
//! One request in flight per connection; every read and write has a timeout, so a server
//! that vanishes (a killed guest) shows up as an error, never a hang.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tandem_formats::nbd_wire::{
    be32, be64, cflag, cmd, info, opt, rep, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT,
    NBDMAGIC, REPLY_MAGIC, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC,
};
/// Longest option reply payload accepted (a server cannot make us allocate more).
const MAX_OPTION_REPLY: u32 = 64 << 10;
/// Longest read this client asks for.
pub const MAX_READ: u32 = 32 << 20;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The connection failed or timed out.
    #[error("NBD connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server broke the protocol.
    #[error("NBD protocol: {0}")]
    Protocol(String),
    /// The server refused the export.
    #[error("NBD server refused: {0}")]
    Refused(String),
    /// The request got an error reply.
    #[error("NBD request failed with errno {0}")]
    Errno(u32),
}

/// One connection to one export.
pub struct NbdClient {
    stream: TcpStream,
    /// The export's size, as the server announced it.
    pub size: u64,
    handle: u64,
}

impl NbdClient {
    /// Connects and negotiates `export`; `timeout` bounds the connect and every later I/O.
    pub fn connect(addr: SocketAddr, export: &str, timeout: Duration) -> Result<Self, NbdError> {
        Self::connect_with(addr, export, timeout, timeout)
    }

    /// As [`Self::connect`], with a separate bound for the TCP connect (a client that
    /// retries fast after a failover wants a short one).
    pub fn connect_with(
        addr: SocketAddr,
        export: &str,
        connect: Duration,
        timeout: Duration,
    ) -> Result<Self, NbdError> {
        let stream = TcpStream::connect_timeout(&addr, connect)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut c = Self {
            stream,
            size: 0,
            handle: 0,
        };
        c.handshake(export)?;
        Ok(c)
    }

    fn handshake(&mut self, export: &str) -> Result<(), NbdError> {
        self.size = negotiate(&mut self.stream, export)?.0;
        Ok(())
    }

    fn request(
        &mut self,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Result<u64, NbdError> {
        self.handle += 1;
        let mut req = Vec::with_capacity(28 + payload.len());
        req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&flags.to_be_bytes());
        req.extend_from_slice(&cmd.to_be_bytes());
        req.extend_from_slice(&self.handle.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        req.extend_from_slice(payload);
        self.stream.write_all(&req)?;
        Ok(self.handle)
    }

    fn reply(&mut self, handle: u64) -> Result<(), NbdError> {
        let mut hdr = [0u8; 16];
        self.stream.read_exact(&mut hdr)?;
        if u32::from_be_bytes(hdr[0..4].try_into().expect("4 bytes")) != SIMPLE_REPLY_MAGIC {
            return Err(NbdError::Protocol("bad reply magic".into()));
        }
        if be64(&hdr[8..16]) != handle {
            return Err(NbdError::Protocol("reply for another request".into()));
        }
        match u32::from_be_bytes(hdr[4..8].try_into().expect("4 bytes")) {
            0 => Ok(()),
            e => Err(NbdError::Errno(e)),
        }
    }

    /// Writes `data` at `offset`; returns once the server acknowledged it.
    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<(), NbdError> {
        let len =
            u32::try_from(data.len()).map_err(|_| NbdError::Protocol("write too long".into()))?;
        let h = self.request(
            cmd::WRITE,
            if fua { cflag::FUA } else { 0 },
            offset,
            len,
            data,
        )?;
        self.reply(h)
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, NbdError> {
        if len > MAX_READ {
            return Err(NbdError::Protocol(format!("read of {len} bytes")));
        }
        let h = self.request(cmd::READ, 0, offset, len, &[])?;
        self.reply(h)?;
        let mut buf = vec![0u8; len as usize];
        self.stream.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// Asks for everything written so far to be made durable.
    pub fn flush(&mut self) -> Result<(), NbdError> {
        let h = self.request(cmd::FLUSH, 0, 0, 0, &[])?;
        self.reply(h)
    }

    /// Says goodbye (no reply is sent for it).
    pub fn disconnect(mut self) {
        let _ = self.request(cmd::DISC, 0, 0, 0, &[]);
    }
}

/// Fixed newstyle, NBD_opt::GO; returns the export's size and transmission flags.
pub(crate) fn negotiate(s: &mut TcpStream, export: &str) -> Result<(u64, u16), NbdError> {
    let mut greet = [0u8; 18];
    s.read_exact(&mut greet)?;
    if be64(&greet[0..8]) != NBDMAGIC || be64(&greet[8..16]) != IHAVEOPT {
        return Err(NbdError::Protocol("not a newstyle NBD server".into()));
    }
    let flags = u16::from_be_bytes([greet[16], greet[17]]);
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::Protocol("server is not fixed newstyle".into()));
    }
    let client_flags = u32::from(FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES));
    let mut msg = client_flags.to_be_bytes().to_vec();
    let name = export.as_bytes();
    let mut data = (name.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(name);
    data.extend_from_slice(&0u16.to_be_bytes());
    msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
    msg.extend_from_slice(&opt::GO.to_be_bytes());
    msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
    msg.extend_from_slice(&data);
    s.write_all(&msg)?;
    let mut info = None;
    loop {
        let mut hdr = [0u8; 20];
        s.read_exact(&mut hdr)?;
        if be64(&hdr[0..8]) != REPLY_MAGIC {
            return Err(NbdError::Protocol("bad option reply magic".into()));
        }
        let kind = be32(&hdr[12..16]);
        let len = be32(&hdr[16..20]);
        if len > MAX_OPTION_REPLY {
            return Err(NbdError::Protocol(format!("option reply of {len} bytes")));
        }
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload)?;
        match kind {
            rep::ACK => {
                return info.ok_or_else(|| {
                    NbdError::Protocol("NBD_opt::GO without NBD_info::EXPORT".into())
                })
            }
            rep::INFO if payload.len() >= 12 => {
                if u16::from_be_bytes([payload[0], payload[1]]) == info::EXPORT {
                    info = Some((
                        be64(&payload[2..10]),
                        u16::from_be_bytes([payload[10], payload[11]]),
                    ));
                }
            }
            rep::INFO => {}
            k if k & 0x8000_0000 != 0 => {
                let text = String::from_utf8_lossy(&payload).into_owned();
                return Err(NbdError::Refused(format!(
                    "export {export}: error {k:#x} {text}"
                )));
            }
            k => return Err(NbdError::Protocol(format!("unexpected option reply {k}"))),
        }
    }
}
