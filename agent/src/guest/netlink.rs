//! A minimal rtnetlink client (raw NETLINK_ROUTE socket, no C library): links, addresses,
//! routes and neighbours, for UpdateInterface / UpdateRoutes / AddARPNeighbors.
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use protocol::agent::{ARPNeighbor, IPAddress, IPFamily, Interface, Route};

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;

const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RTN_UNICAST: u8 = 1;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const NUD_PERMANENT: u16 = 0x80;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: i32,
    pub name: String,
    pub mac: String,
    pub mtu: u32,
}

/// A message under construction: header, fixed part, attributes.
struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16, flags: u16, fixed: &[u8]) -> Msg {
        let mut b = vec![0u8; NLMSG_HDR];
        b[4..6].copy_from_slice(&kind.to_ne_bytes());
        b[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        b.extend_from_slice(fixed);
        pad(&mut b);
        Msg(b)
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Msg {
        let len = (4 + data.len()) as u16;
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        pad(&mut self.0);
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.0
    }
}

fn pad(b: &mut Vec<u8>) {
    b.resize(b.len().next_multiple_of(4), 0);
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_ne_bytes([b[i], b[i + 1]])
}
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Splits a buffer of netlink messages into (type, payload).
fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + NLMSG_HDR <= buf.len() {
        let len = u32_at(buf, i) as usize;
        if len < NLMSG_HDR || i + len > buf.len() {
            break;
        }
        out.push((u16_at(buf, i + 4), &buf[i + NLMSG_HDR..i + len]));
        i += (len + 3) & !3;
    }
    out
}

/// Attributes (type, data) after a fixed header of `skip` bytes.
fn attrs(payload: &[u8], skip: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut i = skip;
    while i + 4 <= payload.len() {
        let len = u16_at(payload, i) as usize;
        if len < 4 || i + len > payload.len() {
            break;
        }
        out.push((u16_at(payload, i + 2) & 0x3fff, &payload[i + 4..i + len]));
        i += (len + 3) & !3;
    }
    out
}

pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink {
            // SAFETY: fd was just created and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            seq: 0,
        })
    }

    /// Sends one request; returns the payloads of the answer (dump parts), or the kernel's
    /// error for this request.
    fn call(&mut self, msg: Msg) -> io::Result<Vec<(u16, Vec<u8>)>> {
        self.seq += 1;
        let data = msg.finish(self.seq);
        // SAFETY: sending a buffer we own to the kernel (destination 0 = kernel).
        let n = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: recv into our own buffer.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            for (kind, payload) in messages(&buf[..n as usize]) {
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = if payload.len() >= 4 {
                            i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]])
                        } else {
                            0
                        };
                        return if code == 0 {
                            Ok(out)
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                    k => out.push((k, payload.to_vec())),
                }
            }
        }
    }

    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let ifinfo = [0u8; 16];
        let resp = self.call(Msg::new(RTM_GETLINK, NLM_F_DUMP, &ifinfo))?;
        Ok(resp
            .iter()
            .filter(|(k, p)| *k == RTM_NEWLINK && p.len() >= 16)
            .map(|(_, p)| {
                let mut l = Link {
                    index: u32_at(p, 4) as i32,
                    name: String::new(),
                    mac: String::new(),
                    mtu: 0,
                };
                for (t, d) in attrs(p, 16) {
                    match t {
                        IFLA_IFNAME => {
                            l.name =
                                String::from_utf8_lossy(d.split(|b| *b == 0).next().unwrap_or(&[]))
                                    .into_owned()
                        }
                        IFLA_ADDRESS => l.mac = format_mac(d),
                        IFLA_MTU if d.len() >= 4 => l.mtu = u32_at(d, 0),
                        _ => {}
                    }
                }
                l
            })
            .collect())
    }

    fn link_by_name(&mut self, name: &str) -> io::Result<Link> {
        self.links()?
            .into_iter()
            .find(|l| l.name == name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no link {name:?}")))
    }

    /// Sets name, MTU and up state of a link.
    fn set_link(
        &mut self,
        index: i32,
        name: Option<&str>,
        mtu: Option<u32>,
        mac: Option<&[u8]>,
        up: bool,
    ) -> io::Result<()> {
        let mut info = [0u8; 16];
        info[4..8].copy_from_slice(&index.to_ne_bytes());
        let flag = libc::IFF_UP as u32;
        info[8..12].copy_from_slice(&(if up { flag } else { 0 }).to_ne_bytes());
        info[12..16].copy_from_slice(&flag.to_ne_bytes());
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_ACK, &info);
        if let Some(n) = name {
            let mut b = n.as_bytes().to_vec();
            b.push(0);
            m = m.attr(IFLA_IFNAME, &b);
        }
        if let Some(mtu) = mtu {
            m = m.attr(IFLA_MTU, &mtu.to_ne_bytes());
        }
        if let Some(mac) = mac {
            m = m.attr(IFLA_ADDRESS, mac);
        }
        self.call(m).map(|_| ())
    }

    /// Addresses of a link as (family, prefix_len, address bytes).
    fn addresses(&mut self, index: i32) -> io::Result<Vec<(u8, u8, Vec<u8>)>> {
        let resp = self.call(Msg::new(RTM_GETADDR, NLM_F_DUMP, &[0u8; 8]))?;
        let mut out = Vec::new();
        for (k, p) in resp {
            if k != RTM_NEWADDR || p.len() < 8 || u32_at(&p, 4) as i32 != index {
                continue;
            }
            let local = attrs(&p, 8)
                .into_iter()
                .find(|(t, _)| *t == IFA_LOCAL || *t == IFA_ADDRESS)
                .map(|(_, d)| d.to_vec());
            if let Some(a) = local {
                out.push((p[0], p[1], a));
            }
        }
        Ok(out)
    }

    fn addr_msg(kind: u16, flags: u16, index: i32, family: u8, prefix: u8, addr: &[u8]) -> Msg {
        let mut ifa = [0u8; 8];
        ifa[0] = family;
        ifa[1] = prefix;
        ifa[4..8].copy_from_slice(&(index as u32).to_ne_bytes());
        Msg::new(kind, flags, &ifa)
            .attr(IFA_LOCAL, addr)
            .attr(IFA_ADDRESS, addr)
    }

    /// UpdateInterface: find the link by MAC (else by name), set name/MTU, replace its
    /// addresses, bring it up.
    pub fn update_interface(&mut self, iface: &Interface) -> Result<Interface, String> {
        let links = self.links().map_err(|e| format!("listing links: {e}"))?;
        let link = links
            .iter()
            .find(|l| !iface.hw_addr.is_empty() && l.mac.eq_ignore_ascii_case(&iface.hw_addr))
            .or_else(|| {
                links
                    .iter()
                    .find(|l| !iface.device.is_empty() && l.name == iface.device)
            })
            .or_else(|| {
                links
                    .iter()
                    .find(|l| !iface.name.is_empty() && l.name == iface.name)
            })
            .cloned()
            .ok_or_else(|| {
                format!(
                    "no link with hw_addr {:?} or name {:?}/{:?}",
                    iface.hw_addr, iface.device, iface.name
                )
            })?;
        let mut wanted = Vec::new();
        for a in &iface.ip_addresses {
            wanted.push(parse_ip(a)?);
        }
        let rename =
            (!iface.name.is_empty() && iface.name != link.name).then_some(iface.name.as_str());
        let mtu = (iface.mtu > 0).then_some(iface.mtu as u32);
        // A NIC found by name carries the host's MAC from now on (a VM booted before its pod
        // got a MAC of its own): the pod's peers and its CNI know the host interface's.
        let mac = if !iface.hw_addr.is_empty() && !link.mac.eq_ignore_ascii_case(&iface.hw_addr) {
            Some(parse_mac(&iface.hw_addr)?)
        } else {
            None
        };
        if rename.is_some() || mac.is_some() {
            // A link must be down to be renamed.
            self.set_link(link.index, None, None, None, false)
                .map_err(|e| format!("setting {} down: {e}", link.name))?;
        }
        self.set_link(link.index, rename, mtu, mac.as_deref(), false)
            .map_err(|e| format!("configuring link {}: {e}", link.name))?;
        for (family, prefix, addr) in self
            .addresses(link.index)
            .map_err(|e| format!("listing addresses: {e}"))?
        {
            self.call(Self::addr_msg(
                RTM_DELADDR,
                NLM_F_ACK,
                link.index,
                family,
                prefix,
                &addr,
            ))
            .map_err(|e| format!("removing an old address of {}: {e}", link.name))?;
        }
        for (ip, prefix) in &wanted {
            let (family, bytes) = ip_bytes(ip);
            self.call(Self::addr_msg(
                RTM_NEWADDR,
                NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                link.index,
                family,
                *prefix,
                &bytes,
            ))
            .map_err(|e| format!("adding {ip}/{prefix} to {}: {e}", link.name))?;
        }
        self.set_link(link.index, None, None, None, true)
            .map_err(|e| format!("setting {} up: {e}", link.name))?;
        let now = self
            .links()
            .ok()
            .and_then(|ls| ls.into_iter().find(|l| l.index == link.index))
            .unwrap_or(link);
        Ok(Interface {
            device: now.name.clone(),
            name: now.name,
            ip_addresses: iface.ip_addresses.clone(),
            mtu: now.mtu as u64,
            hw_addr: now.mac,
            ..Default::default()
        })
    }

    /// Main-table routes that leave through a link other than `lo` (what UpdateRoutes owns).
    fn routes(&mut self, lo: i32) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let mut rtm = [0u8; 12];
            rtm[0] = family;
            for (k, p) in self.call(Msg::new(RTM_GETROUTE, NLM_F_DUMP, &rtm))? {
                if k != RTM_NEWROUTE || p.len() < 12 || p[4] != RT_TABLE_MAIN {
                    continue;
                }
                let oif = attrs(&p, 12)
                    .into_iter()
                    .find(|(t, d)| *t == RTA_OIF && d.len() >= 4)
                    .map(|(_, d)| u32_at(d, 0) as i32);
                // Kernel-made routes (RTPROT_KERNEL = 2, e.g. a subnet's link route) stay.
                if oif.is_some_and(|o| o != lo) && p[5] != 2 {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }

    /// UpdateRoutes: replace the routes previously set through the API by `routes`.
    pub fn update_routes(&mut self, routes: &[Route]) -> Result<Vec<Route>, String> {
        let links = self.links().map_err(|e| format!("listing links: {e}"))?;
        let lo = links
            .iter()
            .find(|l| l.name == "lo")
            .map_or(-1, |l| l.index);
        for old in self
            .routes(lo)
            .map_err(|e| format!("listing routes: {e}"))?
        {
            let mut m = Msg::new(RTM_DELROUTE, NLM_F_ACK, &old[..12]);
            for (t, d) in attrs(&old, 12) {
                m = m.attr(t, d);
            }
            // Already gone (e.g. with its link): fine.
            let _ = self.call(m);
        }
        // Routes without a gateway first: a gateway must be reachable when its route goes in.
        let mut ordered: Vec<&Route> = routes.iter().filter(|r| r.gateway.is_empty()).collect();
        ordered.extend(routes.iter().filter(|r| !r.gateway.is_empty()));
        for r in ordered {
            let msg = route_msg(r, &links)?;
            self.call(msg).map_err(|e| {
                format!(
                    "adding route {:?} via {:?} dev {:?}: {e}",
                    r.dest, r.gateway, r.device
                )
            })?;
        }
        Ok(routes.to_vec())
    }

    pub fn add_neighbor(&mut self, n: &ARPNeighbor) -> Result<(), String> {
        let link = self
            .link_by_name(&n.device)
            .map_err(|e| format!("neighbor device: {e}"))?;
        let to = n.to_ip.as_ref().ok_or("neighbor without to_ip")?;
        let ip: IpAddr = to
            .address
            .parse()
            .map_err(|_| format!("invalid neighbor address {:?}", to.address))?;
        let (family, bytes) = ip_bytes(&ip);
        let mut nd = [0u8; 12];
        nd[0] = family;
        nd[4..8].copy_from_slice(&link.index.to_ne_bytes());
        let state = if n.state == 0 {
            NUD_PERMANENT
        } else {
            n.state as u16
        };
        nd[8..10].copy_from_slice(&state.to_ne_bytes());
        nd[10] = n.flags as u8;
        let mut m = Msg::new(RTM_NEWNEIGH, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, &nd)
            .attr(NDA_DST, &bytes);
        if !n.ll_addr.is_empty() {
            m = m.attr(NDA_LLADDR, &parse_mac(&n.ll_addr)?);
        }
        self.call(m)
            .map(|_| ())
            .map_err(|e| format!("adding neighbor {} on {}: {e}", to.address, n.device))
    }
}

