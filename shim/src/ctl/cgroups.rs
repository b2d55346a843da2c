//! The host's cgroups and the node's cgroup driver, as `kata-ctl check` reports them: the
//! cgroup version, whether systemd is PID 1, and whether the driver containerd's runc uses
//! (the one kubelet must agree with) is one this runtime places VMs with.

use std::path::Path;

use super::finding::Finding;
use crate::resources::host_cgroup::{systemd_is_running, Hierarchy};

const WHAT_HOST: &str = "host cgroups";
const WHAT_DRIVER: &str = "cgroup driver";

/// Both findings for this host and containerd's configuration at `containerd_config`.
pub fn findings(containerd_config: &Path) -> Vec<Finding> {
    let host = match Hierarchy::detect() {
        Ok(h) => Finding::ok(WHAT_HOST, host_detail(&h, systemd_is_running())),
        Err(e) => Finding::fail(
            WHAT_HOST,
            e.to_string(),
            "mount the cgroup hierarchies under /sys/fs/cgroup (v2 unified, or v1 per controller)",
        ),
    };
    let systemd_cgroup = std::fs::read_to_string(containerd_config)
        .ok()
        .and_then(|t| runc_systemd_cgroup(&t));
    vec![host, driver_finding(systemd_cgroup, systemd_is_running())]
}

fn host_detail(h: &Hierarchy, systemd: bool) -> String {
    let layout = match h {
        Hierarchy::Unified(_) => "v2 (unified)".to_string(),
        Hierarchy::Legacy(m) => format!("v1 ({} controller hierarchies)", m.len()),
    };
    let pid1 = if systemd {
        "systemd is PID 1"
    } else {
        "systemd is not PID 1"
    };
    format!("{layout}; {pid1}")
}

/// `SystemdCgroup` of containerd's runc handler, in either configuration layout; None when
/// the file does not set it (containerd's default: false, the cgroupfs driver).
pub fn runc_systemd_cgroup(text: &str) -> Option<bool> {
    let doc: toml::Value = text.parse().ok()?;
    let plugins = doc.get("plugins")?.as_table()?;
    plugins.values().find_map(|cri| {
        cri.get("containerd")?
            .get("runtimes")?
            .get("runc")?
            .get("options")?
            .get("SystemdCgroup")?
            .as_bool()
    })
}

/// Whether the node's driver (containerd's runc `SystemdCgroup`, which kubelet's
/// `cgroupDriver` must match) is one this runtime can place VMs with.
pub fn driver_finding(systemd_cgroup: Option<bool>, systemd_pid1: bool) -> Finding {
    match (systemd_cgroup.unwrap_or(false), systemd_pid1) {
        (false, false) => Finding::ok(
            WHAT_DRIVER,
            "cgroupfs (containerd's runc SystemdCgroup = false); kubelet's cgroupDriver must be \
             cgroupfs: the VM's QEMU and helpers go into the pod's cgroupfs cgroup",
        ),
        (false, true) => Finding::warn(
            WHAT_DRIVER,
            "cgroupfs (containerd's runc SystemdCgroup = false) on a host whose PID 1 is systemd",
            "Kubernetes recommends the systemd driver on systemd hosts (two managers of one \
             cgroup tree disagree under pressure); both work here. Switch kubelet's \
             cgroupDriver and SystemdCgroup together, on a node without pods",
        ),
        (true, false) => Finding::fail(
            WHAT_DRIVER,
            "containerd's runc uses the systemd driver (SystemdCgroup = true), but systemd is \
             not PID 1 on this host",
            "set SystemdCgroup = false in containerd's runc options and kubelet's cgroupDriver: \
             cgroupfs",
        ),
        (true, true) => Finding::ok(
            WHAT_DRIVER,
            "systemd (containerd's runc SystemdCgroup = true); kubelet's cgroupDriver must be \
             systemd: each pod's QEMU and helpers go into a transient scope systemd starts over \
             D-Bus in the pod's slice",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::finding::Status;

    #[test]
    fn systemd_cgroup_is_read_from_both_layouts() {
        let v2 = r#"
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = true
"#;
        let v3 = r#"
version = 3
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
  SystemdCgroup = false
"#;
        assert_eq!(runc_systemd_cgroup(v2), Some(true));
        assert_eq!(runc_systemd_cgroup(v3), Some(false));
        assert_eq!(runc_systemd_cgroup("version = 2\n"), None);
        assert_eq!(runc_systemd_cgroup("not toml ["), None);
    }

    #[test]
    fn a_driver_matching_pid_1_is_ok_and_systemd_without_it_fails() {
        assert_eq!(driver_finding(None, false).status, Status::Ok);
        assert_eq!(driver_finding(Some(false), true).status, Status::Warn);
        let f = driver_finding(Some(true), false);
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("not PID 1"), "{}", f.detail);
        assert_eq!(driver_finding(Some(true), true).status, Status::Ok);
    }
}
