//! The management port's `status` reply: one line of `key=value` words that the guest prints
//! (`kernel/mgmt.rs`) and the host parses (`tandem bench nbd`, tests). Both sides use this
//! module, so the key names and the format live in one place.
//!
//! ```text
//! ok restarts=0 requests=12 heap_used=4300800 nbd_read_bytes=4096 nbd_write_bytes=8192 copy_frame_to_socket=8248 copy_socket_to_app=8248 copy_app_to_socket=4136 copy_socket_to_frame=4136
//! ```
//!
//! `restarts=` comes first (tests match on the prefix). Every counter after `heap_used` counts
//! since this start of the service: a restart in place sets them back to 0 (compare
//! `restarts=` before taking a difference).
//!
//! The copy counters count bytes the guest's CPU copied on the NBD data path, at the places
//! where copies happen (each payload byte is counted once per copy):
//!
//! | key | the copy | counted where |
//! |---|---|---|
//! | `copy_frame_to_socket` | smoltcp copies the TCP payload of a received frame into the socket's receive buffer | the NIC adapter (`NetPhy`), from the headers of every frame handed to smoltcp; all TCP traffic (the management port's few bytes too); duplicates smoltcp drops without copying count as well, so it is an upper bound |
//! | `copy_socket_to_app` | the NBD server takes bytes out of the socket's receive buffer (`recv_slice`) into its own buffers: request headers, and write payload into the write-log page (the copy that is the persistence) | the kernel's NBD `Stream` |
//! | `copy_app_to_socket` | the NBD server queues reply headers and read payload (from the pool buffer the disk read into) into the socket's send buffer (`send_slice`) | the kernel's NBD `Stream` |
//! | `copy_socket_to_frame` | smoltcp copies TCP payload from the socket's send buffer into an outgoing frame (retransmissions again) | `NetPhy`, from the headers of every frame smoltcp wrote |
//!
//! Not counted here: copies inside the NBD server itself (handshake stash, and the overlay of
//! logged data into read buffers), and the device's own DMA (no CPU copy).
//! `nbd_read_bytes`/`nbd_write_bytes` are the payload bytes of the NBD reads and writes the
//! server took (the denominator of "copies per payload byte").

use core::fmt;

/// The word before a successful reply's fields.
pub const OK_PREFIX: &str = "ok ";

/// The keys, in the order the guest prints them.
pub const RESTARTS: &str = "restarts";
pub const REQUESTS: &str = "requests";
pub const HEAP_USED: &str = "heap_used";
pub const NBD_READ_BYTES: &str = "nbd_read_bytes";
pub const NBD_WRITE_BYTES: &str = "nbd_write_bytes";
pub const COPY_FRAME_TO_SOCKET: &str = "copy_frame_to_socket";
pub const COPY_SOCKET_TO_APP: &str = "copy_socket_to_app";
pub const COPY_APP_TO_SOCKET: &str = "copy_app_to_socket";
pub const COPY_SOCKET_TO_FRAME: &str = "copy_socket_to_frame";
/// After the counters, with a log mirrored to another host (`mirror=` on): the mirror's
/// state (one of [`MIRROR_STATES`]) and how far the copy goes (an NVLOG sequence number).
pub const MIRROR: &str = "mirror";
pub const MIRRORED: &str = "mirrored";
/// `up`: writes are acknowledged once mirrored; `degraded`: the mirror is lost and the copy
/// outdated, writes go through to disk; `stopped`: the mirror is lost, acknowledgements wait.
pub const MIRROR_STATES: [&str; 3] = ["up", "degraded", "stopped"];

/// The mirror's part of a status reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mirror {
    /// One of [`MIRROR_STATES`].
    pub state: &'static str,
    pub mirrored: u64,
}

/// Bytes the NBD data path served and copied since this start (see the module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataPath {
    /// Payload bytes of NBD READs.
    pub nbd_read_bytes: u64,
    /// Payload bytes of NBD WRITEs.
    pub nbd_write_bytes: u64,
    /// TCP payload of received frames (smoltcp copies it into socket receive buffers).
    pub copy_frame_to_socket: u64,
    /// Bytes the NBD server took out of its sockets' receive buffers.
    pub copy_socket_to_app: u64,
    /// Bytes the NBD server queued into its sockets' send buffers.
    pub copy_app_to_socket: u64,
    /// TCP payload smoltcp wrote into outgoing frames from socket send buffers.
    pub copy_socket_to_frame: u64,
}

impl DataPath {
    /// Payload bytes served (reads and writes).
    pub fn payload_bytes(&self) -> u64 {
        self.nbd_read_bytes + self.nbd_write_bytes
    }

