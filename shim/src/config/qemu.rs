//! `[hypervisor.qemu]`: QEMU.

use std::path::PathBuf;

use super::{AccelMode, Arch, GuestConfig, MachineType, VsockMode, INSTALLED_VHOST_USER_VSOCK};

/// `[hypervisor.qemu]`: the shared keys in `guest`, QEMU's own beside them.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuConfig {
    /// QEMU binary (`qemu-system-<arch>`).
    pub path: PathBuf,
    /// Decides the guest architecture.
    pub machine_type: MachineType,
    pub memory_slots: u32,
    pub accel: AccelMode,
    pub vsock: VsockMode,
    pub vhost_user_vsock_daemon: PathBuf,
    pub guest: GuestConfig,
}

impl QemuConfig {
    /// Name of the section, for messages.
    pub const SECTION: &'static str = "hypervisor.qemu";

    /// Defaults for a guest of `arch` (used for every key a file leaves out).
    pub fn defaults_for(arch: Arch) -> QemuConfig {
        let (path, machine_type) = match arch {
            Arch::X86_64 => ("/usr/bin/qemu-system-x86_64", MachineType::Microvm),
            Arch::Aarch64 => ("/usr/bin/qemu-system-aarch64", MachineType::Virt),
        };
        QemuConfig {
            path: path.into(),
            machine_type,
            memory_slots: 10,
            accel: AccelMode::Auto,
            vsock: VsockMode::Auto,
            vhost_user_vsock_daemon: INSTALLED_VHOST_USER_VSOCK.into(),
            guest: GuestConfig::default(),
        }
    }

    pub fn arch(&self) -> Arch {
        self.machine_type.arch()
    }
}
