//! A guest that floods the host, end to end (real containerd, shim, QEMU and guest): a
//! privileged container writes emergency-level kernel messages to /dev/kmsg as fast as it can
//! for several seconds, so the guest console carries a flood. Afterwards the shim's memory
//! (peak RSS), the console file and containerd's log all stayed under their caps, the log holds
//! one drop warning instead of the flood, and the sandbox still works. The same sandbox shows
//! QEMU under its seccomp sandbox and vhost-device-vsock without capabilities.
//!
//! The agent's log stream cannot be flooded from a container (the real agent writes little
//! and a container cannot reach its port); a forged log peer flooding it is
//! `shim/src/vm/logs.rs`'s test.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kata_e2e::*;
use kata_shim::guest_output::capped_file::rotated;
use kata_shim::guest_output::{CONSOLE_FILE_CAP, FLOOD_QUIET, LINES_PER_SEC, LINE_BURST};

/// How long the container floods.
const FLOOD: Duration = Duration::from_secs(12);
/// The shim's peak resident memory (VmHWM) must stay under this, flood included.
const SHIM_RSS_CAP_KIB: u64 = 32 * 1024;
/// How much containerd's log may grow while the guest floods (it is ~100 bytes a line).
const LOG_GROWTH_CAP: u64 = 256 * 1024;
/// Bound of every ctr call.
const CTR_LIMIT: Duration = Duration::from_secs(60);
const CLEAN_TIMEOUT: Duration = Duration::from_secs(15);

/// `Name:   value kB` lines of /proc/<pid>/status, as kB.
fn status_kib(pid: i32, field: &str) -> u64 {
    status_field(pid, field)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{field} of pid {pid}"))
}

fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn pid_file(dir: &Path, name: &str) -> i32 {
    let p = dir.join(format!("{name}.pid"));
    std::fs::read_to_string(&p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("pid file {}", p.display()))
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Lines of `text` written to the console by this test's flood.
fn flood_lines(text: &str, marker: &str) -> usize {
    text.lines().filter(|l| l.contains(marker)).count()
}

#[test]
fn a_guest_flooding_its_console_costs_the_host_one_warning() {
    let ctrd = Containerd::start("guest_flood");
    let id = unique_id("flood");
    let _guard = ctrd.guard(&id);
    let marker = format!("flood-{id}");
    let log_before = file_len(&ctrd.log_path());
    let started = Instant::now();

    // Emergency level (<0>) reaches the console even with `quiet`. Each echo opens /dev/kmsg
    // anew, so the kernel's per-opener rate limit does not slow it down. The container's /dev
    // is a tmpfs of its own: a privileged container makes the node itself.
    let script = format!(
        "mknod /dev/kmsg c 1 11 || exit 1; i=0; (while :; do i=$((i+1)); echo \"<0>{marker} $i {pad}\" > /dev/kmsg; done) & \
         f=$!; sleep {}; kill $f; echo flood-done; exec sleep 1000",
        FLOOD.as_secs(),
        pad = "x".repeat(100),
    );
    let image = test_image();
    let out = ctrd.ctr_bounded(
        &[
            "run",
            "-d",
            "--privileged",
            "--runtime",
            RUNTIME,
            &image,
            &id,
            "sh",
            "-c",
            &script,
        ],
        CTR_LIMIT,
    );
    assert!(
        out.status.success(),
        "ctr run -d --privileged: {}\ncontainerd log:\n{}",
        text(&out.stderr),
        ctrd.log_tail(40)
    );
    let dir = PathBuf::from(sandbox_dir(&id));
    let shims = pids_matching(&["containerd-shim-kata-v2", &format!(" -id {id} ")]);
    assert_eq!(shims.len(), 1, "one shim for {id}: {shims:?}");
    let shim = shims[0];
    let rss_start = status_kib(shim, "VmRSS");

    // While it floods: the shim's peak memory, sampled, and the files' sizes.
    let console = dir.join("console.log");
    let mut peak_rss = rss_start;
    while started.elapsed() < FLOOD + Duration::from_secs(2) {
        peak_rss = peak_rss.max(status_kib(shim, "VmRSS"));
        for f in [console.clone(), rotated(&console)] {
            let len = file_len(&f);
            assert!(len <= CONSOLE_FILE_CAP, "{}: {len} bytes", f.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let hwm = status_kib(shim, "VmHWM");

    // The sandbox still answers.
    let exec = ctrd.ctr_bounded(
        &[
            "task",
            "exec",
            "--exec-id",
            "after",
            &id,
            "echo",
            "still-here",
        ],
        CTR_LIMIT,
    );
    assert!(
        text(&exec.stdout).contains("still-here"),
        "exec after the flood: {:?} {}",
        exec.status,
        text(&exec.stderr)
    );

    // The one warning comes once the flood stopped for FLOOD_QUIET.
    let warning_of = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| {
                l.contains("guest console: ")
                    && l.contains("lines dropped")
                    && l.contains(&format!("sandbox={id}"))
            })
            .map(str::to_string)
            .collect()
    };
    let deadline = Instant::now() + FLOOD_QUIET + Duration::from_secs(20);
    let log = loop {
        let log = std::fs::read_to_string(ctrd.log_path()).unwrap_or_default();
        if !warning_of(&log).is_empty() || Instant::now() >= deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let elapsed = started.elapsed();
    let warnings = warning_of(&log);
    let logged = flood_lines(&log, &marker);
    let written = flood_lines(
        &(std::fs::read_to_string(rotated(&console)).unwrap_or_default()
            + &std::fs::read_to_string(&console).unwrap_or_default()),
        &marker,
    );
    let log_growth = file_len(&ctrd.log_path()).saturating_sub(log_before);
    println!(
        "flood of {FLOOD:?}: {written} flood lines in the console file(s) ({} + {} bytes), \
         {logged} in containerd's log (grew {log_growth} bytes); shim VmRSS {rss_start} kB \
         at start, {peak_rss} kB peak sampled, VmHWM {hwm} kB\nwarning: {warnings:?}",
        file_len(&console),
        file_len(&rotated(&console)),
    );

    assert_eq!(warnings.len(), 1, "one drop warning: {warnings:#?}");
    assert!(
        written > logged * 2,
        "the guest flooded ({written} lines kept in the console file, {logged} logged)"
    );
    let most = u64::from(LINE_BURST) + u64::from(LINES_PER_SEC) * (elapsed.as_secs() + 1);
    assert!(
        logged as u64 <= most,
        "{logged} flood lines in containerd's log, at most {most}"
    );
    assert!(
        log_growth < LOG_GROWTH_CAP,
        "containerd's log grew {log_growth} bytes"
    );
    assert!(
        hwm < SHIM_RSS_CAP_KIB,
        "shim peak RSS {hwm} kB, cap {SHIM_RSS_CAP_KIB} kB"
    );
    for f in [console.clone(), rotated(&console)] {
        assert!(file_len(&f) <= CONSOLE_FILE_CAP, "{}", f.display());
    }

    // QEMU runs under its seccomp filter, with no_new_privs; vhost-device-vsock has no
    // capability at all.
    let qemu = pid_file(&dir, "qemu");
    assert_eq!(status_field(qemu, "Seccomp"), "2", "QEMU's seccomp mode");
    assert_eq!(status_field(qemu, "NoNewPrivs"), "1");
    let vsockd = pid_file(&dir, "vhost-device-vsock");
    for set in ["CapPrm", "CapEff", "CapBnd", "CapAmb", "CapInh"] {
        assert_eq!(
            status_field(vsockd, set),
            "0000000000000000",
            "vhost-device-vsock {set}"
        );
    }
    assert_eq!(status_field(vsockd, "NoNewPrivs"), "1");

    let _ = ctrd.ctr_bounded(&["task", "kill", "-s", "SIGKILL", &id], CTR_LIMIT);
    let _ = ctrd.ctr_bounded(&["task", "delete", "-f", &id], CTR_LIMIT);
    let _ = ctrd.ctr_bounded(&["container", "rm", &id], CTR_LIMIT);
    let left = wait_clean(&id, CLEAN_TIMEOUT);
    assert!(
        left.is_empty(),
        "sandbox {id} left things behind: {left:#?}"
    );
}
