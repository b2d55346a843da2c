//! Rewrites a container's OCI runtime spec (config.json, as `oci_spec::runtime::Spec`) for
//! the guest agent: paths point into the shared directory as the guest sees it, and everything
//! that only means something on the host is dropped. Pure: no I/O, unit-tested, and checked
//! against real specs containerd writes (`shim/tests/oci_specs.rs`).

use std::collections::HashMap;
use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Root, Spec};

use super::share::guest_rootfs;
use crate::error::{TaskError, TaskResult};

/// Annotation CRI sets on every container of a pod: the pod sandbox's id.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// Annotation CRI sets on every container of a pod: [`CONTAINER_TYPE_SANDBOX`] for the pod
/// sandbox (pause) container, `container` for the others.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// [`CONTAINER_TYPE_ANNOTATION`] of the pod sandbox container.
pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";

/// Parses config.json bytes, naming the file in the error.
pub fn parse(bytes: &[u8], what: &str) -> TaskResult<Spec> {
    serde_json::from_slice(bytes)
        .map_err(|e| TaskError::invalid(format!("{what}: not a valid OCI spec: {e}")))
}

/// `annotations` of the spec (empty when absent).
pub fn annotations(spec: &Spec) -> HashMap<String, String> {
    spec.annotations().clone().unwrap_or_default()
}

/// The spec's `linux.cgroupsPath`, when it names one.
pub fn cgroups_path(spec: &Spec) -> Option<String> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().to_string())
        .filter(|p| !p.is_empty())
}

/// The sandbox a container belongs to: CRI's sandbox-id annotation, else the container itself.
pub fn sandbox_id(spec: &Spec, container_id: &str) -> String {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(SANDBOX_ID_ANNOTATION))
        .filter(|s| !s.is_empty())
        .map_or(container_id, String::as_str)
        .to_string()
}

/// Whether the spec is a CRI pod's: its sandbox container or one of its containers.
fn is_cri_pod(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .is_some_and(|a| a.contains_key(CONTAINER_TYPE_ANNOTATION))
}

/// What a VM pod refuses, checked in the spec of each CRI container (the sandbox's at
/// RunPodSandbox, the others' at CreateContainer): a namespace kubelet would share with the
/// host (the type's entry is missing from `linux.namespaces`), and mounts that would
/// propagate back to the host. The error names the pod field and why.
fn refuse_host_only(spec: &Spec, cid: &str) -> TaskResult<()> {
    let what = if spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(CONTAINER_TYPE_ANNOTATION))
        .is_some_and(|t| t == CONTAINER_TYPE_SANDBOX)
    {
        "pod sandbox"
    } else {
        "container"
    };
    if is_cri_pod(spec) {
        let namespaces = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .map(|n| n.iter().map(|n| n.typ()).collect::<Vec<_>>())
            .unwrap_or_default();
        let host = [
            (
                LinuxNamespaceType::Network,
                "hostNetwork",
                "network",
                "the pod runs on the VM's own kernel and network stack, which cannot join the \
                 host's network namespace",
            ),
            (
                LinuxNamespaceType::Pid,
                "hostPID",
                "pid",
                "the pod's processes run on the VM's own kernel, which cannot see or share the \
                 host's processes",
            ),
            (
                LinuxNamespaceType::Ipc,
                "hostIPC",
                "ipc",
                "the pod runs on the VM's own kernel, which cannot share the host's System V \
                 IPC objects and POSIX message queues",
            ),
        ];
        for (typ, field, cri, why) in host {
            if !namespaces.contains(&typ) {
                return Err(TaskError::invalid(format!(
                    "{what} {cid:?}: {field} (CRI namespace_options.{cri} = NODE) is not \
                     supported by a VM pod: {why}"
                )));
            }
        }
    }
    for m in spec.mounts().iter().flatten() {
        let shared = m
            .options()
            .iter()
            .flatten()
            .find(|o| *o == "shared" || *o == "rshared");
        if let Some(opt) = shared {
            return Err(TaskError::invalid(format!(
                "{what} {cid:?}: mount {} has propagation {opt} (mountPropagation: \
                 Bidirectional) which a VM pod cannot honour: mounts made in the VM never \
                 propagate back to the host",
                m.destination().display()
            )));
        }
    }
    Ok(())
}

/// The spec's hostname, empty when unset.
pub fn hostname(spec: &Spec) -> String {
    spec.hostname().clone().unwrap_or_default()
}

