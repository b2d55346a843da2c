//! The devices a VM gets besides CPUs, memory and its agent's vsock, described once for every
//! backend: the shared directory and network interfaces. A backend turns them into its own
//! command line or API calls; the launcher fills them in.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

/// What the VM is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devices {
    /// Host directory exported to the guest as its shared filesystem (how: the config's
    /// `shared_fs`).
    pub shared_dir: PathBuf,
    /// Network interfaces, in guest order.
    pub net: Vec<NetDevice>,
}

impl Devices {
    /// A VM with only its shared directory.
    pub fn sharing(shared_dir: impl Into<PathBuf>) -> Devices {
        Devices {
            shared_dir: shared_dir.into(),
            net: Vec::new(),
        }
    }
}

/// One network interface of the guest, backed by a tap device on the host (made in the pod's
/// network namespace by `resources::network`; the VMM gets its open queue, never a name to
/// look up, since the tap is not in the VMM's namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    /// Host tap device the VMM attaches to (for logs and errors).
    pub tap: String,
    /// Guest MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub mtu: u32,
    /// The tap's open queue, passed to the VMM.
    pub fd: TapFd,
}

/// A tap queue shared by every boot attempt of a VM (compared by identity).
#[derive(Debug, Clone)]
pub struct TapFd(pub Arc<OwnedFd>);

impl PartialEq for TapFd {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for TapFd {}

impl TapFd {
    pub fn raw(&self) -> i32 {
        self.0.as_raw_fd()
    }
}

impl NetDevice {
    /// Backends that cannot attach network devices refuse them by name.
    pub(crate) fn unsupported(backend: &str, net: &[NetDevice]) -> Option<String> {
        net.first().map(|n| {
            format!(
                "{backend}: network device {} (tap {}) requested, but this backend attaches no network devices yet (pod networking needs [hypervisor.qemu])",
                n.mac, n.tap
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_without_networking_names_the_device_it_refuses() {
        assert_eq!(NetDevice::unsupported("QEMU", &[]), None);
        let fd = std::fs::File::open("/dev/null").expect("/dev/null");
        let nic = NetDevice {
            tap: "tap0_kata".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1500,
            fd: TapFd(Arc::new(fd.into())),
        };
        let why = NetDevice::unsupported("QEMU", &[nic]).expect("refused");
        assert!(
            why.contains("02:00:00:00:00:01") && why.contains("tap0_kata"),
            "{why}"
        );
    }
}
