//! Pod networking, Kata's "tcfilter" model. CNI puts interfaces (a veth for the bridge
//! plugin) into the pod's network namespace; for each one the shim makes a tap device in that
//! netns and two tc ingress redirects (veth -> tap, tap -> veth: a u32 match-all filter with a
//! mirred egress redirect), gives the VM one virtio-net NIC per tap with the veth's MAC and MTU,
//! and tells the agent the interfaces, routes and static neighbours it found. Frames for the
//! pod's MAC reach the veth, are redirected into the tap, and QEMU hands them to the guest;
//! the guest's frames take the same way back.
//!
//! Everything is read from the netns (nothing the guest says is followed), and everything made
//! (taps, qdiscs) is removed by [`PodNetwork::teardown`] and on every error path of
//! [`PodNetwork::setup`].
//!
//! Namespaces are per thread (setns(2)): every netns operation runs on a thread of its own
//! that enters the pod's netns and ends there, never one of tokio's pools.

mod rtnl;

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use protocol::agent as pb;

use self::rtnl::Rtnl;

/// Taps are named `tap<n>_kata` (as Kata does), `n` counting the pod's interfaces.
const TAP_SUFFIX: &str = "_kata";

/// One interface CNI put in the pod's netns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    /// Its index in the pod's netns.
    pub index: u32,
    /// Its name there (`eth0`): the guest NIC gets the same.
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub addresses: Vec<(IpAddr, u8)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRoute {
    /// None: the default route.
    pub dest: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    /// The interface's name.
    pub device: String,
    pub source: Option<IpAddr>,
    pub scope: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNeighbour {
    pub ip: IpAddr,
    pub mac: Vec<u8>,
    pub device: String,
}

/// What a scan of the pod's netns found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    pub interfaces: Vec<PodInterface>,
    pub routes: Vec<PodRoute>,
    pub neighbours: Vec<PodNeighbour>,
}

/// What the agent is told, in the order it is told.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestNetwork {
    pub interfaces: Vec<pb::Interface>,
    pub routes: Vec<pb::Route>,
    pub neighbours: Vec<pb::ARPNeighbor>,
}

