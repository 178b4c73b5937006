//! Host tests of `NetPhy`: two adapters joined by an in-memory wire carry a TCP stream
//! between two smoltcp interfaces, and a spy between smoltcp and each adapter records the
//! address of every frame smoltcp reads or writes, so the tests can show that those are the
//! very pool buffers the device received into and sent from.

use std::collections::{HashSet, VecDeque};
use std::rc::Rc;

use hpdi::OpSet;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{Device as _, RxToken as _, TxToken as _};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpAddress, IpCidr, Ipv4Address,
};

use super::*;
use crate::ramdisk::RamDisk;

// ---------------------------------------------------------------------------------------
// The wire: an in-memory network device pair.

/// What travels between the two ends, and what they saw.
#[derive(Default)]
struct Line {
    /// Frames on their way to each side.
    frames: [VecDeque<Vec<u8>>; 2],
    /// Address and length of each send buffer the wire read, by sending side.
    sent_from: [Vec<(u64, usize)>; 2],
    /// Address and length of each receive buffer the wire wrote, by receiving side.
    delivered_to: [Vec<(u64, usize)>; 2],
    /// Receives each side has posted and not had completed.
    posted: [usize; 2],
    /// Withhold the completions of this side's sends (a device that stops transmitting).
    hold_tx: [bool; 2],
}

type LineRef = Rc<RefCell<Line>>;

/// One end of the wire: an HPDI network device. A send is copied onto the wire (a wire
/// necessarily carries a copy) and later into the other side's oldest posted receive buffer;
/// the end counts both copies.
struct WireEnd {
    side: usize,
    line: LineRef,
    posted: VecDeque<Request>,
    done: VecDeque<Completion>,
    held: VecDeque<Completion>,
    stats: DeviceStats,
}

const WIRE_DEPTH: usize = 64;
const WIRE_QUEUE: usize = 256;

fn wire() -> (WireEnd, WireEnd, LineRef) {
    let line = LineRef::default();
    let end = |side| WireEnd {
        side,
        line: line.clone(),
        posted: VecDeque::new(),
        done: VecDeque::new(),
        held: VecDeque::new(),
        stats: DeviceStats::default(),
    };
    (end(0), end(1), line.clone())
}

impl Device for WireEnd {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kind: DeviceKind::Net,
            block_size: 1,
            capacity: 0,
            max_segments: 4,
            queue_depth: WIRE_DEPTH as u16,
            ops: OpSet::of(&[Op::Send, Op::Recv]),
            read_only: false,
        }
    }

    fn start(&mut self, pool: &mut BufferPool, req: &Request) -> Result<(), Error> {
        if self.in_flight() >= 2 * WIRE_DEPTH {
            return Err(Error::RingFull);
        }
        self.capabilities().validate(req)?;
        for seg in req.sg.as_slice() {
            pool.check(seg)?;
        }
        let first = pool.phys(&req.sg.as_slice()[0])?;
        let mut line = self.line.borrow_mut();
        if req.op == Op::Recv {
            if req.sg.total() < MAX_FRAME as u64 {
                return Err(Error::BadSegment);
            }
            self.posted.push_back(*req);
            line.posted[self.side] += 1;
        } else {
            let mut frame = Vec::new();
            for seg in req.sg.as_slice() {
                frame.extend_from_slice(pool.slice(seg)?);
            }
            self.stats.bytes_copied += frame.len() as u64;
            self.stats.bytes_moved += frame.len() as u64;
            line.sent_from[self.side].push((first, frame.len()));
            let c = Completion {
                tag: req.tag,
                result: Ok(frame.len() as u32),
            };
            let to = &mut line.frames[1 - self.side];
            if to.len() < WIRE_QUEUE {
                to.push_back(frame);
            }
            if line.hold_tx[self.side] {
                self.held.push_back(c);
            } else {
                self.done.push_back(c);
            }
        }
        self.stats.submitted += 1;
        self.stats.max_in_flight = self.stats.max_in_flight.max(self.in_flight() as u32);
        Ok(())
    }

    fn complete(
        &mut self,
        pool: &mut BufferPool,
        max: usize,
        done: &mut dyn FnMut(Completion),
    ) -> usize {
        let mut line = self.line.borrow_mut();
        while !self.posted.is_empty() && !line.frames[self.side].is_empty() {
            let (Some(req), Some(frame)) =
                (self.posted.pop_front(), line.frames[self.side].pop_front())
            else {
                break;
            };
            line.posted[self.side] -= 1;
            let mut at = 0;
            for seg in req.sg.as_slice() {
                let dst = pool.slice_mut(seg).unwrap();
                let n = dst.len().min(frame.len() - at);
                dst[..n].copy_from_slice(&frame[at..at + n]);
                at += n;
            }
            let first = pool.phys(&req.sg.as_slice()[0]).unwrap();
            line.delivered_to[self.side].push((first, at));
            self.stats.bytes_copied += at as u64;
            self.stats.bytes_moved += at as u64;
            self.done.push_back(Completion {
                tag: req.tag,
                result: Ok(at as u32),
            });
        }
        if !line.hold_tx[self.side] {
            self.done.extend(self.held.drain(..));
        }
        let n = max.min(self.done.len());
        for c in self.done.drain(..n) {
            done(c);
        }
        self.stats.completed += n as u64;
        n
    }

    fn in_flight(&self) -> usize {
        self.posted.len() + self.done.len() + self.held.len()
    }

    fn stats(&self) -> DeviceStats {
        self.stats
    }
}

