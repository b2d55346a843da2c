//! The shim (task API v2) under containerd 2.x from Debian sid, unpacked by
//! scripts/setup-host.sh: the core lifecycle a user of a current containerd relies on.

use kata_e2e::*;
use std::time::Duration;

#[test]
fn containerd2_runs_execs_and_kills_vm_containers() {
    let ctrd = Containerd::start_v2("containerd2");
    let version = ctrd.ctr(&["version"]);
    println!("{}", text(&version.stdout));
    let server_major = text(&version.stdout)
        .split("Server:")
        .nth(1)
        .and_then(|s| s.split("Version:").nth(1))
        .map(|v| v.trim().starts_with('2'));
    assert_eq!(
        server_major,
        Some(true),
        "this suite drives a containerd 2.x server"
    );

    let id = unique_id("c2run");
    let out = ctrd.run(&[], &id, &["sh", "-c", "echo hi; exit 3"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit status; stderr {}\ncontainerd log:\n{}",
        text(&out.stderr),
        ctrd.log_tail(40)
    );
    assert_eq!(text(&out.stdout), "hi\n");
    assert!(wait_clean(&id, Duration::from_secs(15)).is_empty());

    let id = unique_id("c2exec");
    let _guard_id = ctrd.guard(&id);
    ctrd.run_detached(&id, &["sleep", "1000"]);
    ctrd.wait_status(&id, "RUNNING", Duration::from_secs(60));
    let out = ctrd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "sh",
        "-c",
        "echo in-exec; sleep 0.1; exit 5", // ctr drops an instant exec's output at times
    ]);
    assert_eq!(text(&out.stdout), "in-exec\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(5));
    let out = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    ctrd.wait_status(&id, "STOPPED", Duration::from_secs(60));
    let out = ctrd.ctr(&["task", "delete", &id]);
    assert!(out.status.success(), "task delete: {}", text(&out.stderr));
    let out = ctrd.ctr(&["container", "rm", &id]);
    assert!(out.status.success(), "container rm: {}", text(&out.stderr));
    let left = wait_clean(&id, Duration::from_secs(15));
    assert!(left.is_empty(), "{left:#?}");
}
