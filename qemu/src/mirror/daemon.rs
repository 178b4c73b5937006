//! `tandem mirror send` and `tandem mirror receive`: the two long-running ends of a node's
//! NVLOG mirror, as the `ocf:tandem:nvlog` agent runs them (one per host and guest).
//!
//! The sender runs on the host where the guest runs. It reads the guest's NVRAM file (which
//! QEMU maps shared, so the host sees what the guest writes), ships what the guest committed
//! with [`Shipper`] and, once the receiver acknowledges, writes the [`MirrorBlock`] into the
//! same file for the guest's gate. While the link is down it keeps the block's beat going
//! with state `down`; once the guest's log is drained and `--outdate-cmd` has marked the
//! other host's copy outdated, it says `outdated` (the guest may then write through).
//!
//! The receiver runs on the other host and keeps the copy in the file the guest's `<shmem>`
//! maps when Pacemaker starts it there. It starts from an empty copy: a file left from the
//! time this host ran the guest is another history and must never be replayed.
//!
//! Both write a status file (one JSON object, replaced atomically) for the agent's monitor.

use std::cell::OnceCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tandem_formats::mgmt_auth::Key;
use tandem_formats::mirror::{LinkState, MirrorBlock, BEAT_MS, BLOCK_AT};
use tandem_formats::mirror_ship::Shipper;
use tandem_formats::nvlog::{Superblock, PAGE};
use tandem_formats::nvlog_region::{newest_superblock, recover, Pages};
use zerocopy::IntoBytes;

use super::{LinkEvent, MirrorReceiver, MirrorSender};

/// How long a connect, a handshake step or an acknowledgement may take before the link
/// counts as down (the guest's `mirror.timeout_ms` is the other bound).
const LINK_TIMEOUT: Duration = Duration::from_millis(1500);
/// Idle poll of the region while nothing is new.
const POLL: Duration = Duration::from_micros(200);
/// Between connection attempts.
const RETRY: Duration = Duration::from_millis(300);
/// A receiver drops a sender silent this long.
const RECEIVER_IDLE: Duration = Duration::from_secs(5);

/// The link's identity on the wire: both ends derive it from the guest's name.
pub fn link_id(guest: &str) -> u64 {
    tandem_formats::nvlog::disk_id(guest, 0)
}

/// A file of 4 KiB pages, each read once per pass when first asked for.
pub struct FilePages<'a> {
    file: &'a File,
    pages: Vec<OnceCell<Box<[u8]>>>,
}

impl<'a> FilePages<'a> {
    /// Over `file` (its whole pages).
    pub fn new(file: &'a File) -> anyhow::Result<Self> {
        let n = file.metadata()?.len() / PAGE as u64;
        Ok(Self {
            file,
            pages: (0..n).map(|_| OnceCell::new()).collect(),
        })
    }
}

impl Pages for FilePages<'_> {
    fn pages(&self) -> u64 {
        self.pages.len() as u64
    }
    fn page(&self, i: u64) -> Option<&[u8]> {
        let cell = self.pages.get(usize::try_from(i).ok()?)?;
        Some(cell.get_or_init(|| {
            let mut b = vec![0u8; PAGE].into_boxed_slice();
            // A short read leaves zeroes: the walk then finds nothing there.
            let _ = self.file.read_exact_at(&mut b, i * PAGE as u64);
            b
        }))
    }
}

/// The region's newest superblock, read fresh.
fn superblock_now(file: &File) -> Option<Superblock> {
    let pages = FilePages::new(file).ok()?;
    newest_superblock(&pages).map(|(_, s)| s)
}

/// What the status file says (the agent reads these keys).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Status {
    /// `sender` or `receiver`.
    pub role: &'static str,
    /// The guest whose log this is.
    pub guest: String,
    /// An authenticated peer is connected now.
    pub connected: bool,
    /// Receiver: a sender completed a full pass since this daemon started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synced: Option<bool>,
    /// Receiver: the highest sequence number acknowledged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub committed: Option<u64>,
    /// Sender: how far the guest was told the copy goes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirrored: Option<u64>,
    /// Sender: up, down or outdated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
}