impl GuestNetwork {
    /// The agent requests for `scan`. The guest finds each NIC by its MAC (the veth's) and
    /// renames it to the veth's name, which the routes and neighbours then name.
    pub fn from_scan(scan: &Scan) -> GuestNetwork {
        let interfaces = scan
            .interfaces
            .iter()
            .map(|i| pb::Interface {
                device: i.name.clone(),
                name: i.name.clone(),
                hw_addr: format_mac(&i.mac),
                mtu: u64::from(i.mtu),
                ip_addresses: i
                    .addresses
                    .iter()
                    .map(|(ip, prefix)| pb::IPAddress {
                        family: family(ip).into(),
                        address: ip.to_string(),
                        prefix_len: u32::from(*prefix),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        let routes = scan
            .routes
            .iter()
            .map(|r| {
                let ip = r.dest.map(|(ip, _)| ip).or(r.gateway).or(r.source);
                pb::Route {
                    dest: r
                        .dest
                        .map(|(ip, len)| format!("{ip}/{len}"))
                        .unwrap_or_default(),
                    gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
                    device: r.device.clone(),
                    source: r.source.map(|s| s.to_string()).unwrap_or_default(),
                    scope: u32::from(r.scope),
                    family: ip.map_or(pb::IPFamily::V4, |ip| family(&ip)).into(),
                    ..Default::default()
                }
            })
            .collect();
        let neighbours = scan
            .neighbours
            .iter()
            .map(|n| pb::ARPNeighbor {
                to_ip: protobuf::MessageField::some(pb::IPAddress {
                    family: family(&n.ip).into(),
                    address: n.ip.to_string(),
                    prefix_len: if n.ip.is_ipv4() { 32 } else { 128 },
                    ..Default::default()
                }),
                device: n.device.clone(),
                ll_addr: format_mac(&n.mac),
                // NUD_PERMANENT: static, as on the host.
                state: 0x80,
                ..Default::default()
            })
            .collect();
        GuestNetwork {
            interfaces,
            routes,
            neighbours,
        }
    }
}

fn family(ip: &IpAddr) -> pb::IPFamily {
    if ip.is_ipv4() {
        pb::IPFamily::V4
    } else {
        pb::IPFamily::V6
    }
}

pub fn format_mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The network namespace a sandbox's spec names (`linux.namespaces`, type network, with a
/// path): CRI's `/var/run/netns/cni-...` or `/proc/<pid>/ns/net`. None for a container that
/// gets a new netns (ctr run): such a VM has no NIC.
pub fn netns_path(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("pod network namespace {}: {source}", path.display())]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pod network in {}: {what}: {source}", path.display())]
    Op {
        path: PathBuf,
        what: String,
        source: std::io::Error,
    },
}

/// One tap the VM gets: attach `fd` as a virtio-net NIC with `mac` and `mtu`.
#[derive(Debug, Clone)]
pub struct Tap {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    /// The tap's queue. Shared: the VM layer may boot more than once with the same devices.
    pub fd: Arc<OwnedFd>,
}

/// What [`PodNetwork::setup`] made in one pod netns, so that teardown removes exactly it.
#[derive(Debug)]
struct Plumbed {
    veth_index: u32,
    /// Whether the veth's ingress qdisc is ours (one that was there before is never removed).
    veth_qdisc: bool,
    tap_name: String,
    tap_index: u32,
}

/// The pod's plumbed network: what the VM attaches and what the agent is told.
#[derive(Debug)]
pub struct PodNetwork {
    path: PathBuf,
    netns: Arc<File>,
    plumbed: Vec<Plumbed>,
    taps: Vec<Tap>,
    guest: GuestNetwork,
}

impl PodNetwork {
    /// Scans the netns at `path` and plumbs a tap for each interface found. Ok(None) when
    /// there is none (nothing was made). On error nothing is left behind.
    pub async fn setup(path: &Path) -> Result<Option<PodNetwork>, NetworkError> {
        let netns = open_netns(path).await?;
        let (scan, plumbed, fds) = in_netns(netns.clone(), path, plumb).await??;
        if scan.interfaces.is_empty() {
            return Ok(None);
        }
        let taps = scan
            .interfaces
            .iter()
            .zip(&plumbed)
            .zip(fds)
            .map(|((i, p), fd)| Tap {
                name: p.tap_name.clone(),
                mac: format_mac(&i.mac),
                mtu: i.mtu,
                fd: Arc::new(fd),
            })
            .collect();
        for (i, p) in scan.interfaces.iter().zip(&plumbed) {
            tracing::info!(
                netns = %path.display(),
                "pod interface {} ({}, mtu {}) plumbed to tap {} with tc redirects both ways",
                i.name,
                format_mac(&i.mac),
                i.mtu,
                p.tap_name
            );
        }
        Ok(Some(PodNetwork {
            path: path.to_path_buf(),
            netns,
            plumbed,
            taps,
            guest: GuestNetwork::from_scan(&scan),
        }))
    }

    /// The NICs for the VM, in guest order.
    pub fn taps(&self) -> &[Tap] {
        &self.taps
    }

    /// What the agent is told once the VM is up.
    pub fn guest(&self) -> &GuestNetwork {
        &self.guest
    }

    /// Removes what setup made: each veth's ingress qdisc (with its filter) and each tap (its
    /// own qdisc goes with it). Call after the VM is stopped. Best effort on every item; the
    /// first failure is returned.
    pub async fn teardown(self) -> Result<(), NetworkError> {
        let PodNetwork {
            path,
            netns,
            plumbed,
            taps,
            ..
        } = self;
        // Our copies of the tap fds: with QEMU gone, closing them ends the taps.
        drop(taps);
        in_netns(netns, &path, move |p| unplumb(p, &plumbed)).await?
    }
}

/// A tap made for a VM booted before its pod (a pooled VM): in a network namespace of its own,
/// held by an fd, until [`PodNetwork::adopt`] moves it into the pod's. A `microvm` VM gets its
/// NICs at boot only, so the tap must exist then.
#[derive(Debug)]
pub struct HeldTap {
    netns: Arc<File>,
    index: u32,
    tap: Tap,
}

/// The MTU a held tap starts with (the pod's is set at adoption).
const HELD_TAP_MTU: u32 = 1500;

impl HeldTap {
    /// A new network namespace with one tap in it, the tap's MAC random and locally
    /// administered.
    pub async fn create() -> Result<HeldTap, NetworkError> {
        let path = PathBuf::from("(the pooled VM's own netns)");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let p = path.clone();
        std::thread::Builder::new()
            .name("kata-held-tap".into())
            .spawn(move || {
                let made = (|| {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| op(&p, "creating it")(e.into()))?;
                    let netns = File::open("/proc/thread-self/ns/net")
                        .map_err(op(&p, "opening /proc/thread-self/ns/net"))?;
                    let name = format!("tap0{TAP_SUFFIX}");
                    let fd =
                        rtnl::create_tap(&name).map_err(op(&p, format!("creating tap {name}")))?;
                    let mut nl = Rtnl::open().map_err(op(&p, "opening a netlink socket"))?;
                    let index = nl
                        .links()
                        .map_err(op(&p, "listing links"))?
                        .into_iter()
                        .find(|l| l.name == name)
                        .map(|l| l.index)
                        .ok_or_else(|| {
                            op(&p, format!("creating tap {name}"))(std::io::Error::new(
                                std::io::ErrorKind::NotFound,
                                "not listed after creation",
                            ))
                        })?;
                    Ok((netns, index, name, fd))
                })();
                let _ = tx.send(made);
                // The thread ends here, in the new netns: it runs nothing else.
            })
            .map_err(|source| NetworkError::Netns {
                path: path.clone(),
                source,
            })?;
        let (netns, index, name, fd) = rx.await.map_err(|_| NetworkError::Netns {
            path: path.clone(),
            source: std::io::Error::other("its thread ended without an answer"),
        })??;
        let mut mac = [0u8; 6];
        getrandom_bytes(&mut mac).map_err(op(&path, "a random MAC"))?;
        // Unicast, locally administered.
        mac[0] = (mac[0] & 0xfe) | 0x02;
        Ok(HeldTap {
            netns: Arc::new(netns),
            index,
            tap: Tap {
                name,
                mac: format_mac(&mac),
                mtu: HELD_TAP_MTU,
                fd: Arc::new(fd),
            },
        })
    }

    /// The NIC the VM boots with.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }
}

/// Fills `buf` from the kernel's random source.
fn getrandom_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    File::open("/dev/urandom")?.read_exact(buf)
}

impl PodNetwork {
    /// Plumbs a pooled VM's `held` tap to the pod's netns at `path`: moved there from its own
    /// netns and wired to the pod's one interface like [`PodNetwork::setup`]'s taps. Ok(None)
    /// when the pod's netns has no interface (the tap stays where it was); a pod with more
    /// than one is refused (the VM has one NIC). On error the tap is gone and the pod's netns
    /// is as it was.
    pub async fn adopt(path: &Path, held: HeldTap) -> Result<Option<PodNetwork>, NetworkError> {
        let netns = open_netns(path).await?;
        let (scan, _) = in_netns(netns.clone(), path, |p| {
            let mut nl = Rtnl::open().map_err(op(p, "opening a netlink socket"))?;
            scan_netns(&mut nl, p)
        })
        .await??;
        match scan.interfaces.len() {
            0 => return Ok(None),
            1 => {}
            n => {
                return Err(op(path, "handing over the pooled VM's NIC")(
                    std::io::Error::other(format!("the pod has {n} interfaces, the VM one NIC")),
                ))
            }
        }
        let HeldTap {
            netns: own,
            index,
            tap,
        } = held;
        let target = netns.clone();
        in_netns(own, path, move |p| {
            let mut nl = Rtnl::open().map_err(op(p, "opening a netlink socket"))?;
            use std::os::fd::AsFd;
            nl.move_to_netns(index, target.as_fd()).map_err(op(
                p,
                format!("moving {} into the pod's netns", "the held tap"),
            ))
        })
        .await??;
        let iface = scan.interfaces[0].clone();
        let tap_name = tap.name.clone();
        let wired = in_netns(netns.clone(), path, move |p| {
            let mut nl = Rtnl::open().map_err(op(p, "opening a netlink socket"))?;
            let tap_index = nl
                .links()
                .map_err(op(p, "listing links"))?
                .into_iter()
                .find(|l| l.name == tap_name && l.kind.as_deref() == Some("tun"))
                .map(|l| l.index)
                .ok_or_else(|| {
                    op(p, format!("finding {tap_name} after the move"))(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "not listed",
                    ))
                })?;
            wire(&mut nl, p, &iface, &tap_name, tap_index)
        })
        .await??;
        tracing::info!(
            netns = %path.display(),
            "pod interface {} ({}, mtu {}) plumbed to the pooled VM's tap {} with tc redirects both ways",
            scan.interfaces[0].name,
            format_mac(&scan.interfaces[0].mac),
            scan.interfaces[0].mtu,
            tap.name
        );
        Ok(Some(PodNetwork {
            path: path.to_path_buf(),
            netns,
            plumbed: vec![wired],
            taps: vec![tap],
            guest: GuestNetwork::from_scan(&scan),
        }))
    }
}

