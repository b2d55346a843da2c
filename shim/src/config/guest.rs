//! The keys every `[hypervisor.*]` section shares, with the same names and meaning whichever
//! VMM runs the guest.

use std::path::PathBuf;

use super::{SharedFs, VirtioFsCache, INSTALLED_INITRD, INSTALLED_KERNEL, INSTALLED_VIRTIOFSD};

/// The guest itself (kernel, initrd, command line, vCPUs, memory), how the sandbox's shared
/// directory reaches it (virtiofsd and its options), and debug output: the part of a
/// hypervisor section that does not depend on the VMM. Embedded as `guest` in
/// [`QemuConfig`](super::QemuConfig) and [`ClhConfig`](super::ClhConfig).
#[derive(Debug, Clone, PartialEq)]
pub struct GuestConfig {
    /// PVH `vmlinux` (x86_64) or `Image` (aarch64).
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Appended to the runtime's own guest kernel parameters.
    pub kernel_params: String,
    pub default_vcpus: u32,
    /// 0 = as many as the host has.
    pub default_maxvcpus: u32,
    /// MiB.
    pub default_memory: u32,
    pub shared_fs: SharedFs,
    pub virtio_fs_daemon: PathBuf,
    pub virtio_fs_cache: VirtioFsCache,
    pub virtio_fs_extra_args: Vec<String>,
    /// Verbose VMM and helper-daemon logs and a non-quiet guest kernel.
    pub enable_debug: bool,
}

/// The same for every guest architecture.
impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            kernel: INSTALLED_KERNEL.into(),
            initrd: INSTALLED_INITRD.into(),
            kernel_params: String::new(),
            default_vcpus: 1,
            default_maxvcpus: 0,
            default_memory: 512,
            shared_fs: SharedFs::VirtioFs,
            virtio_fs_daemon: INSTALLED_VIRTIOFSD.into(),
            virtio_fs_cache: VirtioFsCache::Auto,
            virtio_fs_extra_args: vec!["--thread-pool-size=1".into()],
            enable_debug: false,
        }
    }
}