// ---------------------------------------------------------------------------------------
// The spy: records where each frame smoltcp reads or writes lies.

#[derive(Default)]
struct Seen {
    rx: Vec<(u64, usize)>,
    tx: Vec<(u64, usize)>,
    /// TCP payload bytes of the frames, by smoltcp's own parser.
    tcp_rx: u64,
    tcp_tx: u64,
}

/// The TCP payload length of a frame as smoltcp's wire parser sees it.
fn smoltcp_tcp_payload(frame: &[u8]) -> u64 {
    use smoltcp::wire::{IpProtocol, Ipv4Packet, TcpPacket};
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return 0;
    };
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return 0;
    }
    let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
        return 0;
    };
    if ip.next_header() != IpProtocol::Tcp {
        return 0;
    }
    TcpPacket::new_checked(ip.payload()).map_or(0, |t| t.payload().len() as u64)
}

struct Spy {
    phy: NetPhy,
    seen: RefCell<Seen>,
}

impl Spy {
    fn new(phy: NetPhy) -> Self {
        Self {
            phy,
            seen: RefCell::default(),
        }
    }

    /// Addresses of the adapter's pool buffers.
    fn buffer_addrs(&self) -> HashSet<u64> {
        let pool = self.phy.pool();
        self.phy
            .buffers()
            .iter()
            .map(|&b| pool.phys(&Segment::whole(b, pool.buf_size())).unwrap())
            .collect()
    }
}

struct SpyRx<'a>(super::RxToken<'a>, &'a RefCell<Seen>);
struct SpyTx<'a>(super::TxToken<'a>, &'a RefCell<Seen>);

impl phy::Device for Spy {
    type RxToken<'a>
        = SpyRx<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = SpyTx<'a>
    where
        Self: 'a;

    fn receive(&mut self, t: Instant) -> Option<(SpyRx<'_>, SpyTx<'_>)> {
        let seen = &self.seen;
        self.phy
            .receive(t)
            .map(|(rx, tx)| (SpyRx(rx, seen), SpyTx(tx, seen)))
    }

    fn transmit(&mut self, t: Instant) -> Option<SpyTx<'_>> {
        let seen = &self.seen;
        self.phy.transmit(t).map(|tx| SpyTx(tx, seen))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.phy.capabilities()
    }
}