    /// Bytes copied, all four places together.
    pub fn copied_bytes(&self) -> u64 {
        self.copy_frame_to_socket
            + self.copy_socket_to_app
            + self.copy_app_to_socket
            + self.copy_socket_to_frame
    }

    /// What happened between `earlier` and `self` (each counter's difference; 0 where a
    /// counter went back, as it does across a restart).
    pub fn since(&self, earlier: &DataPath) -> DataPath {
        DataPath {
            nbd_read_bytes: self.nbd_read_bytes.saturating_sub(earlier.nbd_read_bytes),
            nbd_write_bytes: self.nbd_write_bytes.saturating_sub(earlier.nbd_write_bytes),
            copy_frame_to_socket: self
                .copy_frame_to_socket
                .saturating_sub(earlier.copy_frame_to_socket),
            copy_socket_to_app: self
                .copy_socket_to_app
                .saturating_sub(earlier.copy_socket_to_app),
            copy_app_to_socket: self
                .copy_app_to_socket
                .saturating_sub(earlier.copy_app_to_socket),
            copy_socket_to_frame: self
                .copy_socket_to_frame
                .saturating_sub(earlier.copy_socket_to_frame),
        }
    }
}

/// The fields of a `status` reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// Restarts in place since boot.
    pub restarts: u64,
    /// NBD requests the own service took since this start.
    pub requests: u64,
    /// Heap bytes in use.
    pub heap_used: u64,
    pub data: DataPath,
    /// With `mirror=` on.
    pub mirror: Option<Mirror>,
}

impl Status {
    fn fields(&self) -> [(&'static str, u64); 9] {
        let d = &self.data;
        [
            (RESTARTS, self.restarts),
            (REQUESTS, self.requests),
            (HEAP_USED, self.heap_used),
            (NBD_READ_BYTES, d.nbd_read_bytes),
            (NBD_WRITE_BYTES, d.nbd_write_bytes),
            (COPY_FRAME_TO_SOCKET, d.copy_frame_to_socket),
            (COPY_SOCKET_TO_APP, d.copy_socket_to_app),
            (COPY_APP_TO_SOCKET, d.copy_app_to_socket),
            (COPY_SOCKET_TO_FRAME, d.copy_socket_to_frame),
        ]
    }

    fn field_mut(&mut self, key: &str) -> Option<&mut u64> {
        let d = &mut self.data;
        Some(match key {
            RESTARTS => &mut self.restarts,
            REQUESTS => &mut self.requests,
            HEAP_USED => &mut self.heap_used,
            NBD_READ_BYTES => &mut d.nbd_read_bytes,
            NBD_WRITE_BYTES => &mut d.nbd_write_bytes,
            COPY_FRAME_TO_SOCKET => &mut d.copy_frame_to_socket,
            COPY_SOCKET_TO_APP => &mut d.copy_socket_to_app,
            COPY_APP_TO_SOCKET => &mut d.copy_app_to_socket,
            COPY_SOCKET_TO_FRAME => &mut d.copy_socket_to_frame,
            _ => return None,
        })
    }

    /// Parses a reply line (`ok restarts=...`, with or without `ok ` and the line end).
    /// Every key above must be there, once; unknown words are skipped (a newer guest may
    /// add fields).
    pub fn parse(line: &str) -> Result<Status, ParseError> {
        let line = line.trim();
        if line.starts_with("error") {
            return Err(ParseError::Refused);
        }
        let body = line.strip_prefix(OK_PREFIX.trim_end()).unwrap_or(line);
        let mut st = Status::default();
        let mut seen = 0u16;
        let mut mirror = (None, None);
        for word in body.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                MIRROR => {
                    let state = MIRROR_STATES.iter().find(|s| **s == value);
                    mirror.0 = Some(*state.ok_or(ParseError::BadValue(MIRROR))?);
                    continue;
                }
                MIRRORED => {
                    mirror.1 = Some(value.parse().map_err(|_| ParseError::BadValue(MIRRORED))?);
                    continue;
                }
                _ => {}
            }
            let Some(idx) = st.fields().iter().position(|(k, _)| *k == key) else {
                continue;
            };
            let v: u64 = value
                .parse()
                .map_err(|_| ParseError::BadValue(key_of(key)))?;
            if seen & (1 << idx) != 0 {
                return Err(ParseError::Repeated(key_of(key)));
            }
            seen |= 1 << idx;
            *st.field_mut(key).expect("a known key") = v;
        }
        match st
            .fields()
            .iter()
            .enumerate()
            .find(|(i, _)| seen & (1 << i) == 0)
        {
            Some((_, (k, _))) => Err(ParseError::Missing(k)),
            None => {
                st.mirror = match mirror {
                    (Some(state), Some(mirrored)) => Some(Mirror { state, mirrored }),
                    (None, None) => None,
                    (None, _) => return Err(ParseError::Missing(MIRROR)),
                    (_, None) => return Err(ParseError::Missing(MIRRORED)),
                };
                Ok(st)
            }
        }
    }
}

