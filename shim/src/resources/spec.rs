//! Rewrites a container's OCI runtime spec (config.json, as JSON) for the guest agent:
//! paths point into the shared directory as the guest sees it, and everything that only means
//! something on the host is dropped. Pure: no I/O, unit-tested.

use serde_json::{Map, Value};

use super::share::guest_rootfs;
use crate::error::{TaskError, TaskResult};

/// Annotation CRI sets on every container of a pod: the pod sandbox's id.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// Parses config.json bytes into a JSON object, naming the file in the error.
pub fn parse(bytes: &[u8], what: &str) -> TaskResult<Value> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| TaskError::invalid(format!("{what}: not a valid OCI spec: {e}")))?;
    if !v.is_object() {
        return Err(TaskError::invalid(format!(
            "{what}: OCI spec is not a JSON object"
        )));
    }
    Ok(v)
}

/// `annotations` of the spec (empty when absent).
pub fn annotations(spec: &Value) -> std::collections::HashMap<String, String> {
    spec.get("annotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The sandbox a container belongs to: CRI's sandbox-id annotation, else the container itself.
pub fn sandbox_id(spec: &Value, container_id: &str) -> String {
    spec.pointer("/annotations/io.kubernetes.cri.sandbox-id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(container_id)
        .to_string()
}

/// The spec's hostname, empty when unset.
pub fn hostname(spec: &Value) -> String {
    spec.get("hostname")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// `root.path` of the spec, if set.
pub fn root_path(spec: &Value) -> Option<&str> {
    spec.pointer("/root/path").and_then(Value::as_str)
}

/// One spec mount that is a host bind mount: its index in `mounts`, source and options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    pub index: usize,
    pub source: String,
    pub readonly: bool,
    pub recursive: bool,
}

/// The spec's bind mounts whose source is a host path (they must be shared into the guest).
pub fn host_binds(spec: &Value) -> Vec<HostBind> {
    let Some(mounts) = spec.get("mounts").and_then(Value::as_array) else {
        return Vec::new();
    };
    mounts
        .iter()
        .enumerate()
        .filter_map(|(index, m)| {
            let options: Vec<&str> = m
                .get("options")
                .and_then(Value::as_array)
                .map(|o| o.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let is_bind = m.get("type").and_then(Value::as_str) == Some("bind")
                || options.iter().any(|o| *o == "bind" || *o == "rbind");
            let source = m.get("source").and_then(Value::as_str)?;
            if !is_bind || !source.starts_with('/') {
                return None;
            }
            Some(HostBind {
                index,
                source: source.to_string(),
                readonly: options.contains(&"ro"),
                recursive: options.contains(&"rbind"),
            })
        })
        .collect()
}

/// Rewrites `spec` for container `cid` in the guest. `binds` maps indices of `mounts` to the
/// guest path of their shared copy.
pub fn rewrite_for_guest(spec: &Value, cid: &str, binds: &[(usize, String)]) -> TaskResult<Value> {
    let mut spec = spec.clone();
    let obj = spec
        .as_object_mut()
        .ok_or_else(|| TaskError::invalid("OCI spec is not a JSON object"))?;
    if !obj.get("process").is_some_and(Value::is_object) {
        return Err(TaskError::invalid(format!(
            "OCI spec of container {cid:?} has no process: nothing to run"
        )));
    }

    let root = obj
        .entry("root")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(root) = root.as_object_mut() {
        root.insert("path".into(), Value::String(guest_rootfs(cid)));
    }

    if let Some(mounts) = obj.get_mut("mounts").and_then(Value::as_array_mut) {
        for (index, guest) in binds {
            if let Some(m) = mounts.get_mut(*index).and_then(Value::as_object_mut) {
                m.insert("source".into(), Value::String(guest.clone()));
            }
        }
    }

    // Host-only: hooks run host binaries; LSM labels name host policies.
    obj.remove("hooks");
    if let Some(process) = obj.get_mut("process").and_then(Value::as_object_mut) {
        process.remove("apparmorProfile");
        process.remove("selinuxLabel");
    }

    if let Some(linux) = obj.get_mut("linux").and_then(Value::as_object_mut) {
        // The guest builds its own cgroup; host device nodes do not exist in the guest.
        linux.remove("cgroupsPath");
        linux.remove("devices");
        linux.remove("mountLabel");
        linux.remove("intelRdt");
        if let Some(ns) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
            ns.retain_mut(|entry| {
                let Some(e) = entry.as_object_mut() else {
                    return false;
                };
                match e.get("type").and_then(Value::as_str) {
                    // No path: the container joins the sandbox's (the agent's) netns.
                    Some("network") => {
                        e.remove("path");
                        true
                    }
                    // A path names a host namespace (/proc/<pid>/ns/...), meaningless in the
                    // guest: the container gets a new one (never the agent's own).
                    Some("pid" | "ipc" | "uts" | "mount") => {
                        e.remove("path");
                        true
                    }
                    _ => !e.contains_key("path"),
                }
            });
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cri_spec() -> Value {
        json!({
            "ociVersion": "1.0.2",
            "hostname": "pod1",
            "process": {"args": ["sh"], "cwd": "/", "apparmorProfile": "cri-default",
                        "selinuxLabel": "x", "capabilities": {"bounding": ["CAP_KILL"]},
                        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]},
            "root": {"path": "rootfs", "readonly": true},
            "hooks": {"prestart": [{"path": "/usr/bin/hook"}]},
            "annotations": {"io.kubernetes.cri.sandbox-id": "sb1"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/x/hosts",
                 "options": ["rbind", "rprivate", "ro"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"},
                {"destination": "/data", "source": "/srv/data", "options": ["bind"]}
            ],
            "linux": {
                "cgroupsPath": "/k8s/pod1/c1",
                "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}],
                "resources": {"memory": {"limit": 1048576}},
                "maskedPaths": ["/proc/kcore"],
                "readonlyPaths": ["/proc/sys"],
                "seccomp": {"defaultAction": "SCMP_ACT_ERRNO"},
                "mountLabel": "l",
                "namespaces": [
                    {"type": "pid"},
                    {"type": "ipc", "path": "/proc/42/ns/ipc"},
                    {"type": "uts", "path": "/proc/42/ns/uts"},
                    {"type": "mount"},
                    {"type": "network", "path": "/var/run/netns/cni-1234"},
                    {"type": "user", "path": "/proc/42/ns/user"}
                ]
            }
        })
    }

    #[test]
    fn root_path_points_into_the_guest_share() {
        let out = rewrite_for_guest(&cri_spec(), "c1", &[]).unwrap();
        assert_eq!(
            out.pointer("/root/path").unwrap(),
            &json!(format!("{}/c1/rootfs", protocol::GUEST_SHARED_DIR))
        );
        assert_eq!(out.pointer("/root/readonly").unwrap(), &json!(true));
    }

    #[test]
    fn host_binds_are_found_and_rewritten() {
        let spec = cri_spec();
        let binds = host_binds(&spec);
        assert_eq!(
            binds,
            vec![
                HostBind {
                    index: 1,
                    source: "/var/lib/x/hosts".into(),
                    readonly: true,
                    recursive: true
                },
                HostBind {
                    index: 3,
                    source: "/srv/data".into(),
                    readonly: false,
                    recursive: false
                },
            ]
        );
        let out = rewrite_for_guest(
            &spec,
            "c1",
            &[(1, "/g/hosts".into()), (3, "/g/data".into())],
        )
        .unwrap();
        assert_eq!(out.pointer("/mounts/1/source").unwrap(), "/g/hosts");
        assert_eq!(out.pointer("/mounts/3/source").unwrap(), "/g/data");
        assert_eq!(out.pointer("/mounts/0/source").unwrap(), "proc");
        assert_eq!(out.pointer("/mounts/1/options/2").unwrap(), "ro");
    }

    #[test]
    fn namespaces_lose_their_host_paths() {
        let out = rewrite_for_guest(&cri_spec(), "c1", &[]).unwrap();
        let ns = out
            .pointer("/linux/namespaces")
            .unwrap()
            .as_array()
            .unwrap();
        let types: Vec<&str> = ns.iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert_eq!(types, vec!["pid", "ipc", "uts", "mount", "network"]);
        assert!(ns.iter().all(|n| n.get("path").is_none()));
    }

    #[test]
    fn host_only_fields_are_dropped_and_the_rest_kept() {
        let out = rewrite_for_guest(&cri_spec(), "c1", &[]).unwrap();
        assert!(out.get("hooks").is_none());
        assert!(out.pointer("/process/apparmorProfile").is_none());
        assert!(out.pointer("/process/selinuxLabel").is_none());
        assert!(out.pointer("/linux/cgroupsPath").is_none());
        assert!(out.pointer("/linux/devices").is_none());
        assert!(out.pointer("/linux/mountLabel").is_none());
        assert_eq!(
            out.pointer("/linux/resources/memory/limit").unwrap(),
            1048576
        );
        assert_eq!(out.pointer("/linux/maskedPaths/0").unwrap(), "/proc/kcore");
        assert_eq!(out.pointer("/linux/readonlyPaths/0").unwrap(), "/proc/sys");
        assert!(out.pointer("/linux/seccomp").is_some());
        assert!(out.pointer("/process/rlimits/0").is_some());
        assert!(out.pointer("/process/capabilities/bounding").is_some());
        assert_eq!(out.pointer("/mounts/2/type").unwrap(), "tmpfs");
    }

    #[test]
    fn spec_without_process_is_refused_by_name() {
        let mut spec = cri_spec();
        spec.as_object_mut().unwrap().remove("process");
        let err = rewrite_for_guest(&spec, "c1", &[]).unwrap_err();
        assert!(err.message.contains("no process"), "{err}");
    }

    #[test]
    fn sandbox_id_comes_from_the_cri_annotation_or_the_container() {
        assert_eq!(sandbox_id(&cri_spec(), "c1"), "sb1");
        assert_eq!(sandbox_id(&json!({}), "c1"), "c1");
        assert_eq!(
            sandbox_id(&json!({"annotations": {SANDBOX_ID_ANNOTATION: ""}}), "c1"),
            "c1"
        );
        assert_eq!(hostname(&cri_spec()), "pod1");
        assert_eq!(
            annotations(&cri_spec()).get(SANDBOX_ID_ANNOTATION).unwrap(),
            "sb1"
        );
    }

    #[test]
    fn malformed_spec_is_named() {
        let err = parse(b"{not json", "/b/config.json").unwrap_err();
        assert!(err.message.contains("/b/config.json"), "{err}");
    }
}