impl phy::RxToken for SpyRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let seen = self.1;
        self.0.consume(|frame| {
            let mut s = seen.borrow_mut();
            s.rx.push((frame.as_ptr() as u64, frame.len()));
            s.tcp_rx += smoltcp_tcp_payload(frame);
            drop(s);
            f(frame)
        })
    }
}

impl phy::TxToken for SpyTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let seen = self.1;
        self.0.consume(len, |frame| {
            seen.borrow_mut()
                .tx
                .push((frame.as_ptr() as u64, frame.len()));
            let r = f(frame);
            seen.borrow_mut().tcp_tx += smoltcp_tcp_payload(frame);
            r
        })
    }
}

// ---------------------------------------------------------------------------------------

fn phy(end: WireEnd, rx: usize, tx: usize) -> NetPhy {
    let pool = BufferPool::host(rx + tx, 2048).unwrap();
    NetPhy::new(
        Box::new(end),
        pool,
        NetPhyConfig {
            rx_buffers: rx,
            tx_buffers: tx,
        },
    )
    .unwrap()
}

fn iface(dev: &mut Spy, last: u8) -> Interface {
    let mac = EthernetAddress([0x02, 0, 0, 0, 0, last]);
    let mut cfg = Config::new(HardwareAddress::Ethernet(mac));
    cfg.random_seed = u64::from(last);
    let mut iface = Interface::new(cfg, dev, Instant::ZERO);
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::v4(10, 0, 0, last), 24))
            .unwrap()
    });
    iface
}

fn tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 16 * 1024]),
        tcp::SocketBuffer::new(vec![0; 16 * 1024]),
    )
}