/// `root.path` of the spec, if set.
pub fn root_path(spec: &Spec) -> Option<&Path> {
    spec.root()
        .as_ref()
        .map(|r| r.path().as_path())
        .filter(|p| !p.as_os_str().is_empty())
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
pub fn host_binds(spec: &Spec) -> Vec<HostBind> {
    let Some(mounts) = spec.mounts() else {
        return Vec::new();
    };
    mounts
        .iter()
        .enumerate()
        .filter_map(|(index, m)| {
            let options: Vec<&str> = m.options().iter().flatten().map(String::as_str).collect();
            let is_bind = m.typ().as_deref() == Some("bind")
                || options.iter().any(|o| *o == "bind" || *o == "rbind");
            let source = m.source().as_ref()?.to_str()?;
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
/// guest path of their shared copy. Refuses what a VM pod cannot honour (host namespaces,
/// mount propagation back to the host), naming the field.
pub fn rewrite_for_guest(spec: &Spec, cid: &str, binds: &[(usize, String)]) -> TaskResult<Spec> {
    if spec.process().is_none() {
        return Err(TaskError::invalid(format!(
            "OCI spec of container {cid:?} has no process: nothing to run"
        )));
    }
    refuse_host_only(spec, cid)?;
    // A container of a pod whose IPC, UTS or PID namespace has a path (CRI: the pause
    // process's /proc/<pid>/ns/*) joins the pod sandbox container's in the guest, as runc
    // joins the pause's on a host.
    let sandbox = sandbox_id(spec, cid);
    let pod_ns = (sandbox != cid).then(|| protocol::container_ns_path(&sandbox));
    let mut spec = spec.clone();

    let root = spec.root_mut().get_or_insert_with(|| {
        let mut r = Root::default();
        r.set_readonly(None);
        r
    });
    root.set_path(guest_rootfs(cid).into());

    if let Some(mounts) = spec.mounts_mut() {
        for (index, guest) in binds {
            if let Some(m) = mounts.get_mut(*index) {
                m.set_source(Some(guest.into()));
            }
        }
    }

    // Host-only: hooks run host binaries; LSM labels name host policies.
    spec.set_hooks(None);
    if let Some(process) = spec.process_mut() {
        process.set_apparmor_profile(None);
        process.set_selinux_label(None);
    }

    if let Some(linux) = spec.linux_mut() {
        // The guest builds its own cgroup; host device nodes do not exist in the guest.
        linux.set_cgroups_path(None);
        linux.set_devices(None);
        linux.set_mount_label(None);
        linux.set_intel_rdt(None);
        if let Some(namespaces) = linux.namespaces_mut() {
            namespaces.retain_mut(|ns| match ns.typ() {
                // The pod's: the sandbox container's.
                LinuxNamespaceType::Pid | LinuxNamespaceType::Ipc | LinuxNamespaceType::Uts
                    if ns.path().is_some() && pod_ns.is_some() =>
                {
                    ns.set_path(pod_ns.clone().map(Into::into));
                    true
                }
                // No path: the container joins the sandbox's (the agent's) netns.
                LinuxNamespaceType::Network
                // Any other path names a host namespace (/proc/<pid>/ns/...), meaningless in
                // the guest: the container gets a new one (never the agent's own).
                | LinuxNamespaceType::Pid
                | LinuxNamespaceType::Ipc
                | LinuxNamespaceType::Uts
                | LinuxNamespaceType::Mount => {
                    ns.set_path(None);
                    true
                }
                _ => ns.path().is_none(),
            });
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn spec(v: Value) -> Spec {
        serde_json::from_value(v).expect("a valid spec")
    }

    /// The rewrite as JSON, to look at it the way the agent receives it.
    fn rewritten(spec: &Spec, cid: &str, binds: &[(usize, String)]) -> Value {
        serde_json::to_value(rewrite_for_guest(spec, cid, binds).expect("rewrite")).expect("json")
    }

    fn cri_spec() -> Spec {
        spec(json!({
            "ociVersion": "1.0.2",
            "hostname": "pod1",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "apparmorProfile": "cri-default",
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
        }))
    }

    #[test]
    fn root_path_points_into_the_guest_share() {
        let out = rewritten(&cri_spec(), "c1", &[]);
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
        let out = rewritten(
            &spec,
            "c1",
            &[(1, "/g/hosts".into()), (3, "/g/data".into())],
        );
        assert_eq!(out.pointer("/mounts/1/source").unwrap(), "/g/hosts");
        assert_eq!(out.pointer("/mounts/3/source").unwrap(), "/g/data");
        assert_eq!(out.pointer("/mounts/0/source").unwrap(), "proc");
        assert_eq!(out.pointer("/mounts/1/options/2").unwrap(), "ro");
    }

    /// `(type, path)` of each namespace of the rewritten spec.
    fn namespaces(spec: &Spec, cid: &str) -> Vec<(String, Option<String>)> {
        let out = rewritten(spec, cid, &[]);
        out.pointer("/linux/namespaces")
            .and_then(Value::as_array)
            .expect("namespaces")
            .iter()
            .map(|n| {
                (
                    n["type"].as_str().unwrap_or_default().to_string(),
                    n.get("path").and_then(Value::as_str).map(str::to_string),
                )
            })
            .collect()
    }

    fn ns(typ: &str, path: Option<&str>) -> (String, Option<String>) {
        (typ.to_string(), path.map(str::to_string))
    }

    #[test]
    fn a_pod_container_joins_the_sandbox_containers_ipc_and_uts() {
        let pod = protocol::container_ns_path("sb1");
        assert_eq!(
            namespaces(&cri_spec(), "c1"),
            vec![
                ns("pid", None),
                ns("ipc", Some(&pod)),
                ns("uts", Some(&pod)),
                ns("mount", None),
                ns("network", None),
            ],
            "host paths become the sandbox container's; the user namespace path goes"
        );
    }

    #[test]
    fn a_pod_container_joins_the_pod_pid_namespace_when_the_pod_shares_one() {
        let mut v = serde_json::to_value(cri_spec()).unwrap();
        v["linux"]["namespaces"][0] = json!({"type": "pid", "path": "/proc/42/ns/pid"});
        let pod = protocol::container_ns_path("sb1");
        assert_eq!(namespaces(&spec(v), "c1")[0], ns("pid", Some(&pod)));
    }

    #[test]
    fn outside_a_pod_namespace_paths_are_dropped() {
        // No sandbox-id annotation: `ctr run --with-ns ...` names host namespaces.
        let mut v = serde_json::to_value(cri_spec()).unwrap();
        v["annotations"] = json!({});
        v["linux"]["namespaces"][0] = json!({"type": "pid", "path": "/proc/42/ns/pid"});
        let standalone = namespaces(&spec(v.clone()), "c1");
        // The pod sandbox container itself (its id is the sandbox id) never joins itself.
        v["annotations"] = json!({SANDBOX_ID_ANNOTATION: "sb1"});
        let sandbox = namespaces(&spec(v), "sb1");
        for got in [standalone, sandbox] {
            assert_eq!(
                got,
                ["pid", "ipc", "uts", "mount", "network"]
                    .map(|t| ns(t, None))
                    .to_vec()
            );
        }
    }

    /// A pod sandbox spec as containerd writes it for kubelet's defaults (own network from
    /// CNI, pod IPC, container PID namespaces).
    fn pod_sandbox_spec() -> Value {
        json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["/pause"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "annotations": {CONTAINER_TYPE_ANNOTATION: CONTAINER_TYPE_SANDBOX,
                            SANDBOX_ID_ANNOTATION: "sb1"},
            "linux": {
                "sysctl": {"kernel.shm_rmid_forced": "1"},
                "namespaces": [
                    {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                    {"type": "network", "path": "/var/run/netns/cni-1"}
                ]
            }
        })
    }

    #[test]
    fn a_pod_sandbox_sharing_a_host_namespace_is_refused_naming_the_field() {
        assert!(rewrite_for_guest(&spec(pod_sandbox_spec()), "sb1", &[]).is_ok());
        for (typ, field) in [
            ("network", "hostNetwork"),
            ("pid", "hostPID"),
            ("ipc", "hostIPC"),
        ] {
            let mut v = pod_sandbox_spec();
            let list = v["linux"]["namespaces"].as_array_mut().unwrap();
            list.retain(|n| n["type"] != typ);
            let err = rewrite_for_guest(&spec(v.clone()), "sb1", &[]).unwrap_err();
            assert!(
                err.message
                    .contains(&format!("pod sandbox \"sb1\": {field}"))
                    && err.message.contains("VM"),
                "{err}"
            );
            // A pod's container (CRI's pid NamespaceMode NODE) likewise.
            v["annotations"][CONTAINER_TYPE_ANNOTATION] = json!("container");
            let err = rewrite_for_guest(&spec(v.clone()), "c1", &[]).unwrap_err();
            assert!(
                err.message.contains(&format!("container \"c1\": {field}")),
                "{err}"
            );
            // Outside CRI (`ctr run --net-host`), the VM is the host the container sees.
            v["annotations"] = json!({});
            assert!(rewrite_for_guest(&spec(v), "c1", &[]).is_ok());
        }
    }

    #[test]
    fn bidirectional_mount_propagation_is_refused_naming_the_mount() {
        for opt in ["rshared", "shared"] {
            let mut v = serde_json::to_value(cri_spec()).unwrap();
            v["mounts"][3]["options"] = json!(["rbind", opt]);
            let err = rewrite_for_guest(&spec(v), "c1", &[]).unwrap_err();
            assert!(
                err.message
                    .contains(&format!("mount /data has propagation {opt}"))
                    && err.message.contains("Bidirectional"),
                "{err}"
            );
        }
        // One-way from the host (HostToContainer) is not refused.
        let mut v = serde_json::to_value(cri_spec()).unwrap();
        v["mounts"][3]["options"] = json!(["rbind", "rslave"]);
        assert!(rewrite_for_guest(&spec(v), "c1", &[]).is_ok());
    }

    #[test]
    fn host_only_fields_are_dropped_and_the_rest_kept() {
        let out = rewritten(&cri_spec(), "c1", &[]);
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
        spec.set_process(None);
        let err = rewrite_for_guest(&spec, "c1", &[]).unwrap_err();
        assert!(err.message.contains("no process"), "{err}");
    }

    #[test]
    fn sandbox_id_comes_from_the_cri_annotation_or_the_container() {
        assert_eq!(sandbox_id(&cri_spec(), "c1"), "sb1");
        assert_eq!(sandbox_id(&spec(json!({})), "c1"), "c1");
        assert_eq!(
            sandbox_id(
                &spec(json!({"annotations": {SANDBOX_ID_ANNOTATION: ""}})),
                "c1"
            ),
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
