//! Kubernetes' path: CRI pods on the private containerd 1.6 and 2.x with the CRI plugin, CNI (Debian's bridge, host-local, portmap, loopback) and the local pause image; a RuntimeClass pod and an untrusted-annotated pod each in one VM, a plain pod on runc in none.

use kata_e2e::cri::{self, api, Cri, KATA_HANDLER, UNTRUSTED_WORKLOAD};
use kata_e2e::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The RuntimeClass handler mapped to the shim (scripts/containerd.sh).
const CLEAN_TIMEOUT: Duration = Duration::from_secs(15);
const LOG_TIMEOUT: Duration = Duration::from_secs(10);
/// ExecSync's own limit, in seconds (CRI's unit).
const EXEC_TIMEOUT_SECS: i64 = 30;
/// StopContainer's grace before SIGKILL (`sleep` as PID 1 ignores SIGTERM), in seconds.
const STOP_GRACE_SECS: i64 = 1;
/// The kernel's id of this boot: a container in a VM reads its guest's, a runc one the host's.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// How a pod reaches its runtime.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Route {
    /// `runtime_handler: kata`, as a RuntimeClass gives it.
    RuntimeClass,
    /// No handler, the `io.kubernetes.cri.untrusted-workload: "true"` annotation.
    Untrusted,
    /// Neither: containerd's default runtime, runc.
    Plain,
}

impl Route {
    /// The RunPodSandbox handler and pod annotations of this route.
    fn request(self) -> (&'static str, &'static [(&'static str, &'static str)]) {
        match self {
            Route::RuntimeClass => (KATA_HANDLER, &[]),
            Route::Untrusted => ("", &[(UNTRUSTED_WORKLOAD, "true")]),
            Route::Plain => ("", &[]),
        }
    }

    /// The runtime containerd must have chosen, and how many VMs the pod must have.
    fn expected(self) -> (&'static str, usize) {
        match self {
            Route::RuntimeClass | Route::Untrusted => (RUNTIME, 1),
            Route::Plain => (RUNC, 0),
        }
    }
}

/// containerd's default runtime in scripts/containerd.sh.
const RUNC: &str = "io.containerd.runc.v2";
/// Where CNI's host-local plugin keeps its leases (its default `dataDir`), one file per IP.
const HOST_LOCAL_LEASES: &str = "/var/lib/cni/networks";

/// One pod under test: its config, id, log directory, IP and network namespace; stopped and
/// removed when dropped (see [`Cri::guard`]).
struct Pod<'a> {
    config: api::PodSandboxConfig,
    id: String,
    log_dir: PathBuf,
    ip: String,
    netns: String,
    _guard: cri::PodGuard<'a>,
}

/// Runs a pod on `route` and checks it: as many VMs as the route gives (one or none), the
/// runtime containerd chose, READY, an IP from the CNI network, a network namespace.
fn run_pod<'a>(ctrd: &Containerd, cri: &'a Cri, name: &str, route: Route) -> Pod<'a> {
    let log_dir = ctrd.dir().join("pods").join(unique_id(name));
    std::fs::create_dir_all(&log_dir).expect("creating the pod log directory");
    let (handler, annotations) = route.request();
    let config = cri::pod_config(name, &log_dir, annotations);
    let started = Instant::now();
    let id = cri.run_pod(&config, handler).unwrap_or_else(|e| {
        panic!(
            "{route:?} pod: {e:#}\ncontainerd log:\n{}",
            ctrd.log_tail(40)
        )
    });
    println!("{route:?} pod {id} ready in {:?}", started.elapsed());
    // From here on a failed check still removes the pod.
    let guard = cri.guard(&id);
    let (runtime, vms) = route.expected();
    assert_eq!(
        sandbox_vms(&id).len(),
        vms,
        "{route:?} pod: QEMU processes naming {}",
        sandbox_dir(&id)
    );
    let status = cri.pod_status(&id).expect("PodSandboxStatus");
    let info: serde_json::Value = status
        .info
        .get("info")
        .and_then(|i| serde_json::from_str(i).ok())
        .unwrap_or_default();
    assert_eq!(info["runtimeType"], runtime, "{route:?} pod: the runtime");
    let sandbox = status.status.as_ref().expect("a pod status");
    assert_eq!(sandbox.state, api::PodSandboxState::SandboxReady as i32);
    let ip = sandbox
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default();
    let subnet = shell_var("CRI_SUBNET").expect("CRI_SUBNET in lib.sh");
    let prefix = subnet.rsplit_once('.').map_or(subnet.as_str(), |(p, _)| p);
    assert!(
        ip.starts_with(&format!("{prefix}.")),
        "{route:?} pod IP {ip:?} is not from the CNI network {subnet}"
    );
    let netns = info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["type"] == "network"))
        .and_then(|n| n["path"].as_str())
        .unwrap_or_else(|| panic!("no network namespace path in the pod's spec: {info}"))
        .to_string();
    println!("{route:?} pod: IP {ip}, netns {netns}");
    Pod {
        config,
        id,
        log_dir,
        ip,
        netns,
        _guard: guard,
    }
}

