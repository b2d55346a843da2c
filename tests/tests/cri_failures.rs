//! RunPodSandbox failures through CRI, on containerd 1.6 and 2.x: a pod whose CNI setup fails
//! (the last plugin of its chain fails) and a kata pod whose VM cannot start (QEMU cannot load
//! the configured kernel) each fail with an error naming the cause, and leave nothing behind:
//! no shim, VM, helper, mount or sandbox directory, no network namespace, no IP lease.

use kata_e2e::cri::{self, Cri, KATA_HANDLER};
use kata_e2e::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CLEAN_TIMEOUT: Duration = Duration::from_secs(15);
/// Where CNI's host-local plugin keeps its leases (its default `dataDir`), one file per IP
/// holding the id of the sandbox it was given to.
const HOST_LOCAL_LEASES: &str = "/var/lib/cni/networks";
/// A sysctl no kernel has: CNI's `tuning` plugin, ending the chain (after bridge and
/// host-local set up the pod's veth and IP), fails its ADD on it; its DEL succeeds, so CNI's
/// clean-up reaches host-local and gives the IP back.
const MISSING_SYSCTL: &str = "net.ipv4.conf.eth0.kata_rs_no_such_sysctl";

/// Network namespaces this containerd holds (it keeps their mounts under its state dir).
fn netns_mounts(ctrd: &Containerd) -> Vec<String> {
    let state = ctrd.dir().join("state");
    let state = state.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&*state) && l.contains("netns"))
        .map(str::to_string)
        .collect()
}

/// Lease files of the CRI network that name `id`.
fn leases_of(id: &str) -> Vec<PathBuf> {
    let network = shell_var("CRI_NETWORK").expect("CRI_NETWORK in lib.sh");
    let dir = Path::new(HOST_LOCAL_LEASES).join(network);
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    std::fs::read_to_string(p)
                        .map(|c| c.contains(id))
                        .unwrap_or(false)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// RunPodSandbox of a kata pod fails with an error containing each of `want`; nothing of the
/// sandbox is left, containerd does not list it, and it holds no new network namespace.
fn run_pod_fails(ctrd: &Containerd, cri: &Cri, name: &str, want: &[&str]) {
    let log_dir = ctrd.dir().join("pods").join(unique_id(name));
    std::fs::create_dir_all(&log_dir).expect("pod log dir");
    let config = cri::pod_config(name, &log_dir, &[]);
    // This containerd's directory outlives a run: compare with what was there before.
    let netns_before = netns_mounts(ctrd);
    let err = cri.run_pod_error(&config, KATA_HANDLER);
    println!("{name} failed as expected: {err}");
    for w in want {
        assert!(err.contains(w), "the error does not name {w:?}: {err}");
    }
    let ids = cri::ids_in(&err);
    assert!(!ids.is_empty(), "the error names no sandbox id: {err}");
    for id in &ids {
        let left = wait_clean(id, CLEAN_TIMEOUT);
        assert!(
            left.is_empty(),
            "failed sandbox {id} left things behind: {left:#?}\ncontainerd log:\n{}",
            ctrd.log_tail(40)
        );
        let leases = leases_of(id);
        assert!(leases.is_empty(), "{id} still holds IP leases {leases:?}");
    }
    let netns: Vec<String> = netns_mounts(ctrd)
        .into_iter()
        .filter(|m| !netns_before.contains(m))
        .collect();
    assert!(
        netns.is_empty(),
        "network namespaces left after the failed RunPodSandbox: {netns:#?}"
    );
    let listed = cri.list_pods().expect("ListPodSandbox");
    assert!(
        ids.iter().all(|id| !listed.contains(id)),
        "containerd still lists the failed pod: {listed:?}"
    );
    let _ = std::fs::remove_dir_all(&log_dir);
}

/// CNI's chain fails at its last plugin, after bridge and host-local set up the pod's veth and
/// IP: the error names the cause, and nothing is left: no lease, no namespace, no VM or shim.
fn cni_setup_fails(name: &str, v2: bool) {
    let plugin =
        format!("{{ \"type\": \"tuning\", \"sysctl\": {{ \"{MISSING_SYSCTL}\": \"1\" }} }}");
    let ctrd = Containerd::start_cri_env(name, v2, &[("CRI_CNI_EXTRA_PLUGIN", &plugin)]);
    let cri = ctrd.cri();
    run_pod_fails(
        &ctrd,
        &cri,
        "cni-fails",
        &["tuning", "kata_rs_no_such_sysctl"],
    );
}

/// The handler's configuration names a kernel QEMU cannot load: the error says QEMU exited and
/// what it printed, and the VM, its helpers, the shim and CNI's setup are all gone.
fn vm_cannot_start(name: &str, v2: bool) {
    let junk = top_dir().join("build/e2e/junk-vmlinux");
    std::fs::create_dir_all(junk.parent().expect("has parent")).expect("mkdir build/e2e");
    std::fs::write(&junk, b"not a kernel\n".repeat(64)).expect("writing the junk kernel");
    let config = config_variant(
        &format!("{name}-junk-kernel"),
        "kernel",
        &format!("\"{}\"", junk.display()),
    );
    let config = config.to_string_lossy().to_string();
    let ctrd = Containerd::start_cri_env(name, v2, &[("KATA_CONF_FILE", &config)]);
    let cri = ctrd.cri();
    run_pod_fails(&ctrd, &cri, "vm-fails", &["qemu", "junk-vmlinux"]);
}

#[test]
fn containerd1_cni_failure_fails_run_pod_sandbox_and_leaves_nothing() {
    cni_setup_fails("cri-cni-fails", false);
}

#[test]
fn containerd2_cni_failure_fails_run_pod_sandbox_and_leaves_nothing() {
    cni_setup_fails("cri2-cni-fails", true);
}

#[test]
fn containerd1_vm_that_cannot_start_fails_run_pod_sandbox_and_leaves_nothing() {
    vm_cannot_start("cri-vm-fails", false);
}

#[test]
fn containerd2_vm_that_cannot_start_fails_run_pod_sandbox_and_leaves_nothing() {
    vm_cannot_start("cri2-vm-fails", true);
}
