//! Isolation against a hostile container, end to end (real containerd, shim, QEMU and guest):
//! an unprivileged process in a container cannot reach the agent's vsock ports, through
//! vsock loopback (cid 1) or the guest's own cid, so it cannot drive the agent API (e.g. a
//! forged ExecProcess as root), read the agent's log stream or open the debug console.

use std::path::PathBuf;
use std::time::Duration;

use kata_e2e::*;
use kata_shim::hypervisor::qemu::vsock_device::VHOST_USER_GUEST_CID;

const CLEAN_TIMEOUT: Duration = Duration::from_secs(15);

/// The static probe `make e2e` builds (tests/vsock-probe).
fn probe_binary() -> PathBuf {
    top_dir().join(format!(
        "target/{}-unknown-linux-musl/release/kata-vsock-probe",
        std::env::consts::ARCH
    ))
}

#[test]
fn an_unprivileged_container_cannot_reach_the_agent_ports() {
    let probe = probe_binary();
    require_built(std::slice::from_ref(&probe));
    let ctrd = Containerd::start("isolation");
    let id = unique_id("vsockprobe");
    let mount = format!(
        "type=bind,src={},dst=/kata-vsock-probe,options=rbind:ro",
        probe.display()
    );
    // The agent's API, its log stream and the debug console; loopback and the guest's own cid
    // (hybrid vsock gives the guest a fixed cid; with kernel vhost-vsock it is reserved per VM
    // and a wrong guess only reaches the host, which refuses too).
    let targets: Vec<String> = [1, VHOST_USER_GUEST_CID]
        .iter()
        .flat_map(|cid| {
            [
                protocol::AGENT_TTRPC_PORT,
                protocol::AGENT_LOG_PORT,
                protocol::DEBUG_CONSOLE_PORT,
            ]
            .map(|port| format!("{cid}:{port}"))
        })
        .collect();
    let mut cmd = vec!["/kata-vsock-probe", "--uid", "1000"];
    cmd.extend(targets.iter().map(String::as_str));
    let out = ctrd.run(&["--mount", &mount], &id, &cmd);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "probe failed ({:?}): {stdout} {}\ncontainerd log:\n{}",
        out.status,
        text(&out.stderr),
        ctrd.log_tail(40)
    );
    println!("{stdout}");
    assert!(
        stdout.lines().any(|l| l == "uid 1000"),
        "the probe did not run unprivileged: {stdout}"
    );
    for t in &targets {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{t} ")))
            .unwrap_or_else(|| panic!("no result for {t}: {stdout}"));
        assert!(
            line.contains(" refused: "),
            "a container process reached vsock {t}: {line}"
        );
    }
    let left = wait_clean(&id, CLEAN_TIMEOUT);
    assert!(
        left.is_empty(),
        "sandbox {id} left things behind: {left:#?}"
    );
}

/// A guest that is root (the agent taken over: here the debug console's shell) cannot write
/// next to what the host mounts into the share: the export is read-only, so it cannot plant a
/// symlink where the shim will create or mount something next. Inside a writable mount (the
/// container's rootfs) it still writes, as a container must.
#[test]
fn guest_root_cannot_write_next_to_the_host_mounts() {
    let ctrd = Containerd::start("isolation");
    let cfg = config_variant("isolation-console", "debug_console_enabled", "true");
    let id = unique_id("sharero");
    let _guard = ctrd.guard(&id);
    ctrd.run_detached_with_config(&id, &cfg, &["sleep", "1000"]);

    let shared = protocol::GUEST_SHARED_DIR;
    let script = format!(
        "cd {shared} && for p in planted {id}-mounts; do ln -s /etc $p; done; touch file; \
         mkdir dir; touch {id}/rootfs/tmp/inside && echo rootfs-writable; exit\n"
    );
    let out = guest_console(&cfg, &id, &script);
    let console = text(&out.stdout);
    assert!(out.status.success(), "kata-ctl exec: {}", text(&out.stderr));
    println!("{console}");
    assert_eq!(
        console.matches("Read-only file system").count(),
        4,
        "every write next to the host's mounts must fail: {console}"
    );
    assert!(console.contains("rootfs-writable"), "{console}");

    // On the host: nothing the guest tried appeared in the share.
    let mounts = PathBuf::from(SANDBOX_RUN_DIR).join(&id).join("mounts");
    let mut entries: Vec<String> = std::fs::read_dir(&mounts)
        .unwrap_or_else(|e| panic!("{}: {e}", mounts.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        std::slice::from_ref(&id),
        "in {}",
        mounts.display()
    );

    ctrd.force_remove(&id);
    let left = wait_clean(&id, CLEAN_TIMEOUT);
    assert!(
        left.is_empty(),
        "sandbox {id} left things behind: {left:#?}"
    );
}