/// Replaces `path` with `status` (write a temporary file, then rename).
fn write_status(path: Option<&Path>, status: &Status) {
    let Some(path) = path else { return };
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_string(status).unwrap_or_default() + "\n";
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// `tandem mirror receive`.
pub struct ReceiveOpts {
    /// The guest (names the link).
    pub guest: String,
    /// The copy (`/dev/shm/tandem-nvlog-G`).
    pub copy: PathBuf,
    /// Its size in bytes (the guest's NVRAM size).
    pub size: u64,
    /// Where senders connect.
    pub listen: std::net::SocketAddr,
    /// The link key.
    pub key: Key,
    /// The status file.
    pub status: Option<PathBuf>,
    /// Keep what the copy holds (default: start from an empty copy).
    pub keep: bool,
}

/// Serves senders until `stop`.
pub fn run_receiver(o: &ReceiveOpts, stop: &AtomicBool) -> anyhow::Result<()> {
    if !o.keep {
        // Another history (this host may have run the guest): never replayed.
        let f = File::create(&o.copy)
            .with_context(|| format!("mirror: creating the copy {}", o.copy.display()))?;
        f.set_len(o.size)?;
    }
    let mut r = MirrorReceiver::bind(o.listen, o.key.clone(), &o.copy, link_id(&o.guest), o.size)?;
    let status = Arc::new(Mutex::new(Status {
        role: "receiver",
        guest: o.guest.clone(),
        synced: Some(false),
        committed: Some(0),
        ..Status::default()
    }));
    write_status(o.status.as_deref(), &status.lock().expect("status"));
    {
        let (status, path) = (Arc::clone(&status), o.status.clone());
        r.set_watch(move |e| {
            let mut s = status.lock().expect("status");
            match e {
                LinkEvent::Connected => s.connected = true,
                LinkEvent::Synced(seq) => {
                    s.synced = Some(true);
                    s.committed = Some(seq);
                }
                LinkEvent::Disconnected => s.connected = false,
            }
            write_status(path.as_deref(), &s);
        });
    }
    eprintln!(
        "tandem mirror: receiving {} on {} into {}",
        o.guest,
        o.listen,
        o.copy.display()
    );
    r.set_nonblocking_accept(true)?;
    while !stop.load(Ordering::SeqCst) {
        match r.serve_next(RECEIVER_IDLE, RETRY) {
            Ok(Some(end)) => eprintln!("tandem mirror: sender gone: {end:?}"),
            Ok(None) => {}
            Err(e) => eprintln!("tandem mirror: {e:#}"),
        }
    }
    Ok(())
}

/// `tandem mirror send`.
pub struct SendOpts {
    /// The guest (names the link).
    pub guest: String,
    /// The running guest's NVRAM file.
    pub region: PathBuf,
    /// The receiver.
    pub peer: std::net::SocketAddr,
    /// The link key.
    pub key: Key,
    /// The status file.
    pub status: Option<PathBuf>,
    /// Run (sh -c) to mark the peer's copy outdated; without it the guest never writes
    /// through (`mirror.policy=degraded` then behaves as `stop`).
    pub outdate_cmd: Option<String>,
    /// Run (sh -c) once a connection's first full pass is acknowledged, before the guest is
    /// told the mirror is up: it clears the outdated mark, so the copy that now holds what the
    /// guest acknowledges is never wiped as outdated. If it fails, the link counts as down.
    pub uptodate_cmd: Option<String>,
}

/// The sender's memory across connections.
struct Sending<'a> {
    o: &'a SendOpts,
    file: File,
    beat: u64,
    mirrored: u64,
    outdated: bool,
    status: Status,
}

