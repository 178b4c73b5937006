//! The reset exchange against smoltcp itself, with the test playing the client's Linux stack:
//! it answers ARP, answers the SYN with a challenge ACK (RFC 5961 §4: SND.NXT, RCV.NXT), and
//! checks the RST that comes back carries exactly RCV.NXT; then it answers the retransmitted
//! SYN with RST|ACK as a stack without the connection does.

use std::collections::VecDeque;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpCidr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use super::*;

const SERVER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xb]);
const CLIENT_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
const SERVER: Ipv4Address = Ipv4Address::new(10, 77, 0, 10);
const CLIENT: Ipv4Address = Ipv4Address::new(10, 77, 0, 1);
/// The client's SND.NXT and RCV.NXT: what its challenge ACK says.
const SND_NXT: u32 = 0x1234_5678;
const RCV_NXT: u32 = 0x9abc_def0;

/// Frames both ways, in memory.
#[derive(Default)]
struct Wire {
    to_iface: VecDeque<Vec<u8>>,
    from_iface: VecDeque<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}

impl Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.to_iface.pop_front()?;
        Some((Rx(f), Tx(&mut self.from_iface)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.from_iface))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

struct Net {
    wire: Wire,
    iface: Interface,
    sockets: SocketSet<'static>,
    now: Instant,
}

