//! The daemon's life: listen on the socket, serve one front end at a time, survive its
//! going away, stop cleanly on SIGTERM.
//!
//! - **Reconnects.** Each connection gets a fresh `VhostUserDaemon` (rings, worker threads,
//!   guest memory) around the same backend. When the front end goes away (QEMU quits or is
//!   killed), the requests it left in flight are completed (their memory stays mapped until
//!   then), the worker threads are joined, and the daemon waits for the next front end on
//!   the same socket. Nothing the front end does ends the process.
//! - **SIGTERM / SIGINT / SIGHUP.** The queues stop taking requests from the rings, requests
//!   in flight complete (or fail) and reach the used ring, the image is `fdatasync`ed, the
//!   connection is closed, the socket removed, and the process exits 0. A second signal
//!   exits at once (status 130). Signals are blocked in every thread and taken by one
//!   `sigwait` thread, so no handler runs in the middle of the data path.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backend::BlkBackend;
use crate::config::DeviceConfig;
use crate::disk::{AlignedBuf, Disk};
use crate::engine::{self, EngineKind};
use crate::queue::{Device, Queue, ZERO_CHUNK};
use crate::request::{self, Limits};

/// How long a stop or a disconnect waits for requests in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// `--engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineChoice {
    /// io_uring where it works, else the thread pool.
    Auto,
    /// io_uring or fail.
    IoUring,
    /// The thread pool.
    Threads,
}

/// What to serve and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The vhost-user socket to listen on.
    pub socket: PathBuf,
    /// The raw image.
    pub image: PathBuf,
    /// Serve read-only.
    pub read_only: bool,
    /// Number of queues (one worker thread each).
    pub queues: u16,
    /// Largest queue the front end may set up.
    pub queue_size: u16,
    /// Open the image with `O_DIRECT`.
    pub direct: bool,
    /// Host I/O engine.
    pub engine: EngineChoice,
    /// The id returned by get-id (default: the image's file name).
    pub serial: Option<String>,
    /// Threads per queue of the thread-pool engine.
    pub pool_threads: usize,
    /// Test aid: the thread-pool engine waits this long before each operation.
    pub debug_io_delay: Duration,
}

/// Decide the engine: `--engine`, else io_uring when [`engine::probe_io_uring`] passes.
pub fn choose_engine(choice: EngineChoice) -> Result<(EngineKind, String), String> {
    match choice {
        EngineChoice::Threads => Ok((EngineKind::Threads, "--engine threads".into())),
        EngineChoice::IoUring => engine::probe_io_uring()
            .map(|()| (EngineKind::IoUring, "--engine io-uring".into()))
            .map_err(|why| format!("--engine io-uring: {why}")),
        EngineChoice::Auto => Ok(match engine::probe_io_uring() {
            Ok(()) => (EngineKind::IoUring, "io_uring available".into()),
            Err(why) => (
                EngineKind::Threads,
                format!("io_uring unavailable ({why}): thread pool"),
            ),
        }),
    }
}