/// The pod's netns at `path`, opened (off the async threads).
async fn open_netns(path: &Path) -> Result<Arc<File>, NetworkError> {
    let p = path.to_path_buf();
    let netns = tokio::task::spawn_blocking(move || File::open(&p))
        .await
        .map_err(|e| NetworkError::Netns {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?
        .map_err(|source| NetworkError::Netns {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Arc::new(netns))
}

type Plumbing = (Scan, Vec<Plumbed>, Vec<OwnedFd>);

/// Runs `f` on a new thread inside the netns `netns`; the thread ends with `f`.
async fn in_netns<T: Send + 'static>(
    netns: Arc<File>,
    path: &Path,
    f: impl FnOnce(&Path) -> Result<T, NetworkError> + Send + 'static,
) -> Result<Result<T, NetworkError>, NetworkError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let p = path.to_path_buf();
    std::thread::Builder::new()
        .name("kata-pod-netns".into())
        .spawn(move || {
            let r = match nix::sched::setns(&*netns, nix::sched::CloneFlags::CLONE_NEWNET) {
                Ok(()) => f(&p),
                Err(e) => Err(NetworkError::Netns {
                    path: p.clone(),
                    source: std::io::Error::other(format!("entering it: {e}")),
                }),
            };
            let _ = tx.send(r);
            // The thread ends here, in the pod's netns: it runs nothing else.
        })
        .map_err(|source| NetworkError::Netns {
            path: path.to_path_buf(),
            source,
        })?;
    rx.await.map_err(|_| NetworkError::Netns {
        path: path.to_path_buf(),
        source: std::io::Error::other("its thread ended without an answer"),
    })
}

fn op(path: &Path, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let (path, what) = (path.to_path_buf(), what.into());
    move |source| NetworkError::Op { path, what, source }
}

/// Which links of the pod's netns get a tap: Ethernet links with a MAC, not loopback and
/// not a tun/tap (ours from an earlier attempt, or something CNI made that a VM cannot
/// take over).
fn pod_links(links: &[rtnl::Link]) -> Vec<&rtnl::Link> {
    links
        .iter()
        .filter(|l| !l.loopback && l.ether && l.mac.len() == 6 && l.kind.as_deref() != Some("tun"))
        .collect()
}

/// On the netns thread: scan, then make a tap and the two redirects per interface. On error
/// undoes what it made.
fn plumb(path: &Path) -> Result<Plumbing, NetworkError> {
    let mut nl = Rtnl::open().map_err(op(path, "opening a netlink socket"))?;
    let (scan, links) = scan_netns(&mut nl, path)?;

    let mut plumbed = Vec::new();
    let mut fds = Vec::new();
    for (n, iface) in scan.interfaces.iter().enumerate() {
        match plumb_one(&mut nl, path, n, iface, &links) {
            Ok((p, fd)) => {
                plumbed.push(p);
                fds.push(fd);
            }
            Err(e) => {
                drop(fds);
                if let Err(ue) = unplumb_with(&mut nl, path, &plumbed) {
                    tracing::warn!("undoing the pod network after an error: {ue}");
                }
                return Err(e);
            }
        }
    }
    Ok((scan, plumbed, fds))
}

/// On the netns thread: the pod's interfaces, their routes and neighbours, and every link.
fn scan_netns(nl: &mut Rtnl, path: &Path) -> Result<(Scan, Vec<rtnl::Link>), NetworkError> {
    let links = nl.links().map_err(op(path, "listing links"))?;
    let mut scan = Scan::default();
    for l in pod_links(&links) {
        let addresses = nl
            .addresses(l.index)
            .map_err(op(path, format!("listing the addresses of {}", l.name)))?;
        scan.interfaces.push(PodInterface {
            index: l.index,
            name: l.name.clone(),
            mac: l.mac.clone(),
            mtu: l.mtu,
            addresses,
        });
    }
    scan.routes = nl
        .routes(&scan.interfaces)
        .map_err(op(path, "listing routes"))?;
    scan.neighbours = nl
        .neighbours(&scan.interfaces)
        .map_err(op(path, "listing neighbours"))?;
    Ok((scan, links))
}

/// One interface: tap up with the interface's MTU, ingress qdiscs on both, redirects both
/// ways. On error removes what it made for this interface.
fn plumb_one(
    nl: &mut Rtnl,
    path: &Path,
    n: usize,
    iface: &PodInterface,
    links: &[rtnl::Link],
) -> Result<(Plumbed, OwnedFd), NetworkError> {
    let tap_name = format!("tap{n}{TAP_SUFFIX}");
    if links.iter().any(|l| l.name == tap_name) {
        // TUNSETIFF would attach to an existing persistent tap: never take over a device.
        return Err(op(path, format!("creating tap {tap_name}"))(
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a link of that name exists",
            ),
        ));
    }
    let fd = rtnl::create_tap(&tap_name).map_err(op(path, format!("creating tap {tap_name}")))?;
    let tap_index = nl
        .links()
        .map_err(op(path, "listing links"))?
        .into_iter()
        .find(|l| l.name == tap_name)
        .map(|l| l.index)
        .ok_or_else(|| {
            op(path, format!("creating tap {tap_name}"))(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not listed after creation",
            ))
        })?;
    match wire(nl, path, iface, &tap_name, tap_index) {
        Ok(p) => Ok((p, fd)),
        Err(e) => {
            drop(fd);
            Err(e)
        }
    }
}

