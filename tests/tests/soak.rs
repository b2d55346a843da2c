//! The soak (`make soak`, not in `make test`: it takes tens of minutes under TCG). One kata pod
//! lives through SOAK_CYCLES (100) container create/start/exec/stop/remove cycles: its shim's,
//! QEMU's and virtiofsd's open fds, the host's mount count and the shim's threads must not
//! grow, and the figures are printed. Then SOAK_CONCURRENT (10) sandboxes run at once, each
//! answering an exec; after they are removed none leaves a process, mount, socket, file or
//! cgroup behind.

use std::time::{Duration, Instant};

use kata_e2e::cri::{self, api};
use kata_e2e::*;

const CLEAN_TIMEOUT: Duration = Duration::from_secs(30);
const STATUS_TIMEOUT: Duration = Duration::from_secs(300);
const EXEC_TIMEOUT_SECS: i64 = 60;
/// Growth allowed in a count between the start and the end: an fd of a connection being
/// opened or closed at the moment of sampling.
const SLACK: usize = 2;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map_or(0, |d| d.count())
}

/// What must not grow in a long-lived pod.
#[derive(Debug, Clone, Copy)]
struct Sample {
    shim_fds: usize,
    shim_threads: usize,
    qemu_fds: usize,
    virtiofsd_fds: usize,
    host_mounts: usize,
}

fn sample(pod: &str) -> Sample {
    let one = |needles: &[&str]| {
        let pids = pids_matching(needles);
        assert_eq!(pids.len(), 1, "one {needles:?}: {pids:?}");
        pids[0]
    };
    let dir = format!("{}/", sandbox_dir(pod));
    let shim = one(&["containerd-shim-kata-v2", pod, "-address"]);
    let qemu = one(&["qemu-system", &dir]);
    // virtiofsd's main process (its children share the name and the socket argument).
    let virtiofsd = pids_matching(&["virtiofsd", &dir])
        .into_iter()
        .min()
        .expect("a virtiofsd");
    Sample {
        shim_fds: count_dir(&format!("/proc/{shim}/fd")),
        shim_threads: count_dir(&format!("/proc/{shim}/task")),
        qemu_fds: count_dir(&format!("/proc/{qemu}/fd")),
        virtiofsd_fds: count_dir(&format!("/proc/{virtiofsd}/fd")),
        host_mounts: std::fs::read_to_string("/proc/self/mountinfo")
            .map_or(0, |m| m.lines().count()),
    }
}

fn container_cycles(ctrd: &Containerd, cycles: usize) {
    let cri = ctrd.cri();
    let log_dir = ctrd.dir().join("pods").join(unique_id("soak"));
    std::fs::create_dir_all(&log_dir).expect("log dir");
    let config: api::PodSandboxConfig = cri::pod_config("soak", &log_dir, &[]);
    let pod = cri
        .run_pod(&config, "kata")
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_tail(40)));
    let guard = cri.guard(&pod);
    let cycle = |n: usize| {
        let c = cri::container_config(&format!("c{n}"), &["sleep", "1000"]);
        let id = cri
            .create_container(&pod, &c, &config)
            .and_then(|id| cri.start_container(&id).map(|()| id))
            .unwrap_or_else(|e| panic!("cycle {n}: {e:#}\ncontainerd log:\n{}", ctrd.log_tail(40)));
        assert_eq!(cri.sh(&id, "echo soak", EXEC_TIMEOUT_SECS), "soak");
        cri.stop_container(&id, 1).expect("StopContainer");
        cri.remove_container(&id).expect("RemoveContainer");
    };
    // One cycle first: what the shim opens once (connections, watches) is not growth.
    cycle(0);
    let start = sample(&pod);
    let began = Instant::now();
    for n in 1..=cycles {
        cycle(n);
    }
    let end = sample(&pod);
    println!(
        "soak: {cycles} container cycles in {:.0} s; start {start:?}; end {end:?}",
        began.elapsed().as_secs_f64()
    );
    for (what, a, b) in [
        ("shim fds", start.shim_fds, end.shim_fds),
        ("shim threads", start.shim_threads, end.shim_threads),
        ("QEMU fds", start.qemu_fds, end.qemu_fds),
        ("virtiofsd fds", start.virtiofsd_fds, end.virtiofsd_fds),
        ("host mounts", start.host_mounts, end.host_mounts),
    ] {
        assert!(
            b <= a + SLACK,
            "{what} grew from {a} to {b} over {cycles} cycles"
        );
    }
    guard.remove_leaving_nothing(CLEAN_TIMEOUT);
    let _ = std::fs::remove_dir_all(&log_dir);
}

fn concurrent_sandboxes(ctrd: &Containerd, n: usize) {
    let ids: Vec<String> = (0..n).map(|_| unique_id("soakvm")).collect();
    let _guards: Vec<_> = ids.iter().map(|id| ctrd.guard(id)).collect();
    let began = Instant::now();
    std::thread::scope(|s| {
        for id in &ids {
            s.spawn(move || {
                ctrd.run_detached_with_flags(id, &[], &["sleep", "1000"], STATUS_TIMEOUT);
                ctrd.wait_exec_ok(id, &["true"], STATUS_TIMEOUT);
            });
        }
    });
    println!(
        "soak: {n} sandboxes running and answering at once after {:.0} s",
        began.elapsed().as_secs_f64()
    );
    for id in &ids {
        let kill = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        assert!(kill.status.success(), "kill {id}: {}", text(&kill.stderr));
    }
    for id in &ids {
        ctrd.wait_status(id, "STOPPED", STATUS_TIMEOUT);
        assert_eq!(ctrd.delete_task(id), 137);
    }
    for id in &ids {
        let left = wait_clean(id, CLEAN_TIMEOUT);
        assert!(left.is_empty(), "{id} left things behind: {left:#?}");
    }
}

#[test]
#[ignore = "the soak takes minutes under TCG, beyond make test's budget: run it with `make soak`"]
fn soak_container_cycles_in_one_pod_and_concurrent_sandboxes() {
    let cycles = env_count("SOAK_CYCLES", 100);
    let concurrent = env_count("SOAK_CONCURRENT", 10);
    container_cycles(&Containerd::start_cri("soak-cri"), cycles);
    concurrent_sandboxes(&Containerd::start("soak"), concurrent);
}
