//! Pod resources through CRI (containerd 1.6 and 2.x, cgroupfs driver): a kata pod whose
//! PodSandboxConfig sets `linux.resources` (containerd then passes the sandbox-cpu/-memory
//! annotations) and a `cgroup_parent` in cgroupfs form gets a VM of the base size plus the
//! pod's limits (the guest's MemTotal and CPUs, read inside a container), its QEMU,
//! virtiofsd and vhost-device-vsock run in the cgroup the sandbox spec names (read from
//! `/proc/<pid>/cgroup`), and after RemovePodSandbox that cgroup is gone from every hierarchy.
//! A pod cgroup whose memory limit cannot hold the VM is refused before boot, naming the
//! shortfall in MiB; a systemd-driver `cgroupsPath` on this host (no systemd) is refused
//! naming the driver mismatch; a VM the host's OOM killer takes is reported OOM-killed. The
//! shim stays out of the pod's cgroup, unless `sandbox_cgroup_only = true` puts it in.

use kata_e2e::cri::{self, api, KATA_HANDLER};
use kata_e2e::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const EXEC_TIMEOUT_SECS: i64 = 30;
const CLEAN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long filling the guest's RAM may take under TCG before the host's OOM killer strikes.
const OOM_TIMEOUT: Duration = Duration::from_secs(120);
/// The memory limit put on the running VM's cgroup: below its guest RAM.
const HOG_LIMIT_MIB: u64 = 300;
/// The pod's memory limit and CPU limit (1.5 CPUs: the VM gets 2 more vCPUs, up to the host's).
const POD_MEMORY_MIB: u64 = 256;
const CPU_QUOTA: i64 = 150_000;
const CPU_PERIOD: i64 = 100_000;
/// The host's cgroup v1 mounts (this project's CI hosts) or the v2 root.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The VM's host processes, as `leftovers` names them.
const VM_PROCESSES: [&str; 3] = ["qemu-system", "virtiofsd", "vhost-device-vsock"];

/// A configuration value of the build's runtime configuration (`key = value` at a line start).
fn config_value(key: &str) -> u64 {
    let path = top_dir().join("build/configuration-qemu.toml");
    let text = std::fs::read_to_string(&path).expect("build/configuration-qemu.toml");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} not set in {}", path.display()))
}

/// The pod config of [`cri::pod_config`] logging under this containerd, and its pod uid.
fn pod_config(ctrd: &Containerd, name: &str) -> (api::PodSandboxConfig, String) {
    let log_dir = ctrd.dir().join("pods").join(unique_id(name));
    std::fs::create_dir_all(&log_dir).expect("pod log dir");
    let config = cri::pod_config(name, &log_dir, &[]);
    let uid = config
        .metadata
        .as_ref()
        .map(|m| m.uid.clone())
        .unwrap_or_default();
    (config, uid)
}

/// Every cgroup directory named `rel` under the mounted hierarchies.
fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let rel = rel.trim_start_matches('/');
    let mut dirs = Vec::new();
    if let Ok(entries) = std::fs::read_dir(CGROUP_ROOT) {
        for e in entries.flatten() {
            let d = e.path().join(rel);
            if d.is_dir() {
                dirs.push(d);
            }
        }
    }
    let unified = Path::new(CGROUP_ROOT).join(rel);
    if unified.is_dir() && !dirs.contains(&unified) {
        dirs.push(unified);
    }
    dirs
}

/// Why `pid` is not in cgroup `cgroup` in every hierarchy, if it is not.
fn not_in_cgroup(pid: i32, cgroup: &str) -> Option<String> {
    let cgroups =
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("reading /proc/<pid>/cgroup");
    for line in cgroups.lines() {
        // hierarchy-id:controllers:path; v1's named and empty hierarchies included.
        let path = line.splitn(3, ':').nth(2).unwrap_or_default();
        let controllers = line.split(':').nth(1).unwrap_or_default();
        if controllers.is_empty() && !Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
            continue; // the empty v2 mount of a v1 host
        }
        if path != cgroup {
            return Some(format!("{pid} is in {path} for {controllers:?}: {cgroups}"));
        }
    }
    None
}

/// The shim serving sandbox `pod` (its long-running process, not `start`).
fn shim_pid(pod: &str) -> i32 {
    let pids = pids_matching(&["containerd-shim-kata-v2", pod, "-address"]);
    assert_eq!(pids.len(), 1, "one shim for {pod}: {pids:?}");
    pids[0]
}