/// Tap `tap_index` up with the interface's MTU, ingress qdiscs on both, redirects both ways.
/// On error removes the qdisc it added and the tap.
fn wire(
    nl: &mut Rtnl,
    path: &Path,
    iface: &PodInterface,
    tap_name: &str,
    tap_index: u32,
) -> Result<Plumbed, NetworkError> {
    let mut p = Plumbed {
        veth_index: iface.index,
        veth_qdisc: false,
        tap_name: tap_name.to_string(),
        tap_index,
    };
    let wired = (|| {
        nl.set_up_with_mtu(tap_index, iface.mtu).map_err(op(
            path,
            format!("setting {tap_name} up, mtu {}", iface.mtu),
        ))?;
        nl.add_ingress_qdisc(iface.index).map_err(op(
            path,
            format!(
                "adding an ingress qdisc to {} (one already there is not ours to replace)",
                iface.name
            ),
        ))?;
        p.veth_qdisc = true;
        nl.add_ingress_qdisc(tap_index)
            .map_err(op(path, format!("adding an ingress qdisc to {tap_name}")))?;
        nl.redirect_all(iface.index, tap_index).map_err(op(
            path,
            format!("redirecting {} to {tap_name} (tc u32 + mirred)", iface.name),
        ))?;
        nl.redirect_all(tap_index, iface.index).map_err(op(
            path,
            format!("redirecting {tap_name} to {} (tc u32 + mirred)", iface.name),
        ))
    })();
    match wired {
        Ok(()) => Ok(p),
        Err(e) => {
            if let Err(ue) = unplumb_with(nl, path, std::slice::from_ref(&p)) {
                tracing::warn!("undoing {tap_name} after an error: {ue}");
            }
            Err(e)
        }
    }
}