impl Net {
    fn new() -> Self {
        let mut wire = Wire::default();
        let now = Instant::from_secs(100);
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ethernet(SERVER_MAC)),
            &mut wire,
            now,
        );
        iface.update_ip_addrs(|a| a.push(IpCidr::new(SERVER.into(), 24)).unwrap());
        Net {
            wire,
            iface,
            sockets: SocketSet::new(vec![]),
            now,
        }
    }

    fn poll(&mut self) {
        self.iface.poll(self.now, &mut self.wire, &mut self.sockets);
    }

    /// The next frame the interface sent, as ARP or TCP.
    fn sent(&mut self) -> Option<Sent> {
        let f = self.wire.from_iface.pop_front()?;
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        Some(match eth.ethertype() {
            EthernetProtocol::Arp => {
                Sent::Arp(ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap())
            }
            EthernetProtocol::Ipv4 => {
                let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
                let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
                let caps = Default::default();
                let (src, dst) = (ip.src_addr().into(), ip.dst_addr().into());
                let r = TcpRepr::parse(&tcp, &src, &dst, &caps).unwrap();
                Sent::Tcp {
                    dst_mac: eth.dst_addr(),
                    src: ip.src_addr(),
                    dst: ip.dst_addr(),
                    src_port: r.src_port,
                    dst_port: r.dst_port,
                    control: r.control,
                    seq: r.seq_number,
                    ack: r.ack_number,
                }
            }
            other => panic!("unexpected frame {other:?}"),
        })
    }

    /// The client answers the interface's ARP request.
    fn arp_reply(&mut self) {
        let arp = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: CLIENT_MAC,
            source_protocol_addr: CLIENT,
            target_hardware_addr: SERVER_MAC,
            target_protocol_addr: SERVER,
        };
        let eth = EthernetRepr {
            src_addr: CLIENT_MAC,
            dst_addr: SERVER_MAC,
            ethertype: EthernetProtocol::Arp,
        };
        let mut b = vec![0; eth.buffer_len() + arp.buffer_len()];
        let mut f = EthernetFrame::new_unchecked(&mut b[..]);
        eth.emit(&mut f);
        arp.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
        self.wire.to_iface.push_back(b);
    }

    /// A segment from the client's port 40000 to the server's 10809.
    fn client_sends(&mut self, control: TcpControl, seq: u32, ack: Option<TcpSeqNumber>) {
        self.client_sends_from(40000, control, seq, ack)
    }

    /// A segment from the client's `port` to the server's 10809.
    fn client_sends_from(
        &mut self,
        port: u16,
        control: TcpControl,
        seq: u32,
        ack: Option<TcpSeqNumber>,
    ) {
        let tcp = TcpRepr {
            src_port: port,
            dst_port: 10809,
            control,
            seq_number: TcpSeqNumber(seq as i32),
            ack_number: ack,
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let ip = Ipv4Repr {
            src_addr: CLIENT,
            dst_addr: SERVER,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: CLIENT_MAC,
            dst_addr: SERVER_MAC,
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut b = vec![0; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
        let mut f = EthernetFrame::new_unchecked(&mut b[..]);
        eth.emit(&mut f);
        let caps = Default::default();
        let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
        ip.emit(&mut p, &caps);
        let mut t = TcpPacket::new_unchecked(p.payload_mut());
        tcp.emit(&mut t, &CLIENT.into(), &SERVER.into(), &caps);
        self.wire.to_iface.push_back(b);
    }
}

#[derive(Debug)]
enum Sent {
    Arp(ArpRepr),
    Tcp {
        dst_mac: EthernetAddress,
        src: Ipv4Address,
        dst: Ipv4Address,
        src_port: u16,
        dst_port: u16,
        control: TcpControl,
        seq: TcpSeqNumber,
        ack: Option<TcpSeqNumber>,
    },
}

fn client_conn() -> Conn {
    Conn {
        local_ip: SERVER.octets(),
        local_port: 10809,
        remote_ip: CLIENT.octets(),
        remote_port: 40000,
    }
}

/// A SYN from the recorded server endpoint to the client: its sequence number.
fn expect_syn(n: &mut Net) -> TcpSeqNumber {
    match n.sent() {
        Some(Sent::Tcp {
            dst_mac,
            src,
            dst,
            src_port: 10809,
            dst_port: 40000,
            control: TcpControl::Syn,
            seq,
            ack: None,
        }) if dst_mac == CLIENT_MAC && src == SERVER && dst == CLIENT => seq,
        other => panic!("expected the SYN to the client, got {other:?}"),
    }
}

#[test]
fn the_challenge_ack_is_answered_with_an_exact_reset_and_the_client_confirms() {
    let mut n = Net::new();
    // The covering service listens on the same endpoint: it must not take the client's ACK.
    let mut listener = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 128]),
        tcp::SocketBuffer::new(vec![0; 128]),
    );
    listener
        .listen(IpEndpoint::new(SERVER.into(), 10809))
        .unwrap();
    n.sockets.add(listener);
    let mut resets = Resets::new();
    let mut outcomes = Vec::new();
    let started = resets.start(
        &mut n.iface,
        &mut n.sockets,
        &[client_conn(), client_conn()],
        n.now,
        &mut |o| outcomes.push(o),
    );
    assert_eq!(started, 1, "one reset per connection");
    // The client is not known yet: ARP first, then the SYN once the reply came.
    n.poll();
    match n.sent() {
        Some(Sent::Arp(ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_protocol_addr,
            target_protocol_addr,
            ..
        })) => {
            assert_eq!(
                (source_protocol_addr, target_protocol_addr),
                (SERVER, CLIENT)
            );
        }
        other => panic!("expected an ARP request, got {other:?}"),
    }
    n.arp_reply();
    n.poll();
    let syn = expect_syn(&mut n);
    // The client's established socket answers with a challenge ACK.
    n.client_sends(
        TcpControl::None,
        SND_NXT,
        Some(TcpSeqNumber(RCV_NXT as i32)),
    );
    n.poll();
    match n.sent() {
        Some(Sent::Tcp {
            control: TcpControl::Rst,
            seq,
            ack,
            src_port: 10809,
            dst_port: 40000,
            ..
        }) => {
            assert_eq!(
                seq,
                TcpSeqNumber(RCV_NXT as i32),
                "RST at the client's RCV.NXT"
            );
            assert_eq!(ack, None, "a bare RST, as RFC 5961 §3 wants it");
        }
        other => panic!("expected the RST, got {other:?}"),
    }
    resets.poll(&mut n.sockets, n.now, &mut |o| outcomes.push(o));
    assert!(
        outcomes.is_empty() && !resets.is_empty(),
        "not confirmed yet"
    );
    // The SYN is sent again after its retransmission timeout; the client, its socket gone,
    // answers RST|ACK: confirmed, the socket is removed.
    n.now += Duration::from_millis(1100);
    n.poll();
    assert_eq!(expect_syn(&mut n), syn, "the same SYN again");
    n.client_sends(TcpControl::Rst, 0, Some(syn + 1));
    n.poll();
    n.now += Duration::from_millis(5);
    resets.poll(&mut n.sockets, n.now, &mut |o| outcomes.push(o));
    assert_eq!(
        outcomes,
        [Outcome::Gone {
            conn: client_conn(),
            after: Duration::from_millis(1105)
        }]
    );
    assert!(resets.is_empty());
    assert_eq!(n.sockets.iter().count(), 1, "only the listener is left");
    assert!(n.sent().is_none(), "nothing more to the client");
}