fn route_msg(r: &Route, links: &[Link]) -> Result<Msg, String> {
    let oif = if r.device.is_empty() {
        None
    } else {
        Some(
            links
                .iter()
                .find(|l| l.name == r.device)
                .ok_or_else(|| format!("route device {:?} not found", r.device))?
                .index,
        )
    };
    let dest = if r.dest.is_empty() || r.dest == "default" {
        None
    } else {
        let (ip, len) = parse_cidr(&r.dest)?;
        Some((ip, len))
    };
    let gw: Option<IpAddr> = if r.gateway.is_empty() {
        None
    } else {
        Some(
            r.gateway
                .parse()
                .map_err(|_| format!("invalid gateway {:?}", r.gateway))?,
        )
    };
    let family = match (&dest, &gw, r.family.enum_value_or_default()) {
        (Some((IpAddr::V6(_), _)), _, _) | (_, Some(IpAddr::V6(_)), _) | (_, _, IPFamily::V6) => {
            libc::AF_INET6 as u8
        }
        _ => libc::AF_INET as u8,
    };
    let mut rtm = [0u8; 12];
    rtm[0] = family;
    rtm[1] = dest.as_ref().map_or(0, |d| d.1);
    rtm[4] = RT_TABLE_MAIN;
    rtm[5] = RTPROT_BOOT;
    rtm[6] = if r.scope != 0 {
        r.scope as u8
    } else if gw.is_none() && dest.is_some() {
        RT_SCOPE_LINK
    } else {
        RT_SCOPE_UNIVERSE
    };
    rtm[7] = RTN_UNICAST;
    let mut m = Msg::new(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, &rtm)
        .attr(RTA_TABLE, &(RT_TABLE_MAIN as u32).to_ne_bytes());
    if let Some((ip, _)) = dest {
        m = m.attr(RTA_DST, &ip_bytes(&ip).1);
    }
    if let Some(g) = gw {
        m = m.attr(RTA_GATEWAY, &ip_bytes(&g).1);
    }
    if let Some(i) = oif {
        m = m.attr(RTA_OIF, &(i as u32).to_ne_bytes());
    }
    if !r.source.is_empty() {
        let src: IpAddr = r
            .source
            .parse()
            .map_err(|_| format!("invalid route source {:?}", r.source))?;
        m = m.attr(RTA_PREFSRC, &ip_bytes(&src).1);
    }
    Ok(m)
}