/// Creates and starts a container in `pod`; returns its id.
fn start_container(
    ctrd: &Containerd,
    cri: &Cri,
    pod: &Pod,
    config: &api::ContainerConfig,
) -> String {
    let id = cri
        .create_container(&pod.id, config, &pod.config)
        .and_then(|id| cri.start_container(&id).map(|()| id))
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_tail(40)));
    let state = cri.container_status(&id).expect("ContainerStatus").state;
    assert_eq!(state, api::ContainerState::ContainerRunning as i32);
    id
}

/// ExecSync that must exit 0; returns its stdout.
fn exec_ok(cri: &Cri, id: &str, cmd: &[&str]) -> String {
    let out = cri.exec_sync(id, cmd, EXEC_TIMEOUT_SECS).expect("ExecSync");
    assert_eq!(
        out.exit_code,
        0,
        "{cmd:?} in {id}: stdout {:?} stderr {:?}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn host_boot_id() -> String {
    std::fs::read_to_string(BOOT_ID).expect("reading the host's boot_id")
}

/// Stops and removes the containers and the pod the way kubelet does, then checks nothing is
/// left: no VM, shim, helper, mount or directory of the pod or its containers, its network
/// namespace unmounted, its IP lease given back.
fn remove_pod(ctrd: &Containerd, cri: &Cri, pod: Pod, containers: &[String]) {
    for c in containers {
        cri.stop_container(c, STOP_GRACE_SECS)
            .expect("StopContainer");
        cri.remove_container(c).expect("RemoveContainer");
    }
    cri.stop_pod(&pod.id).expect("StopPodSandbox");
    cri.remove_pod(&pod.id).expect("RemovePodSandbox");
    for id in std::iter::once(&pod.id).chain(containers) {
        let left = wait_clean(id, CLEAN_TIMEOUT);
        assert!(
            left.is_empty(),
            "{id} left things behind: {left:#?}\ncontainerd log:\n{}",
            ctrd.log_tail(30)
        );
    }
    assert!(
        sandbox_vms(&pod.id).is_empty(),
        "a VM of {} is still running",
        pod.id
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(
        !mounts.contains(&pod.netns) && !Path::new(&pod.netns).exists(),
        "the pod's network namespace {} is still there",
        pod.netns
    );
    let network = shell_var("CRI_NETWORK").expect("CRI_NETWORK in lib.sh");
    let lease = Path::new(HOST_LOCAL_LEASES).join(network).join(&pod.ip);
    assert!(
        !lease.exists(),
        "the pod's IP lease {} is still held",
        lease.display()
    );
    let _ = std::fs::remove_dir_all(&pod.log_dir);
}

/// Waits (bounded) until the CRI log file holds a line for each `(stream, text)`, in
/// CRI's format (`<time> <stream> F <text>`); returns the file's content.
fn wait_log(path: &Path, want: &[(&str, &str)]) -> String {
    let deadline = Instant::now() + LOG_TIMEOUT;
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        let has = |(stream, line): &(&str, &str)| {
            log.lines().any(|l| {
                l.split_once(' ').map(|(_, rest)| rest) == Some(&format!("{stream} F {line}"))
            })
        };
        if want.iter().all(has) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{} lacks {want:?} after {LOG_TIMEOUT:?}: {log:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A RuntimeClass pod: one VM for the pod, two containers in it; exec, logs, stats; nothing
/// left after Stop/RemovePodSandbox.
fn runtime_class_pod(ctrd: &Containerd) {
    let cri = ctrd.cri();
    let pod = run_pod(ctrd, &cri, "kata-pod", Route::RuntimeClass);

    let app = cri::container_config(
        "app",
        &[
            "sh",
            "-c",
            "echo hello-log; echo err-log >&2; exec sleep 1000",
        ],
    );
    let app_id = start_container(ctrd, &cri, &pod, &app);
    let side_id = start_container(
        ctrd,
        &cri,
        &pod,
        &cri::container_config("side", &["sleep", "1000"]),
    );
    assert_eq!(
        sandbox_vms(&pod.id).len(),
        1,
        "the pod's two containers share its one VM"
    );
    for c in [&app_id, &side_id] {
        assert!(
            sandbox_vms(c).is_empty(),
            "container {c} got a VM of its own"
        );
    }
    let app_boot = exec_ok(&cri, &app_id, &["cat", BOOT_ID]);
    let side_boot = exec_ok(&cri, &side_id, &["cat", BOOT_ID]);
    assert_eq!(
        app_boot, side_boot,
        "both containers run on one (guest) kernel"
    );
    assert_ne!(
        app_boot,
        host_boot_id(),
        "the container runs on the host's kernel, not in a VM"
    );

    // ExecSync returns both streams and the exit code.
    let out = cri
        .exec_sync(
            &app_id,
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            EXEC_TIMEOUT_SECS,
        )
        .expect("ExecSync");
    assert_eq!(
        (text(&out.stdout), text(&out.stderr), out.exit_code),
        ("out\n".to_string(), "err\n".to_string(), 3)
    );

    // The log file CRI writes from the container's stdout and stderr.
    let log = cri::log_path(&pod.config, &app);
    wait_log(&log, &[("stdout", "hello-log"), ("stderr", "err-log")]);

    // Stats come from the guest's cgroup of the container.
    let stats = cri.container_stats(&app_id).expect("ContainerStats");
    println!("ContainerStats: {stats:?}");
    assert_eq!(
        stats.attributes.as_ref().map(|a| a.id.as_str()),
        Some(app_id.as_str())
    );
    let memory = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map(|v| v.value);
    assert!(
        matches!(memory, Some(m) if m > 0),
        "memory working set: {memory:?}"
    );
    let cpu = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map(|v| v.value);
    assert!(matches!(cpu, Some(c) if c > 0), "CPU usage: {cpu:?}");

    remove_pod(ctrd, &cri, pod, &[app_id, side_id]);
}

/// An untrusted-annotated pod without a handler: containerd routes it to the `untrusted`
/// handler, one VM.
fn untrusted_pod(ctrd: &Containerd) {
    let cri = ctrd.cri();
    let pod = run_pod(ctrd, &cri, "untrusted-pod", Route::Untrusted);
    let id = start_container(
        ctrd,
        &cri,
        &pod,
        &cri::container_config("app", &["sleep", "1000"]),
    );
    assert_eq!(sandbox_vms(&pod.id).len(), 1, "the pod still has one VM");
    let boot = exec_ok(&cri, &id, &["cat", BOOT_ID]);
    assert_ne!(
        boot,
        host_boot_id(),
        "the untrusted container runs on the host's kernel"
    );
    remove_pod(ctrd, &cri, pod, &[id]);
}

/// A pod with neither: runc, no VM, the host's kernel.
fn plain_pod(ctrd: &Containerd) {
    let cri = ctrd.cri();
    let pod = run_pod(ctrd, &cri, "runc-pod", Route::Plain);
    let id = start_container(
        ctrd,
        &cri,
        &pod,
        &cri::container_config("app", &["sleep", "1000"]),
    );
    assert!(sandbox_vms(&pod.id).is_empty(), "a runc pod got a VM");
    assert!(
        pids_matching(&["containerd-shim-kata-v2", &pod.id]).is_empty(),
        "the shim serves a runc pod"
    );
    assert!(
        !Path::new(&sandbox_dir(&pod.id)).exists(),
        "the shim made a sandbox directory for a runc pod"
    );
    let boot = exec_ok(&cri, &id, &["cat", BOOT_ID]);
    assert_eq!(
        boot,
        host_boot_id(),
        "a runc container runs on the host's kernel"
    );
    remove_pod(ctrd, &cri, pod, &[id]);
}

#[test]
fn containerd1_runtime_class_pod_is_one_vm() {
    runtime_class_pod(&Containerd::start_cri("cri"));
}

#[test]
fn containerd1_untrusted_pod_is_one_vm() {
    untrusted_pod(&Containerd::start_cri("cri"));
}

#[test]
fn containerd1_plain_pod_runs_on_runc() {
    plain_pod(&Containerd::start_cri("cri"));
}

#[test]
fn containerd2_runtime_class_pod_is_one_vm() {
    runtime_class_pod(&Containerd::start_cri_v2("cri2"));
}

#[test]
fn containerd2_untrusted_pod_is_one_vm() {
    untrusted_pod(&Containerd::start_cri_v2("cri2"));
}

#[test]
fn containerd2_plain_pod_runs_on_runc() {
    plain_pod(&Containerd::start_cri_v2("cri2"));
}