/// `config` with kubelet's cgroupfs layout (a parent per pod under the QoS class) and the
/// pod's limits; returns the parent's top level and the parent.
fn with_pod_resources(config: &mut api::PodSandboxConfig, uid: &str) -> (String, String) {
    let parent_top = format!("kata-rs-e2e-{}", std::process::id());
    let parent = format!("/{parent_top}/burstable/pod{uid}");
    let linux = config.linux.get_or_insert_with(Default::default);
    linux.cgroup_parent = parent.clone();
    linux.resources = Some(api::LinuxContainerResources {
        memory_limit_in_bytes: (POD_MEMORY_MIB * 1024 * 1024) as i64,
        cpu_quota: CPU_QUOTA,
        cpu_period: CPU_PERIOD,
        cpu_shares: 1536,
        ..Default::default()
    });
    (parent_top, parent)
}

/// A kata pod named `name` with [`with_pod_resources`]: its config, id, parent's top level
/// and the sandbox's cgroup.
fn run_pod_with_resources(
    ctrd: &Containerd,
    cri: &cri::Cri,
    name: &str,
) -> (api::PodSandboxConfig, String, String, String) {
    let (mut config, uid) = pod_config(ctrd, name);
    let (parent_top, parent) = with_pod_resources(&mut config, &uid);
    let pod = cri
        .run_pod(&config, KATA_HANDLER)
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_tail(40)));
    let sandbox_cgroup = format!("{parent}/{pod}");
    (config, pod, parent_top, sandbox_cgroup)
}

fn pod_resources(ctrd: &Containerd) {
    let cri = ctrd.cri();
    let (config, pod, parent_top, sandbox_cgroup) = run_pod_with_resources(ctrd, &cri, "sized");
    let guard = cri.guard(&pod);

    // Every host process of the VM is in the sandbox's cgroup, in each hierarchy.
    let dir = format!("{}/", sandbox_dir(&pod));
    for name in VM_PROCESSES {
        // virtiofsd forks helpers of its own: every process of that name is checked.
        let pids = pids_matching(&[name, &dir]);
        assert!(!pids.is_empty(), "no {name} of {pod}");
        for pid in pids {
            if let Some(why) = not_in_cgroup(pid, &sandbox_cgroup) {
                panic!("{name} is not in the pod's cgroup: {why}");
            }
        }
    }
    // The shim is not (sandbox_cgroup_only = false): it answers containerd, not the pod.
    assert!(
        not_in_cgroup(shim_pid(&pod), &sandbox_cgroup).is_some(),
        "the shim joined the pod's cgroup without sandbox_cgroup_only"
    );
    assert!(
        !cgroup_dirs(&sandbox_cgroup).is_empty(),
        "no cgroup directory {sandbox_cgroup}"
    );

    // The VM: the configured base plus the pod's limits.
    let c = cri::container_config("probe", &["sleep", "1000"]);
    let probe = cri
        .create_container(&pod, &c, &config)
        .and_then(|id| cri.start_container(&id).map(|()| id))
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_tail(40)));
    let base_mib = config_value("default_memory");
    let mem_total_kib: u64 = cri
        .sh(
            &probe,
            "awk '/^MemTotal/ {print $2}' /proc/meminfo",
            EXEC_TIMEOUT_SECS,
        )
        .parse()
        .expect("MemTotal");
    let mem_total_mib = mem_total_kib / 1024;
    let want = base_mib + POD_MEMORY_MIB;
    println!("guest MemTotal {mem_total_mib} MiB; base {base_mib} + pod {POD_MEMORY_MIB} MiB");
    // MemTotal is RAM less what the kernel keeps for itself (a few tens of MiB here).
    assert!(
        mem_total_mib > base_mib && mem_total_mib <= want && mem_total_mib + 96 >= want,
        "guest MemTotal {mem_total_mib} MiB is not about base {base_mib} + pod {POD_MEMORY_MIB} MiB"
    );
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let extra = (CPU_QUOTA as u64).div_ceil(CPU_PERIOD as u64);
    let want_cpus = (config_value("default_vcpus") + extra).min(host_cpus);
    let cpus: u64 = cri
        .sh(
            &probe,
            "grep -c ^processor /proc/cpuinfo",
            EXEC_TIMEOUT_SECS,
        )
        .parse()
        .expect("cpu count");
    assert_eq!(
        cpus, want_cpus,
        "guest CPUs (base + ceil(quota/period), at most the host's)"
    );

    cri.stop_container(&probe, 1).expect("StopContainer");
    cri.remove_container(&probe).expect("RemoveContainer");
    guard.remove_leaving_nothing(CLEAN_TIMEOUT);
    let dirs = cgroup_dirs(&sandbox_cgroup);
    assert!(
        dirs.is_empty(),
        "the sandbox's cgroup is still there: {dirs:?}"
    );
    // The parents stand in for kubelet's; the shim made them and took them back.
    let dirs = cgroup_dirs(&parent_top);
    assert!(
        dirs.is_empty(),
        "the pod's parent cgroups are still there: {dirs:?}"
    );
}

