//! The host side of the paravirtual split: `tandem-backend`, a vhost-user-blk back end built
//! on the rust-vmm crates, serving a raw image file to a guest's virtio-blk front end.
//!
//! # Why a back end of our own
//!
//! With vhost-user the guest's virtqueues live in guest memory that QEMU shares with this
//! process (a memfd), so a request goes guest ring → shared memory → this daemon → the host
//! kernel, and QEMU is out of the data path: it only relays the rings' addresses and
//! eventfds at start-up. `qemu-storage-daemon` does the same through QEMU's block layer and a
//! coroutine per request; this daemon does only what a raw image needs, with one worker
//! thread per virtqueue, each owning its own `io_uring` (many requests in flight per queue,
//! one `io_uring_enter` per batch of kicks, completions reaped on an eventfd in the same
//! epoll loop as the queue's kick).
//!
//! # Layout
//!
//! - [`request`]: the pure part. A descriptor chain in guest memory becomes a typed
//!   [`request::Request`] or a [`request::Rejected`] that says which status to report and
//!   where. Every length the guest controls is bounded there (descriptor counts, segment
//!   sizes, request sizes, sector ranges against the capacity, discard/write-zeroes segments);
//!   unit-tested with malformed chains built in a `GuestMemoryMmap`.
//! - [`config`]: the virtio-blk features and configuration space this device offers.
//! - [`disk`]: the image file: open (optionally `O_DIRECT`), capacity, alignment.
//! - [`engine`]: host I/O. [`engine::uring`] (the default where the kernel allows it) and
//!   [`engine::threads`] (a pool doing blocking `preadv`/`pwritev`), behind one interface;
//!   which one is probed at start and can be forced.
//! - [`queue`]: one virtqueue's worker: pop chains, parse, submit, complete (status byte,
//!   used ring, notification with event-idx suppression). A request reaches the used ring
//!   only after its host I/O completed (a flush is `fdatasync`).
//! - [`backend`]: the `VhostUserBackend` implementation tying these to `vhost-user-backend`.
//! - [`server`]: the listening socket, one front end at a time, reconnects, and the clean stop
//!   on SIGTERM (no new requests, in-flight ones completed, image synced, exit 0).
//! - [`log`]: a stderr logger for the `log` facade.
//!
//! `unsafe` is where pointers into guest memory go to the kernel ([`engine`], and
//! [`queue`], which keeps what they point to alive until the completion), in the libc calls
//! of [`disk`] (flock, statx, an aligned allocation) and [`server`] (signal mask, poll), and
//! in [`backend`] closing the descriptors vhost-user-backend leaks; each block has a
//! `SAFETY:` comment. The crate denies `unsafe_code`; only those five modules ([`backend`],
//! [`disk`], [`engine`], [`queue`], [`server`]) allow it, and [`request`], [`config`] and
//! [`log`] hold none.

#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod backend;
pub mod config;
#[allow(unsafe_code)]
pub mod disk;
#[allow(unsafe_code)]
pub mod engine;
pub mod log;
#[allow(unsafe_code)]
pub mod queue;
pub mod request;
#[allow(unsafe_code)]
pub mod server;
