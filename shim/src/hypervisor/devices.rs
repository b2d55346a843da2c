//! The devices a VM gets besides CPUs, memory and its agent's vsock, described once for every
//! backend: the shared directory and network interfaces. A backend turns them into its own
//! command line or API calls; the launcher fills them in.

use std::path::PathBuf;

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

/// One network interface of the guest, backed by a tap device on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    /// Host tap device the VMM attaches to.
    pub tap: String,
    /// Guest MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub mtu: u32,
}

impl NetDevice {
    /// Backends that cannot attach network devices yet refuse them by name.
    pub(crate) fn unsupported(backend: &str, net: &[NetDevice]) -> Option<String> {
        net.first().map(|n| {
            format!(
                "{backend}: network device {} (tap {}) requested, but this backend attaches no network devices yet",
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
        let nic = NetDevice {
            tap: "tap0_kata".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1500,
        };
        let why = NetDevice::unsupported("QEMU", &[nic]).expect("refused");
        assert!(
            why.contains("02:00:00:00:00:01") && why.contains("tap0_kata"),
            "{why}"
        );
    }
}
