//! The seed corpus: valid inputs for every target, built from the real encoders so the
//! fuzzer starts from what real peers send. `cargo run --example gen_corpus` (in `fuzz/`)
//! writes them to `corpus/<target>/seed-<name>`; the fuzzer adds its own finds beside them
//! when it runs locally (`scripts/fuzz` keeps those out of the repository).

use hpdi::{BufId, BufferPool, DmaMemory, HostMemory};
use tandem_formats::checkpoint::{
    kind, transport, Checkpoint, DeviceRecord, ExportRecord, NetRecord,
};
use tandem_formats::disk_label::{uuid_from, Label};
use tandem_formats::nbd_wire::{self as wire, cflag, cmd, opt};
use tandem_formats::nvlog::PAGE;
use tandem_formats::pair_region::{announce, set, word, Header as PairHeader, State};
use unikernel::nvlog::log::Nvlog;
use zerocopy::IntoBytes;

use crate::nbd_server::handshake;

/// (target, seed name, bytes).
pub type Seed = (&'static str, String, Vec<u8>);

fn option(code: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn name_req(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

/// A request header.
pub fn request(kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut v = wire::REQUEST_MAGIC.to_be_bytes().to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

fn handshake_seeds(out: &mut Vec<Seed>) {
    let t = "nbd_handshake";
    let with = |nexp: u8, cut: u8, body: Vec<u8>| {
        let mut v = vec![nexp, cut];
        v.extend(body);
        v
    };
    out.push((t, "go".into(), with(2, 0, handshake("blk0", false))));
    out.push((t, "go-structured".into(), with(3, 7, handshake("ro", true))));
    // LIST, INFO with name and description, LIST_META_CONTEXT, then EXPORT_NAME.
    let mut v = 3u32.to_be_bytes().to_vec();
    v.extend(option(opt::LIST, &[]));
    v.extend(option(opt::INFO, &name_req("blk0", &[1, 2, 3])));
    v.extend(option(opt::STRUCTURED_REPLY, &[]));
    let mut meta = name_req("", &[]);
    meta.truncate(4);
    meta.extend_from_slice(&0u32.to_be_bytes());
    v.extend(option(opt::LIST_META_CONTEXT, &meta));
    v.extend(option(opt::EXPORT_NAME, b"blk0"));
    out.push((t, "list-info-exportname".into(), with(3, 3, v)));
    // An unknown option, an oversized one (skipped), then ABORT.
    let mut v = 1u32.to_be_bytes().to_vec();
    v.extend(option(42, b"?"));
    let mut big = option(opt::INFO, &[]);
    big[12..16].copy_from_slice(&9000u32.to_be_bytes());
    v.extend(big);
    v.extend(vec![0u8; 9000]);
    v.extend(option(opt::ABORT, &[]));
    out.push((t, "too-big-abort".into(), with(1, 9, v)));
}

fn all_requests(cookie: &mut u64, write_len: u32) -> Vec<u8> {
    let mut v = Vec::new();
    let mut next = || {
        *cookie += 1;
        *cookie
    };
    v.extend(request(cmd::WRITE, 0, next(), 4096, write_len));
    v.extend((0..write_len).map(|i| i as u8));
    v.extend(request(cmd::READ, 0, next(), 4096, write_len));
    v.extend(request(cmd::WRITE, cflag::FUA, next(), 0, 512));
    v.extend(vec![0xa5; 512]);
    v.extend(request(cmd::FLUSH, 0, next(), 0, 0));
    v.extend(request(
        cmd::WRITE_ZEROES,
        cflag::NO_HOLE,
        next(),
        8192,
        8192,
    ));
    v.extend(request(cmd::TRIM, 0, next(), 65536, 65536));
    v.extend(request(cmd::CACHE, 0, next(), 0, 4096));
    v.extend(request(cmd::BLOCK_STATUS, 0, next(), 0, 1 << 20));
    v.extend(request(cmd::READ, cflag::DF, next(), 0, 200_000));
    v
}

fn request_seeds(out: &mut Vec<Seed>) {
    let t = "nbd_request";
    let mut cookie = 0;
    let mut v = vec![0b0001_1110, 0];
    v.extend(all_requests(&mut cookie, 4096));
    out.push((t, "every-command".into(), v));
    let mut v = vec![0b0001_1001, 1];
    v.extend(request(cmd::WRITE, 0, 1, 0, 4096));
    v.extend(request(cmd::DISC, 0, 2, 0, 0));
    out.push((t, "read-only".into(), v));
}

fn server_seeds(out: &mut Vec<Seed>) {
    let t = "nbd_server";
    let mut cookie = 0;
    for (name, cfg, pool) in [
        ("simple", 0u8, 40u8),
        ("structured", 1, 40),
        ("logged-nvlog", 0b0001_1001, 40),
        ("logged-disk-small-sends", 0b0100_1000, 8),
        ("two-clients-backpressure", 0b1110_0001, 16),
    ] {
        let mut v = vec![cfg, 5, pool];
        v.extend(all_requests(&mut cookie, 8192));
        if pool < 20 {
            // Larger than a pool buffer, under a small buffer budget.
            let len = (1 << 16) + 4096;
            v.extend(request(cmd::WRITE, 0, 99, 0, len));
            v.extend((0..len).map(|i| (i >> 9) as u8));
        }
        v.extend(request(cmd::DISC, 0, 100, 0, 0));
        out.push((t, name.into(), v));
    }
    let mut v = vec![0b0000_0100, 3, 40];
    v.extend(handshake("blk0", false));
    v.extend(request(cmd::WRITE, 0, 1, 0, 4096));
    v.extend(vec![1u8; 4096]);
    v.extend(request(cmd::READ, 0, 2, 0, 4096));
    out.push((t, "raw-handshake".into(), v));
}

/// A region of `pages` pages holding a log with a few records, written through the API.
fn nvlog_region(pages: usize) -> Vec<u8> {
    let mut pool = BufferPool::host(1, PAGE).unwrap();
    let mem: Box<dyn DmaMemory> = Box::new(HostMemory::new(pages * PAGE));
    let r = pool.add_region(mem, PAGE).unwrap();
    let (mut log, _) = Nvlog::open(&mut pool, r, 0x1234).unwrap();
    for (i, len) in [4096u32, 512, 10_000].into_iter().enumerate() {
        let res = log.reserve(len).unwrap();
        for seg in log.segments(res.page, 0, len).as_slice() {
            pool.slice_mut(seg).unwrap().fill(0x40 + i as u8);
        }
        log.commit(&mut pool, res, 7, i as u64 * 4096);
    }
    let mut out = Vec::new();
    for i in 0..pages {
        out.extend_from_slice(pool.buf(BufId::new(r, i as u32)).unwrap());
    }
    out
}

/// A `nvlog_open` input: config, pages, the records of the base (length, disk and kind,
/// offset / 512), which one to retire up to, and patches.
fn nvlog_input(
    cfg: u8,
    pages: usize,
    records: &[(u16, u8, u16)],
    retire: u8,
    patches: &[(usize, &[u8])],
) -> Vec<u8> {
    let mut v = vec![cfg, (pages - 16) as u8];
    if cfg & 3 != 0 {
        v.push(records.len() as u8 - 1);
        for (len, disk, off) in records {
            v.extend(len.to_le_bytes());
            v.push(*disk);
            v.extend(off.to_le_bytes());
        }
        if cfg & 3 == 2 {
            v.push(retire);
        }
    }
    for (at, bytes) in patches {
        v.extend_from_slice(&(*at as u32).to_le_bytes()[..3]);
        v.push(bytes.len() as u8);
        v.extend_from_slice(bytes);
    }
    v
}

fn nvlog_seeds(out: &mut Vec<Seed>) {
    let t = "nvlog_open";
    // (length, disk | kind << 4 (2: zero, 3: trim), offset / 512).
    let recs: &[(u16, u8, u16)] = &[
        (4095, 0, 8),
        (511, 1, 0),
        (15, 0x20, 16),
        (9999, 2, 100),
        (7, 0x31, 0),
    ];
    out.push((t, "empty".into(), nvlog_input(0, 20, &[], 0, &[])));
    out.push((t, "records".into(), nvlog_input(1, 36, recs, 0, &[])));
    out.push((
        t,
        "records-retired".into(),
        nvlog_input(2, 64, recs, 1, &[]),
    ));
    // A record header's bytes changed: a torn record ends the scan.
    out.push((
        t,
        "records-torn".into(),
        nvlog_input(1, 36, recs, 0, &[(4096 + 64 + 20, &[0xff])]),
    ));
    // The superblock patched, then re-sealed: the fuzzer edits fields past the checksum.
    out.push((
        t,
        "sealed-superblock-patch".into(),
        nvlog_input(5, 30, recs, 0, &[(16, &[0xff, 0xff, 0, 0])]),
    ));
    // A whole region given as patches (its non-zero runs), on a zero base.
    let pages = 20;
    let region = nvlog_region(pages);
    let mut patches = Vec::new();
    let mut at = 0;
    while at < region.len() {
        if region[at] == 0 {
            at += 1;
            continue;
        }
        let end = (at + 255).min(region.len());
        patches.push((at, &region[at..end]));
        at = end;
    }
    out.push((
        t,
        "raw-region".into(),
        nvlog_input(0, pages, &[], 0, &patches),
    ));
}

fn sample_checkpoint(generation: u64) -> Checkpoint {
    let disk = |dev: u8, label: u8| DeviceRecord {
        kind: kind::BLK,
        transport: transport::PCI,
        dev,
        vendor: 0x1af4,
        device: 0x1042,
        capacity: 64 << 20,
        label: [label; 16],
        queue_size: 256,
        ..Default::default()
    };
    let mut name = [0u8; 32];
    name[..4].copy_from_slice(b"blk0");
    Checkpoint {
        generation,
        net: NetRecord {
            ip: [10, 0, 2, 15],
            prefix: 24,
            has_gateway: 1,
            gateway: [10, 0, 2, 2],
            nbd_port: 10809,
            ..Default::default()
        },
        devices: vec![
            disk(3, 1),
            disk(4, 2),
            DeviceRecord {
                kind: kind::NET,
                transport: transport::MMIO,
                base: 0xfeb0_0000,
                device: 1,
                ..Default::default()
            },
        ],
        exports: vec![ExportRecord {
            name,
            device: 0,
            label: [1; 16],
            size: (64 << 20) - (1 << 20),
            ..Default::default()
        }],
    }
}

fn checkpoint_seeds(out: &mut Vec<Seed>) {
    let t = "checkpoint";
    let mut a = sample_checkpoint(7).encode().unwrap();
    a.resize(1024, 0);
    let b = sample_checkpoint(8).encode().unwrap();
    let mut v = vec![4, 1];
    v.extend(&a);
    v.extend(&b);
    out.push((t, "two-slots".into(), v));
    let mut v = vec![0, 2];
    v.extend(sample_checkpoint(1).encode().unwrap());
    out.push((t, "one-slot".into(), v));
}

fn label_seeds(out: &mut Vec<Seed>) {
    let t = "label";
    let l = Label::new(uuid_from([7; 16]), "blk0", 64 << 20, false).unwrap();
    let mut v = vec![0];
    v.extend(l.as_bytes());
    out.push((t, "blk0".into(), v));
    let l = Label::new(
        uuid_from([9; 16]),
        "a-32-byte-export-name-for-tests",
        1 << 30,
        true,
    )
    .unwrap();
    let mut v = vec![2];
    v.extend(l.as_bytes());
    out.push((t, "read-only-4k".into(), v));
}

fn pair_seeds(out: &mut Vec<Seed>) {
    let t = "pair_region";
    let size = 64u64 << 20;
    let h = PairHeader::new(size, 0xfeed).unwrap();
    let mem = tandem_formats::pair_region::MemWords::new();
    for n in 0..2 {
        set(&mem, n, word::HEARTBEAT, 100 + n as u64);
        set(&mem, n, word::STATE, State::Serving as u64);
        set(&mem, n, word::CLAIM[n], 1);
        announce(
            &mem,
            n,
            (h.area_offset[n], h.area_len[n]),
            [10, 77, 0, 10 + n as u8],
            [0x52, 0x54, 0, 0, 0, n as u8],
        );
    }
    // Node 1 has taken node 0 over.
    set(&mem, 1, word::CLAIM[0], 2);
    set(&mem, 0, word::FENCE_ACK, 2);
    let mut v = vec![0];
    v.extend(size.to_le_bytes());
    v.extend(h.as_bytes());
    for w in &mem.0.borrow()[(4096 / 8)..(4096 / 8 + 64)] {
        v.extend(w.to_le_bytes());
    }
    out.push((t, "two-nodes-takeover".into(), v));
}

/// Every seed.
fn tls_seeds(out: &mut Vec<Seed>) {
    let t = "nbd_tls";
    let hello = crate::nbd_tls::client_hello();
    let flags = 3u32.to_be_bytes().to_vec();
    let starttls = option(opt::STARTTLS, &[]);
    let go = option(opt::GO, &name_req("blk0", &[]));
    let with = |mode: u8, body: Vec<Vec<u8>>| {
        let mut v = vec![mode, 0, 255];
        v.extend(body.concat());
        v
    };
    out.push((
        t,
        "require-hello".into(),
        with(0, vec![flags.clone(), starttls.clone(), hello.clone()]),
    ));
    out.push((
        t,
        "require-refused-then-hello".into(),
        with(
            0,
            vec![
                flags.clone(),
                option(opt::LIST, &[]),
                go.clone(),
                starttls.clone(),
                hello.clone(),
            ],
        ),
    ));
    out.push((
        t,
        "on-list-then-hello".into(),
        with(
            1,
            vec![
                flags.clone(),
                option(opt::LIST, &[]),
                starttls.clone(),
                hello,
            ],
        ),
    ));
    out.push((
        t,
        "on-plaintext-go".into(),
        with(1, vec![flags.clone(), go.clone()]),
    ));
    out.push((
        t,
        "require-plaintext-after-ack".into(),
        with(0, vec![flags, starttls, go]),
    ));
}

pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    tls_seeds(&mut out);
    handshake_seeds(&mut out);
    request_seeds(&mut out);
    server_seeds(&mut out);
    nvlog_seeds(&mut out);
    checkpoint_seeds(&mut out);
    label_seeds(&mut out);
    pair_seeds(&mut out);
    mirror_seeds(&mut out);
    out
}

/// A stream a sender would write: hello, writes (payload, header), a commit, a heartbeat.
fn mirror_seeds(out: &mut Vec<Seed>) {
    use tandem_formats::mirror::{Frame, Kind};
    let frames: [(Kind, u64, &[u8]); 6] = [
        (Kind::Hello, 0, b""),
        (Kind::Write, 8192, &[0x6b; 4096]),
        (Kind::Write, 4096, &[0x11; 64]),
        (Kind::Commit, 1, b""),
        (Kind::Heartbeat, 0, b""),
        (Kind::Write, 0, &[0x22; 72]),
    ];
    let mut stream = vec![0, 63, 7, 3];
    let mut seq = 0;
    for (kind, arg, payload) in frames {
        // Hello and heartbeats do not advance the stream.
        seq += u64::from(matches!(kind, Kind::Write | Kind::Commit));
        let f = Frame {
            kind,
            stream_seq: seq,
            log_id: 7,
            arg,
            payload,
        };
        f.encode(&mut stream);
    }
    out.push(("mirror_stream", "hello-writes-commit".into(), stream));
    // The same as descriptions (mode 1): hello, a write of 16 bytes at 4096, a commit.
    let mut desc = vec![1, 15, 7, 3];
    desc.extend([0, 0, 0, 0, 0, 0]);
    desc.extend([1, 1, 0x00, 0x02, 16, 0]);
    desc.extend([0x5a; 16]);
    desc.extend([2, 2, 1, 0, 0, 0]);
    out.push(("mirror_stream", "described".into(), desc));
    // mirror_ship: a built log (mode 1) over 20 pages, and raw bytes.
    let mut log = vec![1, 3, 9, 0];
    log.extend((0u8..=255).cycle().take(600));
    out.push(("mirror_ship", "built-log".into(), log));
    out.push((
        "mirror_ship",
        "raw".into(),
        vec![0, 0, 1, 2, 0xff, 0x00, 0x7f],
    ));
}
