//! The guest's network stack: smoltcp over the first NIC, through `NetPhy`, so frames are
//! read and written in place in HPDI pool buffers.

use alloc::boxed::Box;
use alloc::vec;

use frontend_drivers::net_phy::{NetPhy, NetPhyConfig};
use frontend_drivers::virtio_net::NetInfo;
use hpdi::{BufferPool, Device};
use log::{info, warn};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};
use unikernel::cmdline::Config as GuestConfig;
use unikernel::tcp_buffers::rx_len;

use crate::dma::FrameRegion;

/// Bytes of each NetPhy buffer (a power of two holding a 1514-byte frame).
const FRAME_BUF: usize = 2048;
/// TCP socket buffer size for the echo service.
const TCP_BUF: usize = 64 * 1024;

pub struct NetStack {
    pub iface: Interface,
    pub phy: NetPhy,
    pub sockets: SocketSet<'static>,
    echo: Option<(SocketHandle, u16)>,
    pub nbd: Option<crate::storage::NbdService>,
    /// In a failover pair: the peer's exports, served on its address after a takeover.
    pub peer_nbd: Option<crate::storage::NbdService>,
    pub mgmt: Option<crate::mgmt::Mgmt>,
    /// What every NBD service of this start serves TLS with, or why none may start
    /// (`crate::tls_setup`).
    pub tls: Result<unikernel::nbd::tls::TlsSettings, alloc::string::String>,
    mac: [u8; 6],
    prefix: u8,
}

pub fn now() -> Instant {
    Instant::from_micros(crate::time::now_us() as i64)
}

