//! `[hypervisor.qemu]`: QEMU.

use std::path::PathBuf;

use super::{AccelMode, Arch, GuestConfig, MachineType, VsockMode, INSTALLED_VHOST_USER_VSOCK};

/// QEMU's seccomp sandbox unless the configuration says otherwise (`-sandbox`): no obsolete
/// system calls, no setuid/setgid/capability changes, no fork/exec, no scheduler or CPU
/// affinity changes. Verified to boot microvm and q35 guests with vhost-user vsock and
/// virtio-fs, under TCG, on QEMU 7.2.
pub const DEFAULT_SECCOMP_SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The `-sandbox` sub-options this runtime accepts, with their allowed values.
const SECCOMP_OPTIONS: &[(&str, &[&str])] = &[
    ("obsolete", &["allow", "deny"]),
    ("elevateprivileges", &["allow", "deny", "children"]),
    ("spawn", &["allow", "deny"]),
    ("resourcecontrol", &["allow", "deny"]),
];

/// Checks a `seccompsandbox` value: "" (no `-sandbox` option), or "on"/"off" then
/// `name=value` sub-options QEMU knows. Err is the reason, for the configuration error.
pub fn check_seccomp_sandbox(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    let mut parts = value.split(',');
    if !matches!(parts.next(), Some("on" | "off")) {
        return Err("must be \"\" (no seccomp sandbox) or start with \"on\" or \"off\", e.g. \"on,obsolete=deny,spawn=deny\"".into());
    }
    for part in parts {
        let known = part.split_once('=').and_then(|(name, v)| {
            SECCOMP_OPTIONS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, allowed)| (name, allowed.contains(&v), *allowed))
        });
        match known {
            Some((_, true, _)) => {}
            Some((name, false, allowed)) => {
                return Err(format!("{name}= must be one of {}", allowed.join(", ")))
            }
            None => {
                let names: Vec<&str> = SECCOMP_OPTIONS.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "unknown sub-option {part:?}: the sub-options are {}",
                    names.join(", ")
                ));
            }
        }
    }
    Ok(())
}

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
    /// QEMU's `-sandbox` options (Kata's `seccompsandbox`); empty: no `-sandbox`.
    pub seccomp_sandbox: String,
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
            seccomp_sandbox: DEFAULT_SECCOMP_SANDBOX.into(),
            guest: GuestConfig::default(),
        }
    }

    pub fn arch(&self) -> Arch {
        self.machine_type.arch()
    }
}
