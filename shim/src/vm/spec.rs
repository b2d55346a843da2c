//! What a VM is booted from: its id (which names its directory), the configuration resolved
//! for it and the devices it gets. Nothing in it names a pod, so a VM can be booted before the
//! pod that will adopt it exists.

use std::path::PathBuf;

use super::VmError;
use crate::config::Config;
use crate::hypervisor::devices::NetDevice;
use crate::hypervisor::layout::run_root;
use crate::hypervisor::CgroupJoin;

/// Everything a VM is booted from.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSpec {
    /// Names the VM's directory and tags its logs. The launcher uses the sandbox id, so a
    /// dead shim's leftovers are found by it; a pooled VM would get an id of its own.
    pub id: String,
    /// The configuration, with the pod's allowlisted annotation overrides applied.
    pub config: Config,
    /// Network interfaces (none yet: see `hypervisor::devices`).
    pub net: Vec<NetDevice>,
    /// The host cgroup the VM's processes join (empty: the shim's own).
    pub cgroup: CgroupJoin,
}

impl VmSpec {
    pub fn new(id: impl Into<String>, config: Config) -> VmSpec {
        VmSpec {
            id: id.into(),
            config,
            net: Vec::new(),
            cgroup: CgroupJoin::default(),
        }
    }
}

/// VM ids become directory names and QEMU option values: the id rule both sides share.
pub fn validate_vm_id(id: &str) -> Result<(), VmError> {
    protocol::rules::check_id(id).map_err(|reason| VmError::InvalidId {
        id: id.to_string(),
        reason: reason.to_string(),
    })
}

/// The directory of VM `id` for `config`: `[runtime] run_dir`, `$KATA_RS_RUN_DIR` or
/// /run/kata-containers, plus the id.
pub fn vm_dir(config: &Config, id: &str) -> PathBuf {
    config
        .runtime
        .run_dir
        .clone()
        .unwrap_or_else(run_root)
        .join(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_vm_id("abc-123_x.y").is_ok());
        assert!(validate_vm_id(&"a".repeat(64)).is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b", "a,b"] {
            assert!(validate_vm_id(bad).is_err(), "{bad:?}");
        }
    }
}
