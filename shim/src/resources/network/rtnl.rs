//! The netlink calls pod networking makes, synchronous, on a socket that belongs to the network
//! namespace of the thread that opened it (so it is opened on a thread inside the pod's
//! netns: see `super::in_netns`). Messages are built with `netlink-packet-route`; the tap
//! device is made with the TUNSETIFF ioctl.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::{PodInterface, PodNeighbour, PodRoute};

/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// Filter priority of the redirects (the only filters on these qdiscs).
const FILTER_PRIORITY: u32 = 1;
/// ETH_P_ALL: the filter sees every frame.
const ETH_P_ALL: u16 = 0x0003;

/// A link as the scan sees it.
#[derive(Debug, Clone)]
pub(super) struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub loopback: bool,
    pub ether: bool,
    /// `IFLA_INFO_KIND` (veth, tun, bridge...), when the kernel gives one.
    pub kind: Option<String>,
}

pub(super) struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    /// A NETLINK_ROUTE socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Sends one request and collects the answer: every message of a dump, or nothing for an
    /// acknowledged change. A kernel error comes back as the io::Error of its errno.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("undecodable netlink answer: {e}"),
                        )
                    })?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            None => Ok(out),
                        }
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if flags & NLM_F_DUMP != NLM_F_DUMP && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn change(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(msg, flags | NLM_F_ACK).map(|_| ())
    }

    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let answer = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answer
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })
            .collect())
    }

    /// Addresses of link `index` (IPv6 link-local left out: the guest derives its own from
    /// the same MAC).
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<(IpAddr, u8)>> {
        let answer = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in answer {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            let local = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let address = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local.or(address) {
                if !is_ipv6_link_local(&ip) {
                    out.push((ip, a.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Main-table unicast routes through the given links, except those the kernel made
    /// itself (a subnet's route, which the guest kernel makes too when it gets the address).
    pub fn routes(&mut self, links: &[PodInterface]) -> io::Result<Vec<PodRoute>> {
        let answer = self.request(
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in answer {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            if table != u32::from(RouteHeader::RT_TABLE_MAIN)
                || r.header.kind != RouteType::Unicast
                || r.header.protocol == RouteProtocol::Kernel
            {
                continue;
            }
            let mut route = PodRoute {
                dest: None,
                gateway: None,
                device: String::new(),
                source: None,
                scope: u8::from(r.header.scope),
            };
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(d) => {
                        route.dest = ip_of(d).map(|ip| (ip, r.header.destination_prefix_length))
                    }
                    RouteAttribute::Gateway(g) => route.gateway = ip_of(g),
                    RouteAttribute::PrefSource(s) => route.source = ip_of(s),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            let Some(link) = oif.and_then(|i| links.iter().find(|l| l.index == i)) else {
                continue;
            };
            route.device = link.name.clone();
            out.push(route);
        }
        Ok(out)
    }

    /// Permanent (static) neighbours on the given links.
    pub fn neighbours(&mut self, links: &[PodInterface]) -> io::Result<Vec<PodNeighbour>> {
        let answer = self.request(
            RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in answer {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.state != NeighbourState::Permanent {
                continue;
            }
            let Some(link) = links.iter().find(|l| l.index == n.header.ifindex) else {
                continue;
            };
            let ip = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                    Some(IpAddr::V4(*ip))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                    Some(IpAddr::V6(*ip))
                }
                _ => None,
            });
            let mac = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(m) if m.len() == 6 => Some(m.clone()),
                _ => None,
            });
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.push(PodNeighbour {
                    ip,
                    mac,
                    device: link.name.clone(),
                });
            }
        }
        Ok(out)
    }

    /// Sets the MTU of link `index` and brings it up.
    pub fn set_up_with_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.change(RouteNetlinkMessage::SetLink(m), 0)
    }

    /// Moves link `index` into the network namespace `netns` refers to.
    pub fn move_to_netns(
        &mut self,
        index: u32,
        netns: std::os::fd::BorrowedFd<'_>,
    ) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::NetNsFd(netns.as_raw_fd()));
        self.change(RouteNetlinkMessage::SetLink(m), 0)
    }

    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.change(RouteNetlinkMessage::DelLink(m), 0)
    }

    /// `tc qdisc add dev <index> ingress` (fails if the link has one already).
    pub fn add_ingress_qdisc(&mut self, index: u32) -> io::Result<()> {
        self.change(
            RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(index)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// `tc qdisc del dev <index> ingress` (its filters go with it).
    pub fn delete_ingress_qdisc(&mut self, index: u32) -> io::Result<()> {
        self.change(
            RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(index)),
            0,
        )
    }

    /// Whether link `index` has an ingress qdisc.
    pub fn has_ingress_qdisc(&mut self, index: u32) -> io::Result<bool> {
        let answer = self.request(
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answer.iter().any(|m| {
            matches!(m, RouteNetlinkMessage::NewQueueDiscipline(q)
                if q.header.index == index as i32 && q.header.parent == TcHandle::INGRESS)
        }))
    }

    /// Every frame arriving on `from` is sent out of `to`: on `from`'s ingress qdisc, a u32
    /// filter matching everything (`match u32 0 0`) with a mirred egress redirect.
    /// (`matchall` and `flower` would do, but hosts may lack them; u32 is everywhere.)
    pub fn redirect_all(&mut self, from: u32, to: u32) -> io::Result<()> {
        self.change(
            RouteNetlinkMessage::NewTrafficFilter(redirect_filter(from, to)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }
}

fn ingress_qdisc(index: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = index as i32;
    m.header.handle = INGRESS_HANDLE;
    m.header.parent = TcHandle::INGRESS;
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    m
}

/// The filter message of [`Rtnl::redirect_all`] (pure, so it is unit-tested).
pub(super) fn redirect_filter(from: u32, to: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = from as i32;
    m.header.parent = INGRESS_HANDLE;
    // tcm_info: priority in the upper half, protocol (network byte order) in the lower.
    m.header.info = (FILTER_PRIORITY << 16) | u32::from(ETH_P_ALL.to_be());
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    // One key with mask 0: every frame matches.
    selector.keys = vec![TcU32Key::default()];
    let mut mirror = TcMirror::default();
    mirror.generic = TcActionGeneric::default();
    // Stolen: the frame is consumed here and never reaches `from`'s own stack.
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    m.attributes.push(TcAttribute::Kind("u32".into()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(selector)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    m
}

fn link_of(l: LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mac: Vec::new(),
        mtu: 0,
        loopback: l.header.flags.contains(LinkFlags::Loopback),
        ether: l.header.link_layer_type == LinkLayerType::Ether,
        kind: None,
    };
    for a in l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(m) => link.mac = m,
            LinkAttribute::Mtu(m) => link.mtu = m,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(match k {
                            InfoKind::Other(s) => s,
                            k => k.to_string(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

nix::ioctl_write_int!(tun_set_iff, b'T', 202);

/// Creates tap device `name` in the calling thread's network namespace (the netns is the one
/// /dev/net/tun is opened in) and returns the queue's fd. The tap is not persistent: it lives
/// as long as an fd of it is open (ours until QEMU has inherited it, then QEMU's), so a dead
/// QEMU never leaves it behind.
pub(super) fn create_tap(name: &str) -> io::Result<OwnedFd> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tap name {name:?} is not a valid interface name"),
        ));
    }
    let fd: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| io::Error::new(e.kind(), format!("opening /dev/net/tun: {e}")))?
        .into();
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // IFF_VNET_HDR: QEMU sees it on the fd and passes offloads through.
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads a struct ifreq from a valid pointer for the call's duration.
    unsafe { tun_set_iff(fd.as_raw_fd(), std::ptr::addr_of_mut!(req) as u64) }
        .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    #[test]
    fn the_redirect_is_a_u32_match_all_with_a_mirred_egress_redirect() {
        let m = redirect_filter(7, 9);
        assert_eq!(m.header.index, 7);
        assert_eq!(m.header.parent, INGRESS_HANDLE);
        // prio 1, protocol all (0x0003 in network byte order).
        assert_eq!(m.header.info, 0x0001_0300);
        let kind = m.attributes.iter().find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.as_str()),
            _ => None,
        });
        assert_eq!(kind, Some("u32"));
        let opts = m
            .attributes
            .iter()
            .find_map(|a| match a {
                TcAttribute::Options(o) => Some(o),
                _ => None,
            })
            .expect("options");
        let sel = opts
            .iter()
            .find_map(|o| match o {
                TcOption::U32(TcFilterU32Option::Selector(s)) => Some(s),
                _ => None,
            })
            .expect("selector");
        assert_eq!(sel.nkeys, 1);
        assert_eq!((sel.keys[0].mask, sel.keys[0].val), (0, 0));
        let mirror = opts
            .iter()
            .find_map(|o| match o {
                TcOption::U32(TcFilterU32Option::Action(a)) => Some(a),
                _ => None,
            })
            .and_then(|a| {
                a[0].attributes.iter().find_map(|x| match x {
                    TcActionAttribute::Options(o) => o.iter().find_map(|y| match y {
                        TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) => Some(p),
                        _ => None,
                    }),
                    _ => None,
                })
            })
            .expect("mirred parameters");
        assert_eq!(mirror.ifindex, 9);
        assert_eq!(mirror.eaction, TcMirrorActionType::EgressRedir);
        assert_eq!(mirror.generic.action, TcActionType::Stolen);
        // It encodes (the kernel reads the same bytes `tc` would send).
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        assert!(buf.len() > 40);
    }

    #[test]
    fn ipv6_link_local_is_recognised() {
        assert!(is_ipv6_link_local(&"fe80::1".parse().unwrap()));
        assert!(!is_ipv6_link_local(&"fd00::1".parse().unwrap()));
        assert!(!is_ipv6_link_local(&"10.0.0.1".parse().unwrap()));
    }
}
