//! `[hypervisor.clh]`: cloud-hypervisor.

use std::path::PathBuf;

use super::{Arch, GuestConfig, SharedFs, DEFAULT_CLH_PATH};

/// `[hypervisor.clh]` (Kata's key names): the shared keys in `guest` (they mean the same as in
/// `[hypervisor.qemu]`), cloud-hypervisor's own beside them. cloud-hypervisor runs guests of the host's architecture only, so
/// nothing here depends on the arch.
#[derive(Debug, Clone, PartialEq)]
pub struct ClhConfig {
    /// cloud-hypervisor binary.
    pub path: PathBuf,
    /// `guest.shared_fs` is `VirtioFs` or `None` (cloud-hypervisor has no virtio-9p).
    pub guest: GuestConfig,
}

impl ClhConfig {
    /// Name of the section, for messages.
    pub const SECTION: &'static str = "hypervisor.clh";
    /// The `shared_fs` values this section accepts.
    pub const SHARED_FS_ALLOWED: &'static [&'static str] = &["virtio-fs", "none"];

    /// cloud-hypervisor runs guests of the host's architecture only.
    pub fn arch(&self) -> Arch {
        Arch::host()
    }

    /// A `shared_fs` value this section accepts.
    pub fn parse_shared_fs(s: &str) -> Option<SharedFs> {
        SharedFs::parse(s).filter(|f| *f != SharedFs::Virtio9p)
    }
}

impl Default for ClhConfig {
    fn default() -> Self {
        ClhConfig {
            path: PathBuf::from(DEFAULT_CLH_PATH),
            guest: GuestConfig::default(),
        }
    }
}
