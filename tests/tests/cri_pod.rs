//! A pod's namespaces through CRI, on the private containerd 1.6 and 2.x: the containers of a
//! kata pod share the pod's IPC and UTS namespaces (and its PID namespace when the pod shares
//! one, the pause process as its PID 1), the pod's sysctls reach them, and what a VM pod
//! cannot honour (host network, PID or IPC namespaces, a sysctl outside the pod's namespaces
//! or unknown to the guest kernel, mounts propagated back to the host) fails with an error
//! naming it, leaving nothing behind (RunPodSandbox) or the pod unharmed (StartContainer).

use kata_e2e::cri::{self, api, Cri, KATA_HANDLER};
use kata_e2e::*;
use std::collections::HashMap;
use std::time::Duration;

/// The RuntimeClass handler mapped to the shim (scripts/containerd.sh).
const CLEAN_TIMEOUT: Duration = Duration::from_secs(15);
/// ExecSync's own limit, in seconds (CRI's unit).
const EXEC_TIMEOUT_SECS: i64 = 30;
/// The pod's sysctls: one System V IPC and one POSIX message queue parameter, both away from
/// the kernel's defaults (0 and 10).
const SYSCTLS: [(&str, &str, &str); 2] = [
    (
        "kernel.shm_rmid_forced",
        "/proc/sys/kernel/shm_rmid_forced",
        "1",
    ),
    ("fs.mqueue.msg_max", "/proc/sys/fs/mqueue/msg_max", "20"),
];

/// A kata pod: its config and id, stopped and removed when dropped.
struct KataPod<'a> {
    config: api::PodSandboxConfig,
    id: String,
    guard: cri::PodGuard<'a>,
}

/// The pod config of [`cri::pod_config`] with `sysctls` and the pod's PID namespace mode.
fn pod_config(
    ctrd: &Containerd,
    name: &str,
    sysctls: &[(&str, &str)],
    pid: api::NamespaceMode,
) -> api::PodSandboxConfig {
    let log_dir = ctrd.dir().join("pods").join(unique_id(name));
    std::fs::create_dir_all(&log_dir).expect("creating the pod log directory");
    let mut config = cri::pod_config(name, &log_dir, &[]);
    let linux = config.linux.get_or_insert_with(Default::default);
    linux.sysctls = sysctls
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<HashMap<_, _>>();
    let ns = linux
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default);
    ns.pid = pid as i32;
    config
}

fn run_kata_pod<'a>(ctrd: &Containerd, cri: &'a Cri, config: api::PodSandboxConfig) -> KataPod<'a> {
    let id = cri
        .run_pod(&config, KATA_HANDLER)
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_tail(40)));
    let guard = cri.guard(&id);
    assert_eq!(sandbox_vms(&id).len(), 1, "the pod {id} has one VM");
    KataPod { config, id, guard }
}

/// Creates and starts a container of the test image running `sleep <secs>` (the argument
/// tells the containers apart in /proc), with the pod's PID namespace mode.
fn sleeper(ctrd: &Containerd, cri: &Cri, pod: &KataPod, name: &str, secs: &str) -> String {
    let mut config = cri::container_config(name, &["sleep", secs]);
    if let Some(ns) = pod
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
    {
        let c = config
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .namespace_options
            .get_or_insert_with(Default::default);
        c.pid = ns.pid;
    }
    cri.create_container(&pod.id, &config, &pod.config)
        .and_then(|id| cri.start_container(&id).map(|()| id))
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_tail(40)))
}

/// `sh -c script` in a container; must exit 0. Trimmed stdout.
fn sh(cri: &Cri, id: &str, script: &str) -> String {
    cri.sh(id, script, EXEC_TIMEOUT_SECS)
}

/// The command line of PID 1 as the container sees it, arguments joined by spaces.
fn pid1(cri: &Cri, id: &str) -> String {
    sh(cri, id, "tr '\\0' ' ' < /proc/1/cmdline")
}

/// Stops and removes the pod; nothing of it may be left.
fn remove(ctrd: &Containerd, cri: &Cri, pod: KataPod) {
    cri.stop_pod(&pod.id).expect("StopPodSandbox");
    cri.remove_pod(&pod.id).expect("RemovePodSandbox");
    drop(pod.guard);
    let left = wait_clean(&pod.id, CLEAN_TIMEOUT);
    assert!(
        left.is_empty(),
        "{} left things behind: {left:#?}\ncontainerd log:\n{}",
        pod.id,
        ctrd.log_tail(30)
    );
}