#[test]
fn a_silent_client_is_given_up_and_the_socket_removed_quietly() {
    let mut n = Net::new();
    let mut resets = Resets::new();
    let mut outcomes = Vec::new();
    resets.start(
        &mut n.iface,
        &mut n.sockets,
        &[client_conn()],
        n.now,
        &mut |o| outcomes.push(o),
    );
    n.poll();
    n.arp_reply();
    let mut syns = 0;
    while n.now < Instant::from_secs(100) + GIVE_UP + Duration::from_millis(1) {
        n.poll();
        while let Some(s) = n.sent() {
            if let Sent::Tcp { control, .. } = s {
                assert_eq!(control, TcpControl::Syn);
                syns += 1;
            }
        }
        resets.poll(&mut n.sockets, n.now, &mut |o| outcomes.push(o));
        n.now += Duration::from_millis(10);
    }
    assert!(syns >= 3, "SYNs at 0, 1 and 3 s: {syns}");
    assert_eq!(
        outcomes,
        [Outcome::NoAnswer {
            conn: client_conn()
        }]
    );
    assert!(resets.is_empty() && n.sockets.iter().count() == 0);
    n.poll();
    assert!(n.sent().is_none(), "no RST to a client that never answered");
}

#[test]
fn a_client_that_accepts_the_syn_is_aborted() {
    let mut n = Net::new();
    let mut resets = Resets::new();
    let mut outcomes = Vec::new();
    resets.start(
        &mut n.iface,
        &mut n.sockets,
        &[client_conn()],
        n.now,
        &mut |o| outcomes.push(o),
    );
    n.poll();
    assert!(matches!(n.sent(), Some(Sent::Arp(_))));
    n.arp_reply();
    n.poll();
    let syn = expect_syn(&mut n);
    n.client_sends(TcpControl::Syn, 7, Some(syn + 1));
    n.poll();
    while n.sent().is_some() {} // its ACK of the SYN|ACK
    resets.poll(&mut n.sockets, n.now, &mut |o| outcomes.push(o));
    assert_eq!(
        outcomes,
        [Outcome::Accepted {
            conn: client_conn()
        }]
    );
    n.poll();
    assert!(
        matches!(
            n.sent(),
            Some(Sent::Tcp {
                control: TcpControl::Rst,
                ..
            })
        ),
        "the abort's RST"
    );
    resets.poll(&mut n.sockets, n.now, &mut |o| outcomes.push(o));
    assert!(resets.is_empty() && n.sockets.iter().count() == 0);
}

#[test]
fn only_synchronized_server_sockets_are_recorded() {
    let mut n = Net::new();
    let mut listener = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 128]),
        tcp::SocketBuffer::new(vec![0; 128]),
    );
    listener.listen(10809).unwrap();
    let h = n.sockets.add(listener);
    let mut resets = Resets::new();
    resets.start(
        &mut n.iface,
        &mut n.sockets,
        &[client_conn()],
        n.now,
        &mut |_| {},
    );
    let mut out = vec![client_conn()];
    open_connections(&n.sockets, |h| resets.owns(h), &mut out);
    assert!(
        out.is_empty(),
        "a listener and a reset socket are no connections"
    );
    // A client connects from port 40001: the listener takes it. Half-open (SYN-RECEIVED,
    // possibly from a spoofed address) it is not recorded; once the client acknowledged our
    // SYN|ACK it is.
    n.arp_reply();
    n.client_sends_from(40001, TcpControl::Syn, 100, None);
    n.poll();
    assert_eq!(
        n.sockets.get::<tcp::Socket>(h).state(),
        tcp::State::SynReceived
    );
    open_connections(&n.sockets, |h| resets.owns(h), &mut out);
    assert!(out.is_empty(), "a half-open connection is not recorded");
    let syn_ack = loop {
        match n.sent() {
            Some(Sent::Tcp {
                control: TcpControl::Syn,
                dst_port: 40001,
                seq,
                ..
            }) => break seq,
            Some(_) => {}
            None => panic!("no SYN|ACK to the client"),
        }
    };
    n.client_sends_from(40001, TcpControl::None, 101, Some(syn_ack + 1));
    n.poll();
    assert_eq!(
        n.sockets.get::<tcp::Socket>(h).state(),
        tcp::State::Established
    );
    open_connections(&n.sockets, |h| resets.owns(h), &mut out);
    assert_eq!(
        out,
        [Conn {
            remote_port: 40001,
            ..client_conn()
        }]
    );
}