#[test]
fn tcp_stream_through_two_adapters_copies_nothing_in_them() {
    const LEN: usize = 64 * 1024;
    let (end_a, end_b, line) = wire();
    let (mut a, mut b) = (Spy::new(phy(end_a, 16, 16)), Spy::new(phy(end_b, 16, 16)));
    let (mut ia, mut ib) = (iface(&mut a, 1), iface(&mut b, 2));
    let (mut sa, mut sb) = (SocketSet::new(vec![]), SocketSet::new(vec![]));
    let client = sa.add(tcp_socket());
    let server = sb.add(tcp_socket());
    sb.get_mut::<tcp::Socket>(server).listen(5000).unwrap();
    sa.get_mut::<tcp::Socket>(client)
        .connect(ia.context(), (IpAddress::v4(10, 0, 0, 2), 5000), 49152)
        .unwrap();

    let mut x = 0x2545_f491_u32;
    let data: Vec<u8> = (0..LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let (mut sent, mut echoed) = (0, Vec::with_capacity(LEN));
    let mut tmp = vec![0u8; 16 * 1024];
    let mut now = Instant::ZERO;
    let mut steps = 0;
    while echoed.len() < LEN {
        steps += 1;
        assert!(
            steps < 20_000,
            "transfer stalled: {} of {LEN} back",
            echoed.len()
        );
        ia.poll(now, &mut a, &mut sa);
        ib.poll(now, &mut b, &mut sb);
        // Client: send the data, collect the echo.
        let c = sa.get_mut::<tcp::Socket>(client);
        if c.can_send() && sent < LEN {
            sent += c.send_slice(&data[sent..]).unwrap();
        }
        if c.can_recv() {
            c.recv(|buf| {
                echoed.extend_from_slice(buf);
                (buf.len(), ())
            })
            .unwrap();
        }
        // Server: echo what arrives.
        let s = sb.get_mut::<tcp::Socket>(server);
        if s.can_recv() && s.can_send() {
            let room = (s.send_capacity() - s.send_queue()).min(tmp.len());
            let n = s.recv_slice(&mut tmp[..room]).unwrap();
            assert_eq!(s.send_slice(&tmp[..n]).unwrap(), n);
        }
        now += Duration::from_millis(1);
    }
    assert!(echoed == data, "the stream came back intact");

    let line = line.borrow();
    for (side, spy) in [&a, &b].into_iter().enumerate() {
        let seen = spy.seen.borrow();
        let st = spy.phy.stats();
        // smoltcp's own copies (frame -> socket buffer, socket buffer -> frame): each side
        // sent and received the whole stream once (more if a segment was sent again).
        assert!(
            st.tcp_tx_payload >= LEN as u64 && st.tcp_rx_payload >= LEN as u64,
            "side {side}: {st:?}"
        );
        assert_eq!(
            (st.tcp_rx_payload, st.tcp_tx_payload),
            (seen.tcp_rx, seen.tcp_tx),
            "side {side}: the TCP payload of its frames, as smoltcp parses them"
        );
        assert_eq!(st.tx_dropped + st.rx_errors + st.tx_errors, 0);
        assert!(st.rx_frames > (LEN / 1500) as u64, "{st:?}");
        // smoltcp read every received frame in the receive buffer the wire wrote it to,
        // and wrote every frame it sent in the very buffer the wire read it from.
        assert_eq!(
            seen.rx[..],
            line.delivered_to[side][..seen.rx.len()],
            "side {side}"
        );
        assert_eq!(seen.tx, line.sent_from[side], "side {side}");
        assert_eq!(
            (st.rx_frames, st.tx_frames),
            (seen.rx.len() as u64, seen.tx.len() as u64)
        );
        assert_eq!(st.rx_bytes, seen.rx.iter().map(|f| f.1 as u64).sum::<u64>());
        assert_eq!(st.tx_bytes, seen.tx.iter().map(|f| f.1 as u64).sum::<u64>());
        // ... and those are the adapter's own pool buffers, frames at offset 0.
        let addrs = spy.buffer_addrs();
        assert!(seen.rx.iter().chain(&seen.tx).all(|f| addrs.contains(&f.0)));
        // The only copies are the wire's.
        let dev = spy.phy.device_stats();
        assert_eq!(dev.bytes_copied, dev.bytes_moved);
    }
    let (sa, sb) = (a.phy.stats(), b.phy.stats());
    assert!(
        sa.tcp_rx_payload <= sb.tcp_tx_payload && sb.tcp_rx_payload <= sa.tcp_tx_payload,
        "a side receives at most what the other sent: {sa:?} {sb:?}"
    );
    let payload: u64 = [&a, &b].iter().map(|s| s.phy.stats().tx_bytes).sum();
    assert!(
        payload > 2 * LEN as u64,
        "both directions carried the stream"
    );
}

#[test]
fn receive_buffers_stay_posted() {
    let (end, _other, line) = wire();
    let mut p = phy(end, 8, 4);
    assert_eq!((p.rx_posted(), line.borrow().posted[0]), (8, 8));
    assert_eq!(p.tx_free(), 4);
    let frame: Vec<u8> = (0..100u8).collect();
    line.borrow_mut().frames[0].push_back(frame.clone());
    let (rx, _tx) = p.receive(Instant::ZERO).expect("a frame arrived");
    let (addr, got) = rx.consume(|f| (f.as_ptr() as u64, f.to_vec()));
    assert_eq!(got, frame);
    assert_eq!(
        addr,
        line.borrow().delivered_to[0][0].0,
        "read where it landed"
    );
    assert!(p.receive(Instant::ZERO).is_none(), "nothing more");
    assert_eq!(p.rx_posted(), 8, "the consumed buffer is posted again");
    assert_eq!(p.tx_free(), 4, "the unused reply buffer is free again");
    assert_eq!(p.stats().rx_frames, 1);
}

#[test]
fn transmit_is_refused_while_every_buffer_is_in_flight() {
    let (end, _other, line) = wire();
    let mut p = phy(end, 2, 4);
    line.borrow_mut().hold_tx[0] = true;
    for i in 0..4u8 {
        let tx = p.transmit(Instant::ZERO).expect("a free transmit buffer");
        tx.consume(60, |f| f.fill(i));
    }
    assert!(p.transmit(Instant::ZERO).is_none());
    assert_eq!(p.stats().tx_exhausted, 1);
    let l = line.borrow();
    assert_eq!(l.frames[1].len(), 4, "all four went out");
    assert!(l.frames[1]
        .iter()
        .enumerate()
        .all(|(i, f)| f == &[i as u8; 60]));
    drop(l);
    line.borrow_mut().hold_tx[0] = false;
    assert!(
        p.transmit(Instant::ZERO).is_some(),
        "completions free buffers"
    );
    let st = p.stats();
    assert_eq!((st.tx_frames, st.tx_bytes), (4, 240));
}

#[test]
fn refuses_devices_and_pools_that_do_not_fit() {
    let cfg = NetPhyConfig {
        rx_buffers: 4,
        tx_buffers: 4,
    };
    let pool = || BufferPool::host(8, 2048).unwrap();
    let disk = Box::new(RamDisk::new(1 << 16, 8));
    assert_eq!(
        NetPhy::new(disk, pool(), cfg).err(),
        Some(Error::Unsupported(Op::Recv))
    );
    let end = || Box::new(wire().0);
    assert_eq!(
        NetPhy::new(end(), BufferPool::host(8, 1024).unwrap(), cfg).err(),
        Some(Error::BadSegment),
        "a buffer must hold a whole frame"
    );
    let too_many = NetPhyConfig {
        rx_buffers: WIRE_DEPTH + 1,
        ..cfg
    };
    assert_eq!(
        NetPhy::new(end(), pool(), too_many).err(),
        Some(Error::BadCapacity(WIRE_DEPTH + 1))
    );
    let none = NetPhyConfig {
        tx_buffers: 0,
        ..cfg
    };
    assert_eq!(
        NetPhy::new(end(), pool(), none).err(),
        Some(Error::BadCapacity(0))
    );
    assert_eq!(
        NetPhy::new(end(), BufferPool::host(6, 2048).unwrap(), cfg).err(),
        Some(Error::PoolExhausted)
    );
    assert_eq!(NetPhyConfig::default().buffers(), 128);
    let fitted = NetPhyConfig::default().fit(&end().capabilities());
    assert_eq!((fitted.rx_buffers, fitted.tx_buffers), (64, 64));
    let small = Capabilities {
        queue_depth: 8,
        ..end().capabilities()
    };
    assert_eq!(NetPhyConfig::default().fit(&small).buffers(), 16);
}

/// smoltcp over virtio-net: it reads a frame where the (fake) device wrote it, and the
/// device is given the buffer smoltcp wrote its answer in.
#[test]
fn smoltcp_reads_and_writes_the_virtio_net_buffers() {
    use crate::fake_virtio::{FakeTransport, HostHal};
    use crate::virtio_net::{Features, VirtioNet, RX_QUEUE, TX_QUEUE};
    use virtio_drivers::transport::DeviceType;

    let mut config = [0u8; 64];
    config[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    let t = FakeTransport::new(DeviceType::Network, Features::all().bits(), config, 16);
    let (rxq, txq) = (t.device(RX_QUEUE), t.device(TX_QUEUE));
    let net = VirtioNet::<HostHal, _, 16>::new(t).unwrap();
    let cfg = NetPhyConfig {
        rx_buffers: 8,
        tx_buffers: 4,
    };
    let pool = BufferPool::host(cfg.buffers(), 2048).unwrap();
    let mut spy = Spy::new(NetPhy::new(Box::new(net), pool, cfg).unwrap());
    let mut ifc = iface(&mut spy, 1);
    let mut sockets = SocketSet::new(vec![]);

    let mut posted = Vec::new();
    while let Some(c) = rxq.next() {
        posted.push(c);
    }
    assert_eq!(posted.len(), 8, "the receive buffers are posted");
    let addrs = spy.buffer_addrs();
    assert!(posted.iter().all(|(_, c)| addrs.contains(&c[1].addr)));

    // The device receives an ARP request for 10.0.0.1 into the third posted buffer.
    let peer = EthernetAddress([0x02, 0, 0, 0, 0, 9]);
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: peer,
        source_protocol_addr: Ipv4Address::new(10, 0, 0, 9),
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: Ipv4Address::new(10, 0, 0, 1),
    };
    let mut bytes = vec![0u8; 12 + 14 + arp.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut bytes[12..]);
    EthernetRepr {
        src_addr: peer,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut eth);
    arp.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    let (head, chain) = &posted[2];
    let n = rxq.scatter(chain, &bytes);
    rxq.push_used(*head, n);

    ifc.poll(Instant::ZERO, &mut spy, &mut sockets);
    let seen = spy.seen.borrow();
    assert_eq!(
        seen.rx,
        [(chain[1].addr, bytes.len() - 12)],
        "smoltcp read the frame where the device wrote it"
    );
    let (_, reply) = txq.next().expect("an ARP reply went out");
    assert_eq!(reply.len(), 2, "header and one payload buffer");
    assert_eq!(
        seen.tx,
        [(reply[1].addr, reply[1].len as usize)],
        "the device sends from the buffer smoltcp wrote"
    );
    let out = txq.gather(&reply[1..]);
    let eth = EthernetFrame::new_checked(&out[..]).unwrap();
    assert_eq!(eth.dst_addr(), peer);
    let ans = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
    assert!(matches!(
        ans,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_protocol_addr,
            ..
        } if source_protocol_addr == Ipv4Address::new(10, 0, 0, 1)
    ));
    drop(seen);
    let (st, dev) = (spy.phy.stats(), spy.phy.device_stats());
    assert_eq!((st.rx_frames, st.tx_frames), (1, 1));
    assert_eq!(
        (st.tcp_rx_payload, st.tcp_tx_payload),
        (0, 0),
        "ARP carries no TCP"
    );
    assert_eq!(dev.bytes_copied, 0, "virtio-net copies nothing either");
    assert_eq!(spy.phy.rx_posted(), 8, "the buffer was posted again");
}