/// Two containers of a pod (PID namespace per container, kubelet's default): one IPC and UTS
/// namespace, the pod's, holding its sysctls and hostname; PID 1 of each is its own process.
fn pod_shares_ipc_and_uts(ctrd: &Containerd) {
    let cri = ctrd.cri();
    let sysctls: Vec<(&str, &str)> = SYSCTLS.iter().map(|(k, _, v)| (*k, *v)).collect();
    let config = pod_config(ctrd, "ns-pod", &sysctls, api::NamespaceMode::Container);
    let pod = run_kata_pod(ctrd, &cri, config);
    let a = sleeper(ctrd, &cri, &pod, "a", "1001");
    let b = sleeper(ctrd, &cri, &pod, "b", "1002");

    // The containers' specs carry no sysctls: values set in the pod sandbox container's IPC
    // namespace are seen only by containers in that namespace.
    for c in [&a, &b] {
        for (key, file, want) in SYSCTLS {
            assert_eq!(
                sh(&cri, c, &format!("cat {file}")),
                want,
                "pod sysctl {key} in container {c}"
            );
        }
        assert_eq!(
            sh(&cri, c, "hostname"),
            pod.config.hostname,
            "the pod's hostname in {c}"
        );
    }
    for ns in ["ipc", "uts"] {
        let script = format!("readlink /proc/self/ns/{ns}");
        assert_eq!(
            sh(&cri, &a, &script),
            sh(&cri, &b, &script),
            "the two containers share the pod's {ns} namespace"
        );
    }
    // PID namespace per container: PID 1 is the container's own process, and differs.
    assert_eq!(pid1(&cri, &a), "sleep 1001");
    assert_eq!(pid1(&cri, &b), "sleep 1002");
    let pidns = "readlink /proc/self/ns/pid";
    assert_ne!(sh(&cri, &a, pidns), sh(&cri, &b, pidns));
    remove(ctrd, &cri, pod);
}

/// A pod sharing its PID namespace (`shareProcessNamespace`): the pause process is PID 1 of
/// every container, and each container sees the other's processes.
fn pod_shares_pid(ctrd: &Containerd) {
    let cri = ctrd.cri();
    let config = pod_config(ctrd, "pid-pod", &[], api::NamespaceMode::Pod);
    let pod = run_kata_pod(ctrd, &cri, config);
    let a = sleeper(ctrd, &cri, &pod, "a", "1001");
    let b = sleeper(ctrd, &cri, &pod, "b", "1002");
    let status = cri.pod_status(&pod.id).expect("PodSandboxStatus");
    let info: serde_json::Value = status
        .info
        .get("info")
        .and_then(|i| serde_json::from_str(i).ok())
        .unwrap_or_default();
    let pause: Vec<&str> = info["runtimeSpec"]["process"]["args"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
        .unwrap_or_default();
    assert!(
        !pause.is_empty(),
        "no pause command in the pod's spec: {info}"
    );
    let all = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done";
    for (c, other) in [(&a, "sleep 1002"), (&b, "sleep 1001")] {
        assert_eq!(pid1(&cri, c), pause.join(" "), "PID 1 of {c} is the pause");
        let procs = sh(&cri, c, all);
        assert!(
            procs.lines().any(|l| l.trim() == other),
            "{c} does not see the other container's {other:?}: {procs}"
        );
    }
    remove(ctrd, &cri, pod);
}

/// RunPodSandbox of `config` fails with an error containing every `want`, and leaves
/// nothing of the sandbox it named.
fn refused(ctrd: &Containerd, cri: &Cri, config: &api::PodSandboxConfig, want: &[&str]) {
    let err = cri.run_pod_error(config, KATA_HANDLER);
    println!("refused as expected: {err}");
    for w in want {
        assert!(err.contains(w), "the error does not name {w:?}: {err}");
    }
    let id = cri::ids_in(&err)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("the error names no sandbox id: {err}"));
    let left = wait_clean(&id, CLEAN_TIMEOUT);
    assert!(
        left.is_empty(),
        "refused sandbox {id} left things behind: {left:#?}\ncontainerd log:\n{}",
        ctrd.log_tail(30)
    );
}