/// The static name of a known key.
fn key_of(key: &str) -> &'static str {
    Status::default()
        .fields()
        .iter()
        .find(|(k, _)| *k == key)
        .map_or("?", |(k, _)| k)
}

/// The fields as the reply carries them (without `ok ` and the line end).
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.fields().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={v}")?;
        }
        if let Some(m) = self.mirror {
            write!(f, " {MIRROR}={} {MIRRORED}={}", m.state, m.mirrored)?;
        }
        Ok(())
    }
}

/// Why a `status` reply did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The guest answered `error ...`.
    Refused,
    Missing(&'static str),
    Repeated(&'static str),
    BadValue(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Refused => f.write_str("the guest refused the status command"),
            ParseError::Missing(k) => write!(f, "status reply has no {k}="),
            ParseError::Repeated(k) => write!(f, "status reply has {k}= twice"),
            ParseError::BadValue(k) => write!(f, "status reply's {k}= is not a number"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            restarts: 2,
            requests: 12,
            heap_used: 4_300_800,
            data: DataPath {
                nbd_read_bytes: 4096,
                nbd_write_bytes: 8192,
                copy_frame_to_socket: 8248,
                copy_socket_to_app: 8247,
                copy_app_to_socket: 4136,
                copy_socket_to_frame: 4135,
            },
            mirror: None,
        }
    }

    #[test]
    fn round_trip() {
        let st = sample();
        let line = alloc::format!("{OK_PREFIX}{st}\n");
        assert!(line.starts_with("ok restarts=2 requests=12 "), "{line}");
        assert_eq!(Status::parse(&line), Ok(st));
        assert_eq!(Status::parse(&st.to_string()), Ok(st), "without ok");
        assert_eq!(
            Status::parse(&alloc::format!("{st}")).unwrap().data,
            st.data
        );
        // Every field is distinct in the line (no two keys share a value slot).
        let mut other = st;
        other.data.copy_socket_to_frame += 1;
        assert_ne!(Status::parse(&other.to_string()), Ok(st));
    }

    #[test]
    fn unknown_words_are_skipped_missing_and_bad_ones_are_errors() {
        let st = sample();
        let newer = alloc::format!("ok {st} future=1 word");
        assert_eq!(Status::parse(&newer), Ok(st));
        let old = "ok restarts=0 requests=12 heap_used=4300800";
        assert_eq!(Status::parse(old), Err(ParseError::Missing(NBD_READ_BYTES)));
        let bad = st.to_string().replace("requests=12", "requests=x");
        assert_eq!(Status::parse(&bad), Err(ParseError::BadValue(REQUESTS)));
        let twice = alloc::format!("{st} restarts=3");
        assert_eq!(Status::parse(&twice), Err(ParseError::Repeated(RESTARTS)));
        assert_eq!(
            Status::parse("error unknown command 'x'"),
            Err(ParseError::Refused)
        );
    }

    #[test]
    fn differences_and_totals() {
        let a = sample().data;
        let mut b = a;
        b.nbd_write_bytes += 4096;
        b.copy_frame_to_socket += 4124;
        b.copy_socket_to_app += 4124;
        b.copy_app_to_socket += 16;
        b.copy_socket_to_frame += 16;
        let d = b.since(&a);
        assert_eq!((d.payload_bytes(), d.copied_bytes()), (4096, 8280));
        assert_eq!(
            a.since(&b),
            DataPath::default(),
            "a counter that went back gives 0"
        );
    }

    #[test]
    fn the_mirror_fields_round_trip_and_are_optional() {
        let mut st = Status {
            restarts: 1,
            requests: 2,
            ..Status::default()
        };
        assert_eq!(Status::parse(&st.to_string()), Ok(st));
        for state in MIRROR_STATES {
            st.mirror = Some(Mirror {
                state,
                mirrored: 77,
            });
            let line = alloc::format!("{OK_PREFIX}{st}");
            assert!(
                line.contains(&alloc::format!("mirror={state} mirrored=77")),
                "{line}"
            );
            assert_eq!(Status::parse(&line), Ok(st));
        }
        let bad = st.to_string().replace("mirror=stopped", "mirror=sideways");
        assert_eq!(Status::parse(&bad), Err(ParseError::BadValue(MIRROR)));
        let half = st.to_string().replace(" mirrored=77", "");
        assert_eq!(Status::parse(&half), Err(ParseError::Missing(MIRRORED)));
    }
}