/// Build the backend for `opts` (image opened, engines created).
pub fn build(opts: &Options) -> Result<BlkBackend, String> {
    let disk =
        Arc::new(Disk::open(&opts.image, opts.read_only, opts.direct).map_err(|e| e.to_string())?);
    let (kind, why) = choose_engine(opts.engine)?;
    let limits = Limits::new(disk.capacity_sectors, opts.read_only);
    let config = DeviceConfig {
        limits,
        blk_size: disk.io_align.max(512),
        num_queues: opts.queues,
        max_queue_size: opts.queue_size,
    };
    // Room for every descriptor head twice over (a guest re-posting heads cannot grow the
    // table without bound), and for a few operations per request in the engine.
    let cap = usize::from(opts.queue_size) * 2;
    let mut queues = Vec::new();
    for i in 0..usize::from(opts.queues) {
        let e = engine::new_engine(
            kind,
            disk.fd(),
            cap as u32 * 2,
            opts.pool_threads,
            opts.debug_io_delay,
        )
        .map_err(|e| format!("queue {i}: {} engine: {e}", kind.name()))?;
        queues.push(Queue::new(i, e, cap));
    }
    let serial = opts.serial.clone().unwrap_or_else(|| {
        opts.image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let device = Device {
        disk: Arc::clone(&disk),
        limits,
        id: request::id_bytes(&serial),
        zero: AlignedBuf::zeroed(ZERO_CHUNK, 4096).ok_or("out of memory")?,
    };
    log::info!(
        "{}: {} sectors ({} MiB), {}, {}, blk_size {}; {} queue(s) of up to {}; engine {} ({why})",
        disk.path.display(),
        disk.capacity_sectors,
        disk.capacity_sectors / 2048,
        if opts.read_only {
            "read-only"
        } else {
            "read-write"
        },
        if opts.direct {
            "O_DIRECT"
        } else {
            "page cache"
        },
        config.blk_size,
        opts.queues,
        opts.queue_size,
        kind.name(),
    );
    Ok(BlkBackend::new(config, device, queues))
}

struct Control {
    requested: AtomicBool,
    wake: EventFd,
    conn: Mutex<Option<ShutdownHandle>>,
}

/// Block the stop signals in this thread (and every thread it starts afterwards).
fn block_signals() -> Result<libc::sigset_t, String> {
    // SAFETY: sigset_t is plain data; the sig* calls only write into the set we own, and
    // pthread_sigmask changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(format!(
                "pthread_sigmask: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        Ok(set)
    }
}

fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` is a valid, initialised signal set; sigwait writes the signal number.
    let rc = unsafe { libc::sigwait(set, &mut sig) };
    if rc == 0 {
        sig
    } else {
        libc::SIGTERM
    }
}

/// Wait until the listener has a connection (true) or a stop was requested (false).
fn wait_for_client(listener: &Listener, wake: &EventFd) -> bool {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfd entries.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        if fds[1].revents != 0 {
            return false;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            return true;
        }
    }
}

/// Listen on `path` such that the path appears only once the socket accepts connections
/// (bound and listening under a temporary name in the same directory, then renamed), so a
/// front end that starts as soon as it sees the file is never refused. An existing file at
/// `path` is replaced.
fn listen(path: &std::path::Path) -> std::io::Result<Listener> {
    let tmp = path.with_file_name(format!(".tandem-backend-{}.sock", std::process::id()));
    if tmp.as_os_str().len() > 107 {
        // No room for the temporary name: bind in place.
        let _ = std::fs::remove_file(path);
        return Ok(Listener::from(std::os::unix::net::UnixListener::bind(
            path,
        )?));
    }
    let _ = std::fs::remove_file(&tmp);
    let l = std::os::unix::net::UnixListener::bind(&tmp)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Listener::from(l))
}

/// Run the daemon until a stop signal; `Ok` after a clean stop.
pub fn run(opts: &Options) -> Result<(), String> {
    let sigset = block_signals()?;
    let backend = Arc::new(build(opts)?);
    let mut listener =
        listen(&opts.socket).map_err(|e| format!("listening on {}: {e}", opts.socket.display()))?;
    let ctl = Arc::new(Control {
        requested: AtomicBool::new(false),
        wake: EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?,
        conn: Mutex::new(None),
    });
    spawn_signal_thread(sigset, Arc::clone(&ctl), Arc::clone(&backend))?;
    log::info!("listening on {}", opts.socket.display());

    while wait_for_client(&listener, &ctl.wake) {
        serve_connection(&backend, &ctl, &mut listener);
        if ctl.requested.load(Ordering::SeqCst) {
            break;
        }
    }
    stop(&backend, opts)
}

/// The thread that takes the stop signals: the first stops the queues taking requests,
/// drains them and shuts the connection down; a second exits at once.
fn spawn_signal_thread(
    sigset: libc::sigset_t,
    ctl: Arc<Control>,
    backend: Arc<BlkBackend>,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = wait_signal(&sigset);
            log::info!(
                "signal {sig}: finishing {} request(s) in flight, then stopping",
                backend.in_flight()
            );
            {
                let _g = ctl.conn.lock().unwrap_or_else(|e| e.into_inner());
                backend.stop_taking_requests();
                ctl.requested.store(true, Ordering::SeqCst);
            }
            let _ = ctl.wake.write(1);
            std::thread::spawn(move || {
                let sig = wait_signal(&sigset);
                eprintln!("tandem-backend: second signal {sig}: exiting now");
                std::process::exit(130);
            });
            if !backend.quiesce(DRAIN_TIMEOUT) {
                log::warn!(
                    "{} request(s) still in flight after {DRAIN_TIMEOUT:?}",
                    backend.in_flight()
                );
            }
            let handle = ctl.conn.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(h) = handle {
                h.shutdown();
            }
        })
        .map(drop)
        .map_err(|e| format!("signal thread: {e}"))
}

/// Serve one front end, from accepting its connection until it goes away (or a stop shuts
/// it down), then drain its requests and join its worker threads.
fn serve_connection(backend: &Arc<BlkBackend>, ctl: &Control, listener: &mut Listener) {
    let conn = backend.new_connection();
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = match VhostUserDaemon::new("tandem-backend".into(), Arc::clone(backend), mem) {
        Ok(d) => d,
        Err(e) => {
            backend.end_connection();
            log::error!("setting up for a connection: {e}");
            std::thread::sleep(Duration::from_millis(100));
            return;
        }
    };
    for (i, h) in daemon.get_epoll_handlers().iter().enumerate() {
        if let Some(q) = backend.queues.get(i)
            && let Err(e) =
                h.register_listener(q.event_fd(), EventSet::IN, backend.completion_event_id())
        {
            log::error!("queue {i}: watching completions: {e}");
        }
    }
    if let Err(e) = daemon.start(listener) {
        log::warn!("accepting a connection: {e}");
        drop(daemon);
        backend.end_connection();
        return;
    }
    {
        let mut g = ctl.conn.lock().unwrap_or_else(|e| e.into_inner());
        *g = daemon.shutdown_handle();
        if ctl.requested.load(Ordering::SeqCst)
            && let Some(h) = g.take()
        {
            h.shutdown();
        }
    }
    log::info!("front end connected (connection {conn})");
    let result = daemon.wait();
    ctl.conn.lock().unwrap_or_else(|e| e.into_inner()).take();
    match result {
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected
            | vhost::vhost_user::Error::PartialMessage
            | vhost::vhost_user::Error::SocketBroken(_),
        )) => log::info!("front end disconnected (connection {conn})"),
        Err(e) => log::warn!("connection {conn} ended: {e}"),
    }
    if !backend.quiesce(DRAIN_TIMEOUT) {
        log::warn!(
            "{} request(s) of connection {conn} still in flight after {DRAIN_TIMEOUT:?}; \
             they will finish without touching the next connection",
            backend.in_flight()
        );
    }
    // Counters first: the worker threads' CPU time is read while they exist.
    let stats = backend.take_stats();
    // Joins the connection's worker threads.
    drop(daemon);
    backend.end_connection();
    log::info!("connection {conn}: {}", stats.summary());
}

/// The clean stop: no new requests, those in flight drained, the image synced, the socket
/// removed.
fn stop(backend: &BlkBackend, opts: &Options) -> Result<(), String> {
    backend.stop_taking_requests();
    let drained = backend.quiesce(DRAIN_TIMEOUT);
    let synced = backend.device.disk.sync();
    let _ = std::fs::remove_file(&opts.socket);
    if let Err(e) = &synced {
        log::error!("fdatasync {}: {e}", backend.device.disk.path.display());
    }
    if !drained {
        return Err(format!(
            "{} request(s) still in flight at exit",
            backend.in_flight()
        ));
    }
    synced.map_err(|e| format!("fdatasync: {e}"))?;
    log::info!("stopped cleanly");
    Ok(())
}