/// Under `sandbox_cgroup_only = true` the shim is in the pod's cgroup too, next to its VM,
/// and the cgroup is still removed with the pod.
fn shim_joins_under_sandbox_cgroup_only(ctrd: &Containerd) {
    let cri = ctrd.cri();
    let (_, pod, parent_top, sandbox_cgroup) = run_pod_with_resources(ctrd, &cri, "cgroup-only");
    let guard = cri.guard(&pod);
    if let Some(why) = not_in_cgroup(shim_pid(&pod), &sandbox_cgroup) {
        panic!("the shim is not in the pod's cgroup: {why}");
    }
    let qemu = pids_matching(&["qemu-system", &format!("{}/", sandbox_dir(&pod))]);
    assert_eq!(qemu.len(), 1, "one QEMU of {pod}");
    assert_eq!(not_in_cgroup(qemu[0], &sandbox_cgroup), None);
    guard.remove_leaving_nothing(CLEAN_TIMEOUT);
    let dirs = cgroup_dirs(&parent_top);
    assert!(dirs.is_empty(), "cgroups left after the pod: {dirs:?}");
}

/// A pod cgroup made (as kubelet would) with a memory limit, removed when dropped.
struct LimitedParent {
    top: PathBuf,
    dir: PathBuf,
}

impl LimitedParent {
    /// `/<top>/pod<uid>` in the memory hierarchy (v1) or the unified one (v2), limited to
    /// `mib`.
    fn new(top: &str, uid: &str, mib: u64) -> Self {
        let unified = Path::new(CGROUP_ROOT).join("cgroup.controllers").exists();
        let (base, file) = if unified {
            (PathBuf::from(CGROUP_ROOT), "memory.max")
        } else {
            (
                Path::new(CGROUP_ROOT).join("memory"),
                "memory.limit_in_bytes",
            )
        };
        let dir = base.join(top).join(format!("pod{uid}"));
        std::fs::create_dir_all(&dir).expect("making the pod's parent cgroup");
        std::fs::write(dir.join(file), (mib * 1024 * 1024).to_string())
            .expect("limiting the pod's parent cgroup");
        LimitedParent {
            top: base.join(top),
            dir,
        }
    }
}

impl Drop for LimitedParent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
        let _ = std::fs::remove_dir(&self.top);
    }
}

/// A pod cgroup whose memory limit cannot hold the VM fails RunPodSandbox before boot, with
/// the shortfall in MiB, and leaves nothing.
fn pod_cgroup_too_small(ctrd: &Containerd) {
    let cri = ctrd.cri();
    let (mut config, uid) = pod_config(ctrd, "small");
    let top = format!("kata-rs-e2e-small-{}", std::process::id());
    // Less than the guest's base RAM alone.
    let limit_mib = config_value("default_memory") / 2;
    let parent = LimitedParent::new(&top, &uid, limit_mib);
    config
        .linux
        .get_or_insert_with(Default::default)
        .cgroup_parent = format!("/{top}/pod{uid}");
    let err = cri.run_pod_error(&config, KATA_HANDLER);
    println!("refused as expected: {err}");
    for want in [
        format!("cgroup memory limit ({limit_mib} MiB)"),
        "MiB short".to_string(),
        "overhead".to_string(),
    ] {
        assert!(
            err.contains(&want),
            "the error does not say {want:?}: {err}"
        );
    }
    let ids = cri::ids_in(&err);
    assert!(!ids.is_empty(), "the error names no sandbox id: {err}");
    for id in ids {
        let left = wait_clean(&id, CLEAN_TIMEOUT);
        assert!(left.is_empty(), "{id} left things behind: {left:#?}");
        let rel = format!("{top}/pod{uid}/{id}");
        let dirs = cgroup_dirs(&rel);
        assert!(
            dirs.is_empty(),
            "the refused sandbox's cgroup is left: {dirs:?}"
        );
    }
    drop(parent);
}

/// A pod whose `cgroup_parent` is a systemd slice (kubelet's systemd driver) on this host,
/// whose PID 1 is not systemd, fails RunPodSandbox naming the driver mismatch, and leaves
/// nothing: no VM is placed in a cgroup other than the one kubelet accounts.
fn systemd_driver_is_refused_by_name(ctrd: &Containerd) {
    let cri = ctrd.cri();
    let (mut config, _) = pod_config(ctrd, "slice");
    config
        .linux
        .get_or_insert_with(Default::default)
        .cgroup_parent = "kubepods-burstable-podkatars.slice".to_string();
    let err = cri.run_pod_error(&config, KATA_HANDLER);
    println!("refused as expected: {err}");
    for want in [
        "kubepods-burstable-podkatars.slice:",
        "SystemdCgroup",
        "cgroupfs",
    ] {
        assert!(err.contains(want), "the error does not say {want:?}: {err}");
    }
    let ids = cri::ids_in(&err);
    assert!(!ids.is_empty(), "the error names no sandbox id: {err}");
    for id in ids {
        let left = wait_clean(&id, CLEAN_TIMEOUT);
        assert!(left.is_empty(), "{id} left things behind: {left:#?}");
    }
}