fn ip_bytes(ip: &IpAddr) -> (u8, Vec<u8>) {
    match ip {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    }
}

pub fn parse_ip(a: &IPAddress) -> Result<(IpAddr, u8), String> {
    let ip: IpAddr = a
        .address
        .parse()
        .map_err(|_| format!("invalid IP address {:?}", a.address))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if a.prefix_len > max {
        return Err(format!("invalid prefix length {} for {ip}", a.prefix_len));
    }
    Ok((ip, a.prefix_len as u8))
}

pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = s.split_once('/').unwrap_or((s, ""));
    let ip: IpAddr = ip.parse().map_err(|_| format!("invalid CIDR {s:?}"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = if len.is_empty() {
        max
    } else {
        len.parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("invalid CIDR {s:?}"))?
    };
    Ok((ip, len))
}

pub fn parse_mac(s: &str) -> Result<Vec<u8>, String> {
    let bytes: Result<Vec<u8>, _> = s.split(':').map(|p| u8::from_str_radix(p, 16)).collect();
    match bytes {
        Ok(b) if b.len() == 6 => Ok(b),
        _ => Err(format!("invalid MAC address {s:?}")),
    }
}

fn format_mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_encoding() {
        let m = Msg::new(RTM_NEWADDR, NLM_F_ACK, &[1, 2, 3, 4, 5, 6, 7, 8])
            .attr(IFA_LOCAL, &[10, 0, 0, 1])
            .attr(IFLA_IFNAME, b"eth0\0")
            .finish(7);
        assert_eq!(m.len() % 4, 0);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(u16_at(&m, 4), RTM_NEWADDR);
        assert_eq!(u32_at(&m, 8), 7);
        let parsed = messages(&m);
        assert_eq!(parsed.len(), 1);
        let a = attrs(parsed[0].1, 8);
        assert_eq!(a[0], (IFA_LOCAL, &[10u8, 0, 0, 1][..]));
        assert_eq!(a[1], (IFLA_IFNAME, &b"eth0\0"[..]));
    }

    #[test]
    fn parsing() {
        assert_eq!(
            parse_mac("02:42:ac:11:00:02").unwrap(),
            vec![2, 0x42, 0xac, 0x11, 0, 2]
        );
        assert!(parse_mac("02:42:ac").is_err());
        assert_eq!(
            format_mac(&[2, 0x42, 0xac, 0x11, 0, 2]),
            "02:42:ac:11:00:02"
        );
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().1, 8);
        assert_eq!(parse_cidr("10.0.0.1").unwrap().1, 32);
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("fd00::/64").is_ok());
    }

    #[test]
    fn host_links_include_lo() {
        // Read-only dump on the machine running the tests.
        let mut nl = Netlink::open().unwrap();
        let links = nl.links().unwrap();
        assert!(links.iter().any(|l| l.name == "lo"), "{links:?}");
    }
}
