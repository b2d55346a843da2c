//! A part of a running sandbox dies or wedges, end to end (containerd 1.6, shim, QEMU, the
//! guest): its virtiofsd or vhost-device-vsock killed, its guest wedged (QEMU stopped, so the
//! agent answers nothing) or its guest kernel panicking. Each time the sandbox is declared dead
//! by itself (no kill from containerd), its task exits 255, the shim's log names the cause, and
//! nothing is left after delete. The time to the task's exit is printed (docs/troubleshooting.md
//! has the figures); the bound waited for is generous: the 30 s contract is held by the unit
//! test under a paused clock (`shim/tests/lifecycle.rs`).

use std::time::{Duration, Instant};

use kata_e2e::*;

const STATUS_TIMEOUT: Duration = Duration::from_secs(60);
const CLEAN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the task may take to be reported exited after the fault: far above the figure
/// measured here, so a slow CI host does not fail it, while a sandbox never declared dead does.
const DEAD_TIMEOUT: Duration = Duration::from_secs(90);

fn signal(sig: &str, pids: &[i32]) {
    for pid in pids {
        let st = bounded("kill", QUICK_LIMIT)
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        // virtiofsd is two processes: the second can go with the first before its turn.
        let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists();
        assert!(st.success() || gone, "kill {sig} {pid}");
    }
}

/// A running `sleep` task in its own sandbox, started with extra ctr `flags`.
fn running(ctrd: &Containerd, prefix: &str, flags: &[&str], cmd: &[&str]) -> String {
    let id = unique_id(prefix);
    ctrd.run_detached_with_flags(&id, flags, cmd, STATUS_TIMEOUT);
    id
}

/// The pids of the sandbox's `name` processes.
fn processes(id: &str, name: &str) -> Vec<i32> {
    pids_matching(&[name, &format!("{}/", sandbox_dir(id))])
}

/// The moment of a fault: when, and how far containerd's log (where the shim logs) went.
struct Fault {
    at: Instant,
    log_len: usize,
}

fn fault(ctrd: &Containerd) -> Fault {
    Fault {
        at: Instant::now(),
        log_len: std::fs::read(ctrd.log_path()).map_or(0, |l| l.len()),
    }
}

/// Waits until the task is reported stopped, without any request from containerd, and prints
/// how long that took.
fn wait_declared_dead(ctrd: &Containerd, id: &str, fault: &Fault) {
    ctrd.wait_status(id, "STOPPED", DEAD_TIMEOUT);
    let took = fault.at.elapsed();
    println!(
        "{id}: task exited {:.1} s after the fault",
        took.as_secs_f64()
    );
}

/// The task exited 255, the log written since the fault names `cause`, and nothing of the
/// sandbox is left after delete.
fn assert_dead_and_clean(ctrd: &Containerd, id: &str, fault: &Fault, cause: &str) {
    let log = std::fs::read(ctrd.log_path()).unwrap_or_default();
    let since = String::from_utf8_lossy(log.get(fault.log_len..).unwrap_or_default());
    assert!(
        since.contains(cause),
        "the shim's log does not name the cause {cause:?}:\n{}",
        ctrd.log_tail(40)
    );
    assert_eq!(ctrd.delete_task(id), 255, "the task's exit status");
    ctrd.assert_left_nothing(id, CLEAN_TIMEOUT);
}

/// SIGKILL to the sandbox's `helper` processes: the sandbox stops, its log naming the
/// helper. A sandbox without that helper (vhost-device-vsock where the
/// kernel's vhost-vsock carries the agent) must be on such a host.
fn a_killed_helper_ends_the_sandbox(helper: &str, prefix: &str) {
    let ctrd = Containerd::start("death");
    let id = running(&ctrd, prefix, &[], &["sleep", "1000"]);
    let _guard = ctrd.guard(&id);
    let pids = processes(&id, helper);
    if pids.is_empty() && helper == "vhost-device-vsock" {
        assert!(
            std::path::Path::new("/dev/vhost-vsock").exists(),
            "no vhost-device-vsock for {id}, and no /dev/vhost-vsock either"
        );
        println!("{id}: kernel vhost-vsock, no vsock daemon to kill");
        ctrd.force_remove(&id);
        return;
    }
    assert!(!pids.is_empty(), "no {helper} for {id}");
    let f = fault(&ctrd);
    signal("-KILL", &pids);
    wait_declared_dead(&ctrd, &id, &f);
    assert_dead_and_clean(&ctrd, &id, &f, &format!("{helper} exited (signal: 9"));
}

#[test]
fn a_killed_virtiofsd_ends_the_sandbox_naming_it() {
    a_killed_helper_ends_the_sandbox("virtiofsd", "fsdeath");
}

#[test]
fn a_killed_vsock_daemon_ends_the_sandbox_naming_it() {
    a_killed_helper_ends_the_sandbox("vhost-device-vsock", "vsdeath");
}

#[test]
fn a_wedged_guest_is_declared_dead_by_its_missed_health_checks() {
    let ctrd = Containerd::start("death");
    let id = running(&ctrd, "wedge", &[], &["sleep", "1000"]);
    let _guard = ctrd.guard(&id);
    let qemu = processes(&id, "qemu-system");
    assert_eq!(qemu.len(), 1, "one QEMU for {id}: {qemu:?}");
    // A stopped QEMU runs no guest: the agent answers nothing, and no process exits.
    let f = fault(&ctrd);
    signal("-STOP", &qemu);
    wait_declared_dead(&ctrd, &id, &f);
    assert_dead_and_clean(&ctrd, &id, &f, "missed 3 health checks in a row");
}

#[test]
fn a_guest_kernel_panic_ends_the_sandbox_with_the_panic_in_the_log() {
    let ctrd = Containerd::start("death");
    // A privileged container (root of its own guest) makes the guest kernel panic on the next
    // OOM, then fills its 64 MiB: the guest panics, QEMU exits (-no-reboot).
    let id = running(
        &ctrd,
        "panic",
        &["--privileged", "--memory-limit", "67108864"],
        &["sleep", "1000"],
    );
    let _guard = ctrd.guard(&id);
    let out = ctrd.ctr_bounded(
        &[
            "task",
            "exec",
            "--exec-id",
            "panic",
            &id,
            "sh",
            "-c",
            "echo 2 > /proc/sys/vm/panic_on_oom && cat /proc/sys/vm/panic_on_oom",
        ],
        STATUS_TIMEOUT,
    );
    assert_eq!(text(&out.stdout).trim(), "2", "panic_on_oom set: {out:?}");
    let f = fault(&ctrd);
    // Its exec dies with the VM: the outcome is the task's, not this call's.
    let _ = ctrd.ctr_bounded(
        &[
            "task",
            "exec",
            "--exec-id",
            "fill",
            &id,
            "sh",
            "-c",
            "tail /dev/zero",
        ],
        DEAD_TIMEOUT,
    );
    wait_declared_dead(&ctrd, &id, &f);
    assert_dead_and_clean(&ctrd, &id, &f, "Kernel panic");
}