#[test]
fn tcp_payload_of_frames() {
    use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, TcpRepr, TcpSeqNumber};
    let payload = [0x5au8; 300];
    let tcp = TcpRepr {
        src_port: 10809,
        dst_port: 50000,
        control: smoltcp::wire::TcpControl::Psh,
        seq_number: TcpSeqNumber(1),
        ack_number: Some(TcpSeqNumber(1)),
        window_len: 1024,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &payload,
    };
    let (src, dst) = (Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2));
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
        dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
        ethertype: EthernetProtocol::Ipv4,
    };
    // Padded past the IP packet, as short frames are: the padding is not payload.
    let mut frame = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len() + 6];
    let mut f = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.emit(&mut f);
    let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
    ip.emit(&mut p, &smoltcp::phy::ChecksumCapabilities::default());
    let mut t = TcpPacket::new_unchecked(p.payload_mut());
    tcp.emit(
        &mut t,
        &src.into(),
        &dst.into(),
        &smoltcp::phy::ChecksumCapabilities::default(),
    );
    assert_eq!(super::tcp_payload_len(&frame), 300);
    assert_eq!(smoltcp_tcp_payload(&frame[..frame.len() - 6]), 300);
    // Not TCP over IPv4, or headers that do not hold together: nothing.
    let mut arp = frame.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(super::tcp_payload_len(&arp), 0);
    let mut udp = frame.clone();
    udp[14 + 9] = 17;
    assert_eq!(super::tcp_payload_len(&udp), 0);
    let mut long = frame.clone();
    long[16..18].copy_from_slice(&4000u16.to_be_bytes());
    assert_eq!(super::tcp_payload_len(&long), 0);
    assert_eq!(super::tcp_payload_len(&frame[..40]), 0);
    assert_eq!(super::tcp_payload_len(&[]), 0);
}
