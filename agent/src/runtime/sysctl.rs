//! A container's `linux.sysctl`: only the kernel parameters that belong to one of the
//! container's namespaces, as runc allows on a host.
//!
//! In a pod they are the pod sandbox container's, and the pod's containers join its IPC and
//! UTS namespaces, so the values reach every container of the pod. `net.*` belongs to the
//! network namespace every container of the guest shares (the pod's). Any other parameter
//! would change the whole guest kernel behind the pod's back, and one the guest kernel does
//! not have cannot be set: both are refused at CreateContainer, naming the parameter.
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// Where the guest kernel shows its parameters (the agent's own /proc, never an image's).
pub const PROC_SYS: &str = "/proc/sys";

/// The IPC parameters outside `fs.mqueue.*` that an IPC namespace has its own copy of.
const IPC_KEYS: [&str; 8] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// The namespace a parameter belongs to, `None` for one the whole kernel shares.
pub fn namespace_of(key: &str) -> Option<LinuxNamespaceType> {
    if IPC_KEYS.contains(&key) || key.starts_with("fs.mqueue.") {
        Some(LinuxNamespaceType::Ipc)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some(LinuxNamespaceType::Uts)
    } else if key.starts_with("net.") {
        Some(LinuxNamespaceType::Network)
    } else {
        None
    }
}

/// The file of parameter `key` below `proc_sys`. Dots separate the levels; a slash stands
/// for a dot inside one level (kubelet writes `net.ipv4.conf.eth0/100.forwarding` for the
/// interface `eth0.100`).
pub fn file_of(proc_sys: &Path, key: &str) -> Result<PathBuf, String> {
    let rel: String = key
        .chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            c => c,
        })
        .collect();
    // Each level a plain name: never empty, `.` or `..` (which would leave /proc/sys).
    let plain = !rel.contains('\0')
        && rel
            .split('/')
            .all(|level| !level.is_empty() && level != "." && level != "..");
    if !plain {
        return Err(format!("invalid sysctl name {key:?}"));
    }
    Ok(proc_sys.join(rel))
}

fn ns_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Ipc => "IPC",
        LinuxNamespaceType::Uts => "UTS",
        _ => "network",
    }
}

/// Refuses a sysctl of `spec` that no namespace of the container holds, or that the guest
/// kernel does not have, naming it.
pub fn check(spec: &Spec) -> Result<(), String> {
    check_in(spec, Path::new(PROC_SYS))
}

fn check_in(spec: &Spec, proc_sys: &Path) -> Result<(), String> {
    let Some(linux) = spec.linux().as_ref() else {
        return Ok(());
    };
    let has = |t: LinuxNamespaceType| linux.namespaces().iter().flatten().any(|n| n.typ() == t);
    let mut keys: Vec<&String> = linux.sysctl().iter().flatten().map(|(k, _)| k).collect();
    // Report the same parameter first every time.
    keys.sort();
    for key in keys {
        let file = file_of(proc_sys, key)?;
        match namespace_of(key) {
            None => {
                return Err(format!(
                    "sysctl {key} is not namespaced: it would apply to the whole VM, not to the \
                     pod's namespaces, so it is refused (only IPC (kernel.shm*, kernel.msg*, \
                     kernel.sem, fs.mqueue.*), UTS (kernel.hostname, kernel.domainname) and \
                     network (net.*) sysctls can be set)"
                ))
            }
            // Containers always share the guest's network namespace: the pod's.
            Some(LinuxNamespaceType::Network) => {}
            Some(t) if !has(t) => {
                return Err(format!(
                    "sysctl {key} needs the container's own {} namespace, and it has none",
                    ns_name(t)
                ))
            }
            Some(_) => {}
        }
        if !file.is_file() {
            return Err(format!(
                "unknown sysctl {key}: the guest kernel has no {}",
                file.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(namespaces: &[&str], sysctl: serde_json::Value) -> Spec {
        let ns: Vec<_> = namespaces.iter().map(|t| json!({"type": t})).collect();
        serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "linux": {"namespaces": ns, "sysctl": sysctl}
        }))
        .expect("a valid spec")
    }

    /// A fake /proc/sys holding `files`.
    fn proc_sys(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in files {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
            std::fs::write(&p, "0\n").expect("write");
        }
        dir
    }

    #[test]
    fn namespaced_parameters() {
        for k in ["kernel.shm_rmid_forced", "kernel.sem", "fs.mqueue.msg_max"] {
            assert_eq!(namespace_of(k), Some(LinuxNamespaceType::Ipc), "{k}");
        }
        assert_eq!(
            namespace_of("kernel.hostname"),
            Some(LinuxNamespaceType::Uts)
        );
        assert_eq!(
            namespace_of("net.ipv4.ip_forward"),
            Some(LinuxNamespaceType::Network)
        );
        for k in [
            "vm.swappiness",
            "kernel.pid_max",
            "fs.file-max",
            "kernel.shm",
        ] {
            assert_eq!(namespace_of(k), None, "{k}");
        }
    }

    #[test]
    fn names_map_to_files_below_proc_sys() {
        let base = Path::new("/proc/sys");
        assert_eq!(
            file_of(base, "fs.mqueue.msg_max").unwrap(),
            Path::new("/proc/sys/fs/mqueue/msg_max")
        );
        assert_eq!(
            file_of(base, "net.ipv4.conf.eth0/100.forwarding").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        for bad in [
            "", ".", "net..x", ".net", "net.", "net./.x", "a/..b", "net.x\0",
        ] {
            assert!(file_of(base, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn checks_name_the_refused_parameter() {
        let sys = proc_sys(&[
            "kernel/shm_rmid_forced",
            "fs/mqueue/msg_max",
            "vm/swappiness",
            "net/ipv4/ip_forward",
            "kernel/hostname",
        ]);
        let ok = spec(
            &["ipc", "uts"],
            json!({"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "20",
                   "net.ipv4.ip_forward": "1", "kernel.hostname": "h"}),
        );
        assert_eq!(check_in(&ok, sys.path()), Ok(()));

        let err = check_in(&spec(&["ipc"], json!({"vm.swappiness": "1"})), sys.path()).unwrap_err();
        assert!(
            err.starts_with("sysctl vm.swappiness is not namespaced"),
            "{err}"
        );

        let err = check_in(
            &spec(&["ipc"], json!({"kernel.shm_nosuch": "1"})),
            sys.path(),
        )
        .unwrap_err();
        assert!(err.contains("kernel.shm_nosuch is not namespaced"), "{err}");

        let err = check_in(
            &spec(&["ipc"], json!({"fs.mqueue.nosuch": "1"})),
            sys.path(),
        )
        .unwrap_err();
        assert!(err.starts_with("unknown sysctl fs.mqueue.nosuch"), "{err}");

        let err = check_in(
            &spec(&["uts"], json!({"kernel.shm_rmid_forced": "1"})),
            sys.path(),
        )
        .unwrap_err();
        assert!(
            err.contains("kernel.shm_rmid_forced needs the container's own IPC namespace"),
            "{err}"
        );

        // A level, not a parameter.
        let err = check_in(&spec(&["ipc"], json!({"net.ipv4": "1"})), sys.path()).unwrap_err();
        assert!(err.starts_with("unknown sysctl net.ipv4:"), "{err}");
    }
}