impl Sending<'_> {
    /// Writes the guest's block (and the status file when it changed).
    fn tell(&mut self, state: LinkState) {
        let Some(sb) = superblock_now(&self.file) else {
            return; // no log yet: nothing to say
        };
        self.beat += 1;
        let b = MirrorBlock::new(state, sb.log_id, self.mirrored, self.beat);
        let _ = self.file.write_all_at(b.as_bytes(), BLOCK_AT as u64);
        let name = match state {
            LinkState::Up => "up",
            LinkState::Down => "down",
            LinkState::Outdated => "outdated",
        };
        if self.status.state != Some(name) || self.status.mirrored != Some(self.mirrored) {
            self.status.state = Some(name);
            self.status.connected = state == LinkState::Up;
            self.status.mirrored = Some(self.mirrored);
            write_status(self.o.status.as_deref(), &self.status);
        }
    }

    /// One connection, shipping until it breaks or `stop`.
    fn ship(&mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        let link = link_id(&self.o.guest);
        let (mut s, hello) =
            MirrorSender::connect_within(self.o.peer, &self.o.key, link, LINK_TIMEOUT)?;
        let mut shipper = Shipper::new();
        shipper.reset(hello.copy);
        self.outdated = false;
        let mut cleared = false;
        let mut told = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let pages = FilePages::new(&self.file)?;
            let plan = shipper.pass(&pages, || superblock_now(&self.file));
            drop(pages);
            if let Some(c) = plan.commit {
                for w in &plan.writes {
                    s.write(w.at, &w.bytes)?;
                }
                s.commit(c)?;
                let acked = s.wait_ack(c, LINK_TIMEOUT)?;
                if !cleared {
                    // The copy holds everything now: clear its outdated mark first.
                    run_hook("--uptodate-cmd", self.o.uptodate_cmd.as_deref())?;
                    cleared = true;
                }
                self.mirrored = acked;
                self.tell(LinkState::Up);
                told = Instant::now();
                continue;
            }
            if told.elapsed() >= Duration::from_millis(BEAT_MS) {
                s.heartbeat()?;
                self.tell(LinkState::Up);
                told = Instant::now();
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// The link is down: keep the guest told, and outdate the peer's copy once the guest's
    /// log holds nothing the copy vouched for.
    fn down(&mut self) {
        if !self.outdated
            && let Some(cmd) = &self.o.outdate_cmd
            && drained(&self.file)
        {
            match run_hook("--outdate-cmd", Some(cmd)) {
                Ok(()) => {
                    eprintln!(
                        "tandem mirror: the peer's copy of {} is outdated",
                        self.o.guest
                    );
                    self.outdated = true;
                }
                Err(e) => eprintln!("tandem mirror: {e:#}"),
            }
        }
        self.tell(if self.outdated {
            LinkState::Outdated
        } else {
            LinkState::Down
        });
    }
}

/// Runs an operator's hook (sh -c); `None` is success.
fn run_hook(what: &str, cmd: Option<&str>) -> anyhow::Result<()> {
    let Some(cmd) = cmd else { return Ok(()) };
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .with_context(|| format!("{what}: running it"))?;
    anyhow::ensure!(st.success(), "{what} failed ({st})");
    Ok(())
}

/// Whether the region's log holds no live record (everything is on disk).
fn drained(file: &File) -> bool {
    let Ok(pages) = FilePages::new(file) else {
        return false;
    };
    recover(&pages).is_some_and(|(_, w)| w.records.is_empty() && w.torn.is_none())
}

/// Ships the region until `stop`, reconnecting for ever.
pub fn run_sender(o: &SendOpts, stop: &AtomicBool) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&o.region)
        .with_context(|| format!("mirror: opening the region {}", o.region.display()))?;
    let mut st = Sending {
        o,
        file,
        beat: 0,
        mirrored: 0,
        outdated: false,
        status: Status {
            role: "sender",
            guest: o.guest.clone(),
            ..Status::default()
        },
    };
    eprintln!(
        "tandem mirror: sending {} ({}) to {}",
        o.guest,
        o.region.display(),
        o.peer
    );
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = st.ship(stop) {
            eprintln!("tandem mirror: link to {} down: {e:#}", o.peer);
        }
        let until = Instant::now() + RETRY;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            st.down();
            std::thread::sleep(Duration::from_millis(BEAT_MS / 2));
        }
    }
    Ok(())
}

/// `tandem mirror inspect`: what a region or copy holds.
#[derive(Debug, Clone, Serialize)]
pub struct Inspect {
    /// A valid superblock was found.
    pub log: bool,
    /// Its log's identity.
    pub log_id: u64,
    /// Every record up to this is on disk.
    pub retired: u64,
    /// Records a replay would write.
    pub live: usize,
    /// A torn record ended the walk.
    pub torn: Option<u64>,
}

/// Reads what the file at `path` holds as an NVLOG region.
pub fn inspect(path: &Path) -> anyhow::Result<Inspect> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let pages = FilePages::new(&file)?;
    Ok(match recover(&pages) {
        Some((sb, w)) => Inspect {
            log: true,
            log_id: sb.log_id,
            retired: sb.retired_seq,
            live: w.records.len(),
            torn: w.torn,
        },
        None => Inspect {
            log: false,
            log_id: 0,
            retired: 0,
            live: 0,
            torn: None,
        },
    })
}