/// A VM whose cgroup cannot hold its guest RAM (its limit lowered under the running pod, as
/// a too-small overhead would leave it): a container that fills the guest's memory makes the
/// host's OOM killer take QEMU. The container is reported OOM-killed (CRI reason `OOMKilled`,
/// exit 137), not as a plain VM death (255), and the shim's log names the OOM killer.
fn host_oom_is_reported_as_oom(ctrd: &Containerd) {
    let cri = ctrd.cri();
    let (mut config, uid) = pod_config(ctrd, "hog");
    let vm_mib = config_value("default_memory");
    let top = format!("kata-rs-e2e-hog-{}", std::process::id());
    config
        .linux
        .get_or_insert_with(Default::default)
        .cgroup_parent = format!("/{top}/pod{uid}");
    let pod = cri
        .run_pod(&config, KATA_HANDLER)
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_tail(40)));
    let guard = cri.guard(&pod);
    // The sandbox's cgroup, in the memory hierarchy (v1) or the unified one (v2).
    let sandbox_cgroup = format!("{top}/pod{uid}/{pod}");
    let unified = Path::new(CGROUP_ROOT).join("cgroup.controllers").exists();
    let (dir, file) = if unified {
        (Path::new(CGROUP_ROOT).join(&sandbox_cgroup), "memory.max")
    } else {
        (
            Path::new(CGROUP_ROOT).join("memory").join(&sandbox_cgroup),
            "memory.limit_in_bytes",
        )
    };
    std::fs::write(dir.join(file), (HOG_LIMIT_MIB * 1024 * 1024).to_string())
        .unwrap_or_else(|e| panic!("limiting {}: {e}", dir.display()));
    // One buffer of most of the guest's RAM, held (dd blocks writing to a pipe nobody reads).
    let fill = format!(
        "sleep 1; dd if=/dev/zero bs={}M count=1 | sleep 1000",
        vm_mib - 120
    );
    let c = cri::container_config("hog", &["sh", "-c", &fill]);
    let hog = cri
        .create_container(&pod, &c, &config)
        .and_then(|id| cri.start_container(&id).map(|()| id))
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_tail(40)));
    let deadline = std::time::Instant::now() + OOM_TIMEOUT;
    let status = loop {
        let st = cri.container_status(&hog).expect("ContainerStatus");
        if st.state == api::ContainerState::ContainerExited as i32 {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the hog still runs {OOM_TIMEOUT:?} later: the host's OOM killer never struck\ncontainerd log:\n{}",
            ctrd.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    println!(
        "hog exited: code {}, reason {:?}",
        status.exit_code, status.reason
    );
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (137, "OOMKilled"),
        "a VM taken by the host's OOM killer is reported as OOM-killed\ncontainerd log:\n{}",
        ctrd.log_tail(30)
    );
    assert!(
        ctrd.log_tail(400).contains("OOM killer"),
        "the shim's log does not name the OOM killer"
    );
    let _ = cri.stop_pod(&pod);
    let _ = cri.remove_pod(&pod);
    drop(guard);
    let left = wait_clean(&pod, CLEAN_TIMEOUT);
    assert!(left.is_empty(), "{pod} left things behind: {left:#?}");
}

#[test]
fn containerd1_host_oom_of_the_vm_is_reported_as_oom_killed() {
    host_oom_is_reported_as_oom(&Containerd::start_cri("cri"));
}

#[test]
fn containerd1_systemd_cgroup_driver_is_refused_naming_the_mismatch() {
    systemd_driver_is_refused_by_name(&Containerd::start_cri("cri"));
}

#[test]
fn containerd1_pod_cgroup_too_small_for_the_vm_is_refused_with_the_shortfall() {
    pod_cgroup_too_small(&Containerd::start_cri("cri"));
}

#[test]
fn containerd1_pod_resources_size_the_vm_and_place_it_in_the_pod_cgroup() {
    pod_resources(&Containerd::start_cri("cri"));
}

#[test]
fn containerd1_sandbox_cgroup_only_puts_the_shim_in_the_pod_cgroup_too() {
    let config = config_variant("cgroup-only", "sandbox_cgroup_only", "true");
    let config = config.to_string_lossy();
    shim_joins_under_sandbox_cgroup_only(&Containerd::start_cri_env(
        "cri-cgroup-only",
        false,
        &[("KATA_CONF_FILE", &config)],
    ));
}

#[test]
fn containerd2_pod_resources_size_the_vm_and_place_it_in_the_pod_cgroup() {
    pod_resources(&Containerd::start_cri_v2("cri2"));
}