impl NetStack {
    pub fn new(
        dev: Box<dyn Device>,
        info: &NetInfo,
        cfg: &GuestConfig,
    ) -> Result<Self, &'static str> {
        let phy_cfg = NetPhyConfig::default().fit(&dev.capabilities());
        let mem = FrameRegion::alloc(phy_cfg.buffers() * FRAME_BUF)
            .ok_or("no DMA memory for NIC buffers")?;
        let pool = BufferPool::new(Box::new(mem), FRAME_BUF).map_err(|_| "NIC buffer pool")?;
        let mut phy =
            NetPhy::new(dev, pool, phy_cfg).map_err(|_| "NIC does not fit its buffers")?;
        let mut icfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(info.mac)));
        icfg.random_seed = crate::arch::cpu::rdtsc();
        let mut iface = Interface::new(icfg, &mut phy, now());
        let ([a, b, c, d], prefix) = cfg.ip;
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(Ipv4Address::new(a, b, c, d).into(), prefix));
        });
        if let Some([a, b, c, d]) = cfg.gateway {
            let _ = iface
                .routes_mut()
                .add_default_ipv4_route(Ipv4Address::new(a, b, c, d));
        }
        let mut sockets = SocketSet::new(vec![]);
        // The copy counters count from this start, as the new adapter's do.
        crate::storage::reset_stream_copies();
        let echo = cfg.echo_port.map(|port| {
            // One byte short of a power of two: see `unikernel::tcp_buffers` (a remote crash).
            let rx = tcp::SocketBuffer::new(vec![0; rx_len(TCP_BUF)]);
            let tx = tcp::SocketBuffer::new(vec![0; TCP_BUF]);
            (sockets.add(tcp::Socket::new(rx, tx)), port)
        });
        info!(
            "net: {a}.{b}.{c}.{d}/{prefix} on {}, {} rx + {} tx buffers{}",
            unikernel::inventory::Mac(info.mac),
            phy_cfg.rx_buffers,
            phy_cfg.tx_buffers,
            match cfg.echo_port {
                Some(p) => alloc::format!(", echo on tcp/{p}"),
                None => alloc::string::String::new(),
            }
        );
        Ok(Self {
            iface,
            phy,
            sockets,
            echo,
            nbd: None,
            peer_nbd: None,
            mgmt: None,
            tls: Ok(Default::default()),
            mac: info.mac,
            prefix,
        })
    }

    /// One turn of the stack: frames in and out, then the services. Returns whether anything
    /// happened or is under way (frames moved, disk requests in flight).
    pub fn poll(&mut self) -> bool {
        let moved = self.iface.poll(now(), &mut self.phy, &mut self.sockets)
            != smoltcp::iface::PollResult::None;
        self.phy.poll();
        if let Some((h, port)) = self.echo {
            echo(self.sockets.get_mut::<tcp::Socket>(h), port);
        }
        if let Some(nbd) = self.nbd.as_mut() {
            nbd.poll(&mut self.sockets);
        }
        if let Some(nbd) = self.peer_nbd.as_mut() {
            nbd.poll(&mut self.sockets);
        }
        moved
            || [self.nbd.as_ref(), self.peer_nbd.as_ref()]
                .into_iter()
                .flatten()
                .any(|s| !s.idle())
    }

    /// What the NBD data path served and copied since this start: the adapter's count of
    /// smoltcp's frame copies, the socket boundary's, and every service's payload bytes.
    pub fn data_path(&self) -> unikernel::mgmt_status::DataPath {
        let phy = self.phy.stats();
        let (to_app, to_socket) = crate::storage::stream_copies();
        let (mut read, mut written) = (0, 0);
        for s in [self.nbd.as_ref(), self.peer_nbd.as_ref()]
            .into_iter()
            .flatten()
        {
            let (r, w) = s.payload_bytes();
            read += r;
            written += w;
        }
        unikernel::mgmt_status::DataPath {
            nbd_read_bytes: read,
            nbd_write_bytes: written,
            copy_frame_to_socket: phy.tcp_rx_payload,
            copy_socket_to_app: to_app,
            copy_app_to_socket: to_socket,
            copy_socket_to_frame: phy.tcp_tx_payload,
        }
    }

    /// Answers for `ip` too (a failover pair taking its peer's address).
    pub fn add_address(&mut self, [a, b, c, d]: [u8; 4]) {
        let cidr = IpCidr::new(Ipv4Address::new(a, b, c, d).into(), self.prefix);
        self.iface.update_ip_addrs(|addrs| {
            if !addrs.contains(&cidr) && addrs.push(cidr).is_err() {
                warn!("net: no room for a second address {cidr}");
            }
        });
    }

    /// Stops answering for `ip`.
    pub fn remove_address(&mut self, [a, b, c, d]: [u8; 4]) {
        let ip: smoltcp::wire::IpAddress = Ipv4Address::new(a, b, c, d).into();
        self.iface
            .update_ip_addrs(|addrs| addrs.retain(|c| c.address() != ip));
    }

    /// A gratuitous ARP for `ip` from this NIC: neighbours on the segment point `ip` at our
    /// MAC (how a takeover moves the peer's address here).
    pub fn announce(&mut self, [a, b, c, d]: [u8; 4]) {
        use smoltcp::phy::{Device as _, TxToken as _};
        use smoltcp::wire::{
            ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, EthernetRepr,
        };
        let ip = Ipv4Address::new(a, b, c, d);
        let arp = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(self.mac),
            source_protocol_addr: ip,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: ip,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress(self.mac),
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EthernetProtocol::Arp,
        };
        let len = eth.buffer_len() + arp.buffer_len();
        match self.phy.transmit(now()) {
            Some(tx) => tx.consume(len, |buf| {
                let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
                eth.emit(&mut frame);
                arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
            }),
            None => warn!("net: no transmit buffer for a gratuitous ARP"),
        }
        self.phy.poll();
    }

    /// Serves the management port; returns an injection asked for there.
    pub fn poll_mgmt(
        &mut self,
        status: &dyn Fn() -> unikernel::mgmt_status::Status,
    ) -> Option<crate::mgmt::Injection> {
        let m = self.mgmt.as_mut()?;
        let injection = m.poll(&mut self.sockets, status)?;
        // Get the reply out before acting on it: until the client acknowledged it (an
        // injected error resets the NIC, which would drop a frame still in its queue), for at
        // most 200 ms.
        let until = crate::time::now_us() + 200_000;
        loop {
            self.iface.poll(now(), &mut self.phy, &mut self.sockets);
            self.phy.poll();
            let pending = self
                .mgmt
                .as_ref()
                .is_some_and(|m| m.replies_pending(&self.sockets));
            if !pending || crate::time::now_us() > until {
                break;
            }
        }
        Some(injection)
    }
}

/// TCP echo: whatever arrives is sent back, bounded by the send buffer's free space.
fn echo(s: &mut tcp::Socket, port: u16) {
    if !s.is_open() {
        if let Err(e) = s.listen(port) {
            warn!("net.echo: listen on {port}: {e}");
        }
        return;
    }
    let mut buf = [0u8; 4096];
    while s.can_recv() && s.can_send() {
        let room = (s.send_capacity() - s.send_queue()).min(buf.len());
        if room == 0 {
            break;
        }
        match s.recv_slice(&mut buf[..room]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let _ = s.send_slice(&buf[..n]);
            }
        }
    }
    if !s.may_recv() && s.may_send() && s.send_queue() == 0 {
        s.close();
    }
}
