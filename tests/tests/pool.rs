//! The VM pool end to end (real containerd, QEMU, guest, pool daemon): a configuration with
//! `[factory] vm_cache_number = 1` gets a daemon started by its first pod's `start`; the next
//! pod runs in the VM the daemon booted ahead (the guest was up before `ctr run` began), its
//! QEMU and helpers in the pod's cgroup at normal priority; the next pod gets another VM; the
//! daemon stopping leaves adopted pods running; and nothing of the pool is left after.
//! Through CRI with a CNI network, a pod runs in a VM booted ahead and its pod IP answers the
//! host: the tap the VM booted with moved into the pod's network namespace.

use std::path::Path;
use std::time::{Duration, Instant};

use kata_e2e::cri::{self, api, Cri, PodGuard, KATA_HANDLER};
use kata_e2e::*;

const STEP: Duration = Duration::from_secs(120);

fn kata_ctl(args: &[&str]) -> std::process::Output {
    let out = bounded(top_dir().join("target/release/kata-ctl"), STEP)
        .args(args)
        .output()
        .expect("kata-ctl");
    assert!(
        out.status.success(),
        "kata-ctl {args:?}: {}",
        text(&out.stderr)
    );
    out
}

/// The pool of `config` as `kata-ctl pool status` reports it.
fn pool_status(config: &Path) -> Option<serde_json::Value> {
    let out = kata_ctl(&["pool", "status"]);
    text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|p| p["config"].as_str() == Some(&config.to_string_lossy()))
}

/// Waits until `config`'s pool has a VM ready; returns the pids of its waiting shim and VM.
fn wait_pool_ready(config: &Path) -> Vec<i32> {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(p) = pool_status(config) {
            if p["ready"].as_u64() == Some(1) {
                return p["pids"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_i64())
                            .map(|v| v as i32)
                            .collect()
                    })
                    .unwrap_or_default();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no pooled VM ready for {} within {STEP:?}: {:?}",
            config.display(),
            pool_status(config)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cmdline(pid: i32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .replace('\0', " ")
}

/// The QEMU among `pids`.
fn qemu_of(pids: &[i32]) -> i32 {
    *pids
        .iter()
        .find(|p| cmdline(**p).contains("qemu-system"))
        .unwrap_or_else(|| panic!("no QEMU among the pooled pids {pids:?}"))
}

/// Field 19 of /proc/<pid>/stat: the nice value.
fn nice_of(pid: i32) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = stat.rsplit(')').next().expect("stat fields");
    after
        .split_whitespace()
        .nth(16)
        .expect("nice")
        .parse()
        .expect("number")
}

/// Guest uptime seen inside container `id`, in seconds.
fn guest_uptime(c: &Containerd, id: &str) -> f64 {
    let out = c.ctr(&["task", "exec", "--exec-id", "up", id, "cat", "/proc/uptime"]);
    assert!(out.status.success(), "exec in {id}: {}", text(&out.stderr));
    text(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("uptime")
}

/// Runs `id` detached under `config`, returning how long ago the run began when it runs and
/// the guest's uptime then.
fn run_timed(c: &Containerd, id: &str, config: &Path) -> (Duration, f64) {
    let began = Instant::now();
    c.run_detached_with_config(id, config, &["sleep", "600"]);
    let uptime = guest_uptime(c, id);
    (began.elapsed(), uptime)
}

/// Stops the pool daemon when dropped, so a failing test leaves no pooled VM waiting.
struct PoolGuard;

impl Drop for PoolGuard {
    fn drop(&mut self) {
        let _ = bounded(top_dir().join("target/release/kata-ctl"), STEP)
            .args(["pool", "stop"])
            .output();
    }
}

/// Processes and directories of pooled VMs: what must be gone once the daemon stopped.
fn pool_leftovers() -> Vec<String> {
    let root = sandbox_run_dir();
    let mut found: Vec<String> = pids_matching(&["containerd-shim-kata-v2", "pool"])
        .into_iter()
        .map(|p| format!("process {p}: {}", cmdline(p)))
        .collect();
    found.extend(
        pids_matching(&[&format!("{root}/pooled-")])
            .into_iter()
            .map(|p| format!("process {p}: {}", cmdline(p))),
    );
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("pooled-") {
                found.push(format!("{root}/{name}"));
            }
        }
    }
    found
}