/// Host namespaces, a sysctl outside the pod's namespaces and one the guest kernel lacks are
/// refused at RunPodSandbox, by name.
fn host_only_pods_are_refused(ctrd: &Containerd) {
    let cri = ctrd.cri();
    let host = [
        ("hostNetwork", "namespace_options.network = NODE"),
        ("hostPID", "namespace_options.pid = NODE"),
        ("hostIPC", "namespace_options.ipc = NODE"),
    ];
    for (field, cri_field) in host {
        let mut config = pod_config(ctrd, "host-pod", &[], api::NamespaceMode::Container);
        let ns = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
            .expect("namespace options");
        match field {
            "hostNetwork" => ns.network = api::NamespaceMode::Node as i32,
            "hostPID" => ns.pid = api::NamespaceMode::Node as i32,
            _ => ns.ipc = api::NamespaceMode::Node as i32,
        }
        refused(ctrd, &cri, &config, &[field, cri_field, "VM pod"]);
    }
    for (sysctl, why) in [
        ("vm.swappiness", "is not namespaced"),
        ("fs.mqueue.no_such_parameter", "unknown sysctl"),
    ] {
        let config = pod_config(
            ctrd,
            "sysctl-pod",
            &[(sysctl, "1")],
            api::NamespaceMode::Container,
        );
        refused(ctrd, &cri, &config, &[sysctl, why]);
    }
}

/// Runs `cmd` (bounded); panics naming it when it fails.
fn run_ok(cmd: &[&str]) {
    let out = bounded(cmd[0], QUICK_LIMIT)
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A host directory on a shared mount (containerd checks that before it accepts a
/// Bidirectional mount); unmounted when dropped.
struct SharedMount(std::path::PathBuf);

impl Drop for SharedMount {
    fn drop(&mut self) {
        let _ = bounded("umount", QUICK_LIMIT)
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A container whose volume asks for Bidirectional propagation (mounts made in it reaching
/// the host) is refused when it starts (CRI creates the task then), naming the mount and the
/// mode; the pod lives on.
fn bidirectional_mount_is_refused(ctrd: &Containerd) {
    let cri = ctrd.cri();
    let src = ctrd.dir().join(unique_id("shared-src"));
    std::fs::create_dir_all(&src).expect("creating the volume's host directory");
    let shown = src.to_string_lossy().to_string();
    run_ok(&["mount", "-t", "tmpfs", "tmpfs", &shown]);
    let _mounted = SharedMount(src.clone());
    run_ok(&["mount", "--make-shared", &shown]);

    let config = pod_config(ctrd, "prop-pod", &[], api::NamespaceMode::Container);
    let pod = run_kata_pod(ctrd, &cri, config);
    let mut c = cri::container_config("bidi", &["sleep", "1000"]);
    c.mounts = vec![api::Mount {
        container_path: "/shared".into(),
        host_path: shown.clone(),
        propagation: api::MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    // CRI's CreateContainer only records the container: the runtime sees it at start.
    let id = cri
        .create_container(&pod.id, &c, &pod.config)
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_tail(40)));
    let err = match cri.start_container(&id) {
        Ok(()) => panic!("a Bidirectional mount was accepted (container {id})"),
        Err(e) => format!("{e:#}"),
    };
    cri.remove_container(&id).expect("RemoveContainer");
    println!("refused as expected: {err}");
    for want in ["/shared", "rshared", "Bidirectional"] {
        assert!(
            err.contains(want),
            "the error does not name {want:?}: {err}"
        );
    }
    // The pod still serves containers.
    let ok = sleeper(ctrd, &cri, &pod, "plain", "1003");
    assert_eq!(pid1(&cri, &ok), "sleep 1003");
    remove(ctrd, &cri, pod);
}

#[test]
fn containerd1_bidirectional_mount_is_refused_by_name() {
    bidirectional_mount_is_refused(&Containerd::start_cri("cri"));
}

#[test]
fn containerd2_bidirectional_mount_is_refused_by_name() {
    bidirectional_mount_is_refused(&Containerd::start_cri_v2("cri2"));
}

#[test]
fn containerd1_pod_containers_share_ipc_uts_and_sysctls() {
    pod_shares_ipc_and_uts(&Containerd::start_cri("cri"));
}

#[test]
fn containerd1_shared_pid_namespace_has_the_pause_as_pid_1() {
    pod_shares_pid(&Containerd::start_cri("cri"));
}

#[test]
fn containerd1_host_only_pods_are_refused_by_name() {
    host_only_pods_are_refused(&Containerd::start_cri("cri"));
}

#[test]
fn containerd2_pod_containers_share_ipc_uts_and_sysctls() {
    pod_shares_ipc_and_uts(&Containerd::start_cri_v2("cri2"));
}

#[test]
fn containerd2_shared_pid_namespace_has_the_pause_as_pid_1() {
    pod_shares_pid(&Containerd::start_cri_v2("cri2"));
}

#[test]
fn containerd2_host_only_pods_are_refused_by_name() {
    host_only_pods_are_refused(&Containerd::start_cri_v2("cri2"));
}