fn unplumb(path: &Path, plumbed: &[Plumbed]) -> Result<(), NetworkError> {
    let mut nl = Rtnl::open().map_err(op(path, "opening a netlink socket"))?;
    unplumb_with(&mut nl, path, plumbed)
}

/// Removes each veth's ingress qdisc we added and each tap still there (a tap whose fds are
/// all closed is already gone). Goes on past failures; returns the first.
fn unplumb_with(nl: &mut Rtnl, path: &Path, plumbed: &[Plumbed]) -> Result<(), NetworkError> {
    let mut first = None;
    let mut keep = |r: Result<(), NetworkError>| {
        if let Err(e) = r {
            tracing::warn!("{e}");
            first.get_or_insert(e);
        }
    };
    for p in plumbed {
        let has = if p.veth_qdisc {
            nl.has_ingress_qdisc(p.veth_index)
        } else {
            Ok(false)
        };
        keep(match has {
            Ok(true) => nl.delete_ingress_qdisc(p.veth_index).map_err(op(
                path,
                format!("removing the ingress qdisc of link {}", p.veth_index),
            )),
            Ok(false) => Ok(()),
            Err(e) => Err(op(path, "listing qdiscs")(e)),
        });
        let tap = nl.links().map(|ls| {
            ls.into_iter()
                .any(|l| l.index == p.tap_index && l.name == p.tap_name)
        });
        keep(match tap {
            Ok(true) => match nl.delete_link(p.tap_index) {
                // Gone meanwhile (its last fd closed): what we wanted.
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
                r => r.map_err(op(path, format!("removing tap {}", p.tap_name))),
            },
            Ok(false) => Ok(()),
            Err(e) => Err(op(path, "listing links")(e)),
        });
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan() -> Scan {
        Scan {
            interfaces: vec![PodInterface {
                index: 2,
                name: "eth0".into(),
                mac: vec![0x0a, 0x58, 0x0a, 0x58, 0x00, 0x05],
                mtu: 1450,
                addresses: vec![
                    ("10.88.0.5".parse().unwrap(), 16),
                    ("fd00::5".parse().unwrap(), 64),
                ],
            }],
            routes: vec![
                PodRoute {
                    dest: None,
                    gateway: Some("10.88.0.1".parse().unwrap()),
                    device: "eth0".into(),
                    source: None,
                    scope: 0,
                },
                PodRoute {
                    dest: Some(("10.99.0.0".parse().unwrap(), 24)),
                    gateway: None,
                    device: "eth0".into(),
                    source: Some("10.88.0.5".parse().unwrap()),
                    scope: 253,
                },
            ],
            neighbours: vec![PodNeighbour {
                ip: "10.88.0.1".parse().unwrap(),
                mac: vec![0xee, 0, 0, 0, 0, 1],
                device: "eth0".into(),
            }],
        }
    }

    #[test]
    fn the_agent_is_told_each_interface_by_the_veths_mac_name_mtu_and_addresses() {
        let g = GuestNetwork::from_scan(&scan());
        assert_eq!(g.interfaces.len(), 1);
        let i = &g.interfaces[0];
        assert_eq!(i.hw_addr, "0a:58:0a:58:00:05");
        assert_eq!((i.name.as_str(), i.device.as_str()), ("eth0", "eth0"));
        assert_eq!(i.mtu, 1450);
        let ips: Vec<(String, u32, pb::IPFamily)> = i
            .ip_addresses
            .iter()
            .map(|a| {
                (
                    a.address.clone(),
                    a.prefix_len,
                    a.family.enum_value_or_default(),
                )
            })
            .collect();
        assert_eq!(
            ips,
            [
                ("10.88.0.5".to_string(), 16, pb::IPFamily::V4),
                ("fd00::5".to_string(), 64, pb::IPFamily::V6)
            ]
        );
    }

    #[test]
    fn routes_and_neighbours_name_the_interface_and_keep_their_fields() {
        let g = GuestNetwork::from_scan(&scan());
        let r = &g.routes;
        assert_eq!(r.len(), 2);
        assert_eq!(
            (
                r[0].dest.as_str(),
                r[0].gateway.as_str(),
                r[0].device.as_str()
            ),
            ("", "10.88.0.1", "eth0")
        );
        assert_eq!(r[0].family.enum_value_or_default(), pb::IPFamily::V4);
        assert_eq!(
            (r[1].dest.as_str(), r[1].source.as_str(), r[1].scope),
            ("10.99.0.0/24", "10.88.0.5", 253)
        );
        let n = &g.neighbours[0];
        assert_eq!(n.ll_addr, "ee:00:00:00:00:01");
        assert_eq!(n.device, "eth0");
        assert_eq!(n.state, 0x80);
        assert_eq!(n.to_ip.address, "10.88.0.1");
        assert_eq!(n.to_ip.prefix_len, 32);
    }

    #[test]
    fn an_empty_netns_tells_the_agent_nothing() {
        assert_eq!(
            GuestNetwork::from_scan(&Scan::default()),
            GuestNetwork::default()
        );
    }

    fn link(name: &str, kind: Option<&str>, loopback: bool, mac: usize) -> rtnl::Link {
        rtnl::Link {
            index: 1,
            name: name.into(),
            mac: vec![2; mac],
            mtu: 1500,
            loopback,
            ether: !loopback,
            kind: kind.map(str::to_string),
        }
    }

    #[test]
    fn only_ethernet_links_get_a_tap_not_lo_nor_a_tap() {
        let links = [
            link("lo", None, true, 6),
            link("eth0", Some("veth"), false, 6),
            link("tap0_kata", Some("tun"), false, 6),
            link("odd", None, false, 0),
            link("net1", Some("macvlan"), false, 6),
        ];
        let names: Vec<&str> = pod_links(&links).iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["eth0", "net1"]);
    }

    #[test]
    fn the_netns_comes_from_the_specs_network_namespace_path() {
        let with: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"namespaces": [
                {"type": "pid"},
                {"type": "network", "path": "/var/run/netns/cni-1234"}
            ]}
        }))
        .expect("spec");
        assert_eq!(
            netns_path(&with),
            Some(PathBuf::from("/var/run/netns/cni-1234"))
        );
        let without: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"namespaces": [{"type": "network"}]}
        }))
        .expect("spec");
        assert_eq!(netns_path(&without), None);
    }

    /// `ip` bounded by `timeout`, which must succeed.
    fn ip(args: &[&str]) {
        let out = std::process::Command::new("timeout")
            .arg("10")
            .arg("ip")
            .args(args)
            .output()
            .expect("running ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ns_out(ns: &str, cmd: &[&str]) -> String {
        let out = std::process::Command::new("timeout")
            .args(["10", "ip", "netns", "exec", ns])
            .args(cmd)
            .output()
            .expect("running ip netns exec");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    struct TestNetns(String);
    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("timeout")
                .args(["10", "ip", "netns", "del", &self.0])
                .output();
        }
    }

    /// A real netns with one veth (its peer in a second netns): a held tap, made in a netns of
    /// its own, moves into it and is wired to the veth like setup's taps (up with the veth's
    /// MTU, redirects both ways); the guest is told the veth's MAC; teardown removes the
    /// qdisc and the tap. A netns with two interfaces is refused, naming the count, with no
    /// tap moved into it.
    #[tokio::test]
    async fn a_held_tap_moves_into_the_pods_netns_and_is_wired_to_its_interface() {
        let name = format!("kata-held-{}", std::process::id());
        let peer = format!("{name}-peer");
        for n in [&name, &peer] {
            let _ = std::process::Command::new("timeout")
                .args(["10", "ip", "netns", "del", n])
                .output();
            ip(&["netns", "add", n]);
        }
        let _ns = (TestNetns(name.clone()), TestNetns(peer.clone()));
        ip(&[
            "-n", &name, "link", "add", "eth0", "mtu", "1400", "type", "veth", "peer", "name",
            "peer0", "netns", &peer,
        ]);
        ip(&["-n", &name, "addr", "add", "10.78.0.5/24", "dev", "eth0"]);
        ip(&["-n", &name, "link", "set", "eth0", "up"]);
        let path = PathBuf::from(format!("/var/run/netns/{name}"));

        let held = HeldTap::create().await.expect("held tap");
        let vm_mac = held.tap().mac.clone();
        assert!(
            !ns_out(&name, &["ip", "link", "show"]).contains("tap0_kata"),
            "the tap starts outside the pod's netns"
        );
        let net = PodNetwork::adopt(&path, held)
            .await
            .expect("adopt")
            .expect("one interface");
        let eth0 = &net.guest().interfaces[0];
        assert_eq!(eth0.name, "eth0");
        assert_ne!(eth0.hw_addr, vm_mac, "the guest is told the veth's MAC");
        let shown = ns_out(&name, &["ip", "link", "show", "tap0_kata"]);
        assert!(
            shown.contains("mtu 1400") && shown.contains(",UP"),
            "{shown}"
        );
        let qdiscs = ns_out(&name, &["tc", "qdisc", "show"]);
        assert_eq!(qdiscs.matches("ingress").count(), 2, "{qdiscs}");
        net.teardown().await.expect("teardown");
        let links = ns_out(&name, &["ip", "link", "show"]);
        assert!(!links.contains("tap0_kata"), "{links}");
        assert!(!ns_out(&name, &["tc", "qdisc", "show"]).contains("ingress"));

        // Two interfaces: refused before anything moves.
        ip(&[
            "-n", &name, "link", "add", "eth1", "type", "veth", "peer", "name", "peer1", "netns",
            &peer,
        ]);
        let held = HeldTap::create().await.expect("held tap");
        let err = PodNetwork::adopt(&path, held)
            .await
            .expect_err("two interfaces");
        assert!(err.to_string().contains("2 interfaces"), "{err}");
        assert!(!ns_out(&name, &["ip", "link", "show"]).contains("tap0_kata"));
    }

    /// A real netns (root, iproute2): a veth with an address, a default route, a static
    /// neighbour and an extra route; setup finds exactly them, plumbs a tap, and teardown
    /// leaves the netns as it was. No VM.
    #[tokio::test]
    async fn setup_scans_and_plumbs_a_real_netns_and_teardown_undoes_it() {
        let name = format!("kata-unit-{}", std::process::id());
        let _ = std::process::Command::new("timeout")
            .args(["10", "ip", "netns", "del", &name])
            .output();
        ip(&["netns", "add", &name]);
        let ns = TestNetns(name.clone());
        ip(&[
            "-n", &name, "link", "add", "eth0", "mtu", "1400", "type", "veth", "peer", "name",
            "peer0",
        ]);
        ip(&[
            "-n",
            &name,
            "link",
            "set",
            "eth0",
            "address",
            "0a:58:0a:00:00:05",
        ]);
        ip(&["-n", &name, "addr", "add", "10.77.0.5/24", "dev", "eth0"]);
        ip(&["-n", &name, "link", "set", "peer0", "up"]);
        ip(&["-n", &name, "link", "set", "eth0", "up"]);
        ip(&["-n", &name, "route", "add", "default", "via", "10.77.0.1"]);
        ip(&[
            "-n",
            &name,
            "route",
            "add",
            "10.99.0.0/16",
            "via",
            "10.77.0.2",
        ]);
        ip(&[
            "-n",
            &name,
            "neigh",
            "add",
            "10.77.0.1",
            "lladdr",
            "ee:00:00:00:00:01",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        let path = PathBuf::from(format!("/var/run/netns/{name}"));

        let net = PodNetwork::setup(&path)
            .await
            .expect("setup")
            .expect("interfaces");
        let g = net.guest();
        // eth0 and its peer are both veths in this netns: both get a tap, in link order.
        let eth0 = g
            .interfaces
            .iter()
            .find(|i| i.name == "eth0")
            .expect("eth0 described");
        assert_eq!(eth0.hw_addr, "0a:58:0a:00:00:05");
        assert_eq!(eth0.mtu, 1400);
        assert_eq!(eth0.ip_addresses.len(), 1, "{eth0:?}");
        assert_eq!(
            (
                eth0.ip_addresses[0].address.as_str(),
                eth0.ip_addresses[0].prefix_len
            ),
            ("10.77.0.5", 24)
        );
        let routes: Vec<(String, String, String)> = g
            .routes
            .iter()
            .map(|r| (r.dest.clone(), r.gateway.clone(), r.device.clone()))
            .collect();
        assert!(
            routes.contains(&(String::new(), "10.77.0.1".into(), "eth0".into())),
            "{routes:?}"
        );
        assert!(
            routes.contains(&("10.99.0.0/16".into(), "10.77.0.2".into(), "eth0".into())),
            "{routes:?}"
        );
        // The kernel's own subnet route is not sent: the guest makes it.
        assert!(!routes.iter().any(|r| r.0 == "10.77.0.0/24"), "{routes:?}");
        assert_eq!(g.neighbours.len(), 1, "{:?}", g.neighbours);
        assert_eq!(g.neighbours[0].ll_addr, "ee:00:00:00:00:01");
        assert_eq!(net.taps().len(), 2);
        let links = ns_out(&name, &["ip", "-d", "link", "show"]);
        assert!(
            links.contains("tap0_kata") && links.contains("tap1_kata"),
            "{links}"
        );
        let tap = net
            .taps()
            .iter()
            .find(|t| t.mac == "0a:58:0a:00:00:05")
            .expect("eth0's tap");
        assert_eq!(tap.mtu, 1400);
        let shown = ns_out(&name, &["ip", "link", "show", &tap.name]);
        assert!(
            shown.contains("mtu 1400") && shown.contains(",UP"),
            "{shown}"
        );
        let filters = ns_out(&name, &["tc", "filter", "show", "dev", "eth0", "ingress"]);
        assert!(
            filters.contains("u32") && filters.contains("mirred"),
            "{filters}"
        );
        assert!(
            filters.contains(&format!("Redirect to device {}", tap.name)),
            "{filters}"
        );
        let filters = ns_out(
            &name,
            &["tc", "filter", "show", "dev", &tap.name, "ingress"],
        );
        assert!(filters.contains("Redirect to device eth0"), "{filters}");

        net.teardown().await.expect("teardown");
        let links = ns_out(&name, &["ip", "link", "show"]);
        assert!(!links.contains("_kata"), "{links}");
        let qdiscs = ns_out(&name, &["tc", "qdisc", "show"]);
        assert!(!qdiscs.contains("ingress"), "{qdiscs}");
        drop(ns);
    }

    #[tokio::test]
    async fn a_missing_netns_is_named() {
        let err = PodNetwork::setup(Path::new("/var/run/netns/kata-no-such-netns"))
            .await
            .expect_err("must fail");
        assert!(err.to_string().contains("kata-no-such-netns"), "{err}");
    }
}