#[test]
fn a_pod_runs_in_a_vm_booted_ahead_in_its_cgroup_and_the_pool_leaves_nothing() {
    // A daemon of an earlier run (or binary) would serve stale pools.
    kata_ctl(&["pool", "stop"]);
    let config = config_variant("pool", "vm_cache_number", "1");
    let c = Containerd::start("pool");
    let _pool = PoolGuard;

    // The first pod boots its own VM and starts the daemon, which boots one ahead.
    let first = unique_id("pool-cold");
    let _first = c.guard(&first);
    let (took, uptime) = run_timed(&c, &first, &config);
    assert!(
        uptime < took.as_secs_f64(),
        "the first pod's guest (up {uptime} s) must have booted for it ({took:?})"
    );
    let pooled = wait_pool_ready(&config);
    let pooled_qemu = qemu_of(&pooled);

    // The next pod runs in that VM: its guest was up before `ctr run` began.
    let warm = unique_id("pool-warm");
    let _warm = c.guard(&warm);
    let (took, uptime) = run_timed(&c, &warm, &config);
    assert!(
        uptime > took.as_secs_f64(),
        "pod {warm}'s guest is up {uptime} s, but its run began {took:?} ago: it booted cold\n{}",
        c.log_tail(30)
    );
    assert!(
        Path::new(&sandbox_dir(&warm)).is_dir(),
        "the pooled VM's directory carries the sandbox's name"
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{pooled_qemu}/cgroup")).expect("cgroup");
    assert!(
        cgroup.lines().any(|l| l.ends_with(&format!("/{warm}"))),
        "the pooled QEMU ({pooled_qemu}) is not in pod {warm}'s cgroup:\n{cgroup}"
    );
    for pid in &pooled {
        assert_eq!(
            nice_of(*pid),
            0,
            "pid {pid} ({}) kept the pool's low priority",
            cmdline(*pid)
        );
    }

    // Used once: the pod after gets another VM.
    let refilled = wait_pool_ready(&config);
    let next = unique_id("pool-next");
    let _next = c.guard(&next);
    run_timed(&c, &next, &config);
    let next_qemu = qemu_of(&refilled);
    assert_ne!(next_qemu, pooled_qemu, "two pods in one VM");
    assert!(
        std::fs::read_to_string(format!("/proc/{next_qemu}/cgroup"))
            .expect("cgroup")
            .contains(&format!("/{next}")),
        "pod {next} did not get the refilled VM"
    );

    // The daemon going takes its waiting VM with it, not the pods.
    wait_pool_ready(&config);
    kata_ctl(&["pool", "stop"]);
    let out = c.ctr(&["task", "exec", "--exec-id", "alive", &warm, "true"]);
    assert!(
        out.status.success(),
        "pod {warm} after the pool stopped: {}",
        text(&out.stderr)
    );

    for id in [&first, &warm, &next] {
        c.force_remove(id);
    }
    let deadline = Instant::now() + STEP;
    let left = loop {
        let mut left = pool_leftovers();
        for id in [&first, &warm, &next] {
            left.extend(leftovers(id));
        }
        if left.is_empty() || Instant::now() >= deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(left.is_empty(), "left behind: {left:#?}");
    assert!(
        pids_matching(&["qemu-system"])
            .iter()
            .all(|p| *p != pooled_qemu && *p != next_qemu),
        "a pooled QEMU outlived its pod"
    );
}

const PORT: u16 = 8080;
/// How long a removed pod may take to leave nothing behind.
const CLEAN_TIMEOUT: Duration = Duration::from_secs(15);

/// A CRI pod of the kata handler with a busybox httpd serving `body` on PORT: its id, IP and
/// web container, its guard, how long ago RunPodSandbox began when the guest's uptime was
/// read, and that uptime in seconds.
fn web_pod<'a>(
    c: &Containerd,
    cri: &'a Cri,
    name: &str,
    body: &str,
) -> (String, String, String, PodGuard<'a>, Duration, f64) {
    let log_dir = c.dir().join("pods").join(unique_id(name));
    std::fs::create_dir_all(&log_dir).expect("pod log dir");
    let config = cri::pod_config(name, &log_dir, &[]);
    let began = Instant::now();
    let id = cri
        .run_pod(&config, KATA_HANDLER)
        .unwrap_or_else(|e| panic!("{name}: {e:#}\ncontainerd log:\n{}", c.log_tail(40)));
    let guard = cri.guard(&id);
    let script = format!(
        "mkdir -p /tmp/www && echo {body} > /tmp/www/index.html && exec httpd -f -p {PORT} -h /tmp/www"
    );
    let web = cri::container_config("web", &["sh", "-c", &script]);
    let cid = cri
        .create_container(&id, &web, &config)
        .and_then(|cid| cri.start_container(&cid).map(|()| cid))
        .unwrap_or_else(|e| panic!("{name}: {e:#}\ncontainerd log:\n{}", c.log_tail(40)));
    let out = cri
        .exec_sync(&cid, &["cat", "/proc/uptime"], 30)
        .expect("ExecSync");
    let took = began.elapsed();
    let uptime = text(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("uptime");
    let ip = cri
        .pod_status(&id)
        .expect("PodSandboxStatus")
        .status
        .and_then(|s| s.network)
        .map(|n: api::PodSandboxNetworkStatus| n.ip)
        .unwrap_or_default();
    assert!(!ip.is_empty(), "{name}: no pod IP");
    (id, ip, cid, guard, took, uptime)
}

#[test]
fn a_cri_pod_runs_in_a_vm_booted_ahead_and_its_pod_ip_answers() {
    kata_ctl(&["pool", "stop"]);
    let config = config_variant("pool", "vm_cache_number", "1");
    let conf = config.to_string_lossy().to_string();
    let c = Containerd::start_cri_env("pool-cri", false, &[("KATA_CONF_FILE", &conf)]);
    let _pool = PoolGuard;
    let cri = c.cri();

    // The first pod boots its own VM and starts the daemon.
    let (_, _, _, first, took, uptime) = web_pod(&c, &cri, "pool-first", "cold");
    assert!(
        uptime < took.as_secs_f64(),
        "the first pod's guest (up {uptime} s) must have booted for it ({took:?})"
    );
    wait_pool_ready(&config);

    let (id, ip, web, warm, took, uptime) =
        web_pod(&c, &cri, "pool-warm", "hello-from-a-pooled-vm");
    assert!(
        uptime > took.as_secs_f64(),
        "pod {id}'s guest is up {uptime} s, but its RunPodSandbox began {took:?} ago: it booted cold\n{}",
        c.log_tail(30)
    );
    wait_serves(&format!("{ip}:{PORT}"), "hello-from-a-pooled-vm");
    // The guest's NIC took the pod interface's MAC (it booted with one of its own).
    let netns = cri.pod_netns(&id).expect("pod netns");
    // (sysfs shows the netns of whoever mounted it: ask netlink instead.)
    let link = text(
        &bounded("nsenter", QUICK_LIMIT)
            .args([
                &format!("--net={netns}"),
                "ip",
                "-o",
                "link",
                "show",
                "eth0",
            ])
            .output()
            .expect("nsenter")
            .stdout,
    );
    let host_mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {link:?}"))
        .to_string();
    let out = cri
        .exec_sync(&web, &["cat", "/sys/class/net/eth0/address"], 30)
        .expect("ExecSync");
    assert_eq!(
        text(&out.stdout).trim(),
        host_mac.trim(),
        "the guest's eth0 has not the pod interface's MAC"
    );

    first.remove_leaving_nothing(CLEAN_TIMEOUT);
    warm.remove_leaving_nothing(CLEAN_TIMEOUT);
    kata_ctl(&["pool", "stop"]);
    let left = pool_leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
    let links = text(
        &bounded("ip", QUICK_LIMIT)
            .args(["link", "show"])
            .output()
            .expect("ip link")
            .stdout,
    );
    assert!(!links.contains("_kata"), "a kata tap on the host:\n{links}");
}
