//! Isolation against a hostile container, end to end (real containerd, shim, QEMU and guest):
//! an unprivileged process in a container cannot reach the agent's vsock ports, through
//! vsock loopback (cid 1) or the guest's own cid, so it cannot drive the agent API (e.g. a
//! forged ExecProcess as root), read the agent's log stream or open the debug console; guest
//! root cannot write next to the host's mounts in the share, and names planted there do not
//! redirect the host's next mounts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_e2e::*;
use kata_shim::hypervisor::qemu::vsock_device::VHOST_USER_GUEST_CID;
use kata_shim::resources::share;
use kata_shim::resources::spec::SANDBOX_ID_ANNOTATION;

const CLEAN_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on one ctr call (a VM boot under TCG included).
const CTR_LIMIT: Duration = Duration::from_secs(180);

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
    // The agent's API, its log stream, the debug console and the stdio port; loopback and the
    // guest's own cid
    // (hybrid vsock gives the guest a fixed cid; with kernel vhost-vsock it is reserved per VM
    // and a wrong guess only reaches the host, which refuses too).
    let targets: Vec<String> = [1, VHOST_USER_GUEST_CID]
        .iter()
        .flat_map(|cid| {
            [
                protocol::AGENT_TTRPC_PORT,
                protocol::AGENT_LOG_PORT,
                protocol::DEBUG_CONSOLE_PORT,
                protocol::STDIO_PORT,
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
    let mounts = PathBuf::from(sandbox_dir(&id)).join("mounts");
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

/// Mount points of the host's (this process's) mount table.
fn host_mount_points() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("/proc/self/mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect()
}

/// Runs `script` with `sh -c` in container `id` (`ctr task exec`, bounded); stdout and stderr.
fn exec_script(ctrd: &Containerd, id: &str, exec_id: &str, script: &str) -> String {
    let out = ctrd.ctr_bounded(
        &["task", "exec", "--exec-id", exec_id, id, "sh", "-c", script],
        CTR_LIMIT,
    );
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_ne!(
        out.status.code(),
        Some(124),
        "ctr task exec timed out: {all}"
    );
    println!("--- {id}/{exec_id}:\n{all}");
    all
}

/// Names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Removes a mount the test made when dropped (bounded `umount -l`).
struct TestMount(PathBuf);

impl Drop for TestMount {
    fn drop(&mut self) {
        let _ = bounded("umount", QUICK_LIMIT)
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Guest root cannot plant at the names the shim uses next, and what is planted at them on
/// the host is replaced, never followed. In one sandbox: a privileged container (all
/// capabilities in the guest) mounts the virtio-fs tag itself and plants symlinks at the
/// second container's names there; guest root in the agent's own namespace (the debug
/// console) tries the same at the share's root and is refused (read-only); the test then
/// plants symlinks to a canary directory at those names on the host itself. A second
/// container of the sandbox, with a writable and a read-only rbind volume (a tmpfs nested in
/// it), still starts; its read-only volume is read-only down to the nested mount, in the
/// guest's view of the share too. The canary is untouched and no mount appears outside the
/// run root's sandbox dirs.
#[test]
fn a_second_container_is_mounted_past_names_planted_in_the_share() {
    let ctrd = Containerd::start("isolation");
    let cfg = config_variant("isolation-console", "debug_console_enabled", "true");
    let sb = unique_id("plant");
    let c2 = unique_id("plant2");
    let _sb_guard = ctrd.guard(&sb);
    let _c2_guard = ctrd.guard(&c2);
    let host_mounts = PathBuf::from(sandbox_dir(&sb)).join("mounts");
    let planted = [share::container_entry(&c2), share::mounts_entry(&c2)];

    // Host side: a canary outside the sandbox dir, volume sources, a tmpfs nested in the
    // read-only one (with a marker the guest must see through it).
    let tmp = tempfile::tempdir().expect("tempdir");
    let canary = tmp.path().join("canary");
    std::fs::create_dir(&canary).expect("canary");
    std::fs::write(canary.join("keep"), "canary").expect("canary file");
    let (rw, ro) = (tmp.path().join("rw"), tmp.path().join("ro"));
    std::fs::create_dir(&rw).expect("rw");
    std::fs::create_dir_all(ro.join("nested")).expect("ro/nested");
    let st = bounded("mount", QUICK_LIMIT)
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(ro.join("nested"))
        .status()
        .expect("mount tmpfs");
    assert!(st.success(), "mount tmpfs: {st}");
    let _nested = TestMount(ro.join("nested"));
    std::fs::write(ro.join("nested/marker"), "nested-visible").expect("marker");
    let before = host_mount_points();

    let cfg_arg = cfg.to_string_lossy();
    ctrd.run_detached_with_flags(
        &sb,
        &["--privileged", "--runtime-config-path", &cfg_arg],
        &["sleep", "1000"],
        CTR_LIMIT,
    );

    // A privileged container mounts the share's tag itself and plants at the next names.
    // (The guest kernel hands it the newest superblock of that virtio-fs device, its own
    // rootfs, which the host announced as a submount; whatever it reaches, nothing may appear
    // next to the host's mounts.)
    let tag = protocol::SHARED_FS_TAG;
    let plant: String = planted
        .iter()
        .map(|n| format!("ln -s /etc /share/{n}; "))
        .collect();
    let out = exec_script(
        &ctrd,
        &sb,
        "plant",
        &format!(
            "mkdir -p /share && mount -t virtiofs {tag} /share && echo share-mounted; {plant}"
        ),
    );
    assert!(out.contains("share-mounted"), "{out}");
    assert_eq!(
        names(&host_mounts),
        std::slice::from_ref(&sb),
        "in {}",
        host_mounts.display()
    );

    // Guest root where the agent mounted the share: its root takes no writes.
    let plant: String = planted
        .iter()
        .map(|n| format!("ln -s /etc {n}; "))
        .collect();
    let shared = protocol::GUEST_SHARED_DIR;
    let console = guest_console(
        &cfg,
        &sb,
        &format!("cd {shared} && {plant}touch file; exit\n"),
    );
    let out = text(&console.stdout);
    println!("--- console:\n{out}");
    assert!(
        console.status.success(),
        "kata-ctl exec: {}",
        text(&console.stderr)
    );
    assert_eq!(out.matches("Read-only file system").count(), 3, "{out}");
    assert_eq!(
        names(&host_mounts),
        std::slice::from_ref(&sb),
        "in {}",
        host_mounts.display()
    );

    // The host side of the share: symlinks at the second container's names, to the canary.
    for n in &planted {
        std::os::unix::fs::symlink(&canary, host_mounts.join(n))
            .unwrap_or_else(|e| panic!("planting {n}: {e}"));
    }

    let annotation = format!("{SANDBOX_ID_ANNOTATION}={sb}");
    let rw_mount = format!("type=bind,src={},dst=/rw,options=rbind:rw", rw.display());
    let ro_mount = format!("type=bind,src={},dst=/ro,options=rbind:ro", ro.display());
    ctrd.run_detached_with_flags(
        &c2,
        &[
            "--annotation",
            &annotation,
            "--mount",
            &rw_mount,
            "--mount",
            &ro_mount,
        ],
        &["sleep", "1000"],
        CTR_LIMIT,
    );
    let during = host_mount_points();
    for n in &planted {
        let m = std::fs::symlink_metadata(host_mounts.join(n)).expect("stat");
        assert!(m.is_dir(), "{n} is the shim's own directory now");
    }

    // The second container: its volumes as asked.
    let out = exec_script(
        &ctrd,
        &c2,
        "volumes",
        "echo x > /rw/from-c2 && echo rw-ok; echo x > /ro/w; echo x > /ro/nested/w; \
         cat /ro/nested/marker; echo",
    );
    assert!(out.contains("rw-ok"), "{out}");
    assert!(out.contains("nested-visible"), "{out}");
    assert_eq!(out.matches("Read-only file system").count(), 2, "{out}");

    // Guest root's view of the share: the read-only volume is read-only there too, down to
    // the nested mount (the host's mount is, not only the guest's bind of it).
    let vols = format!("{shared}/{}", share::mounts_entry(&c2));
    let console = guest_console(
        &cfg,
        &sb,
        &format!(
            "for d in {vols}/*-rw; do echo x > $d/from-share && echo share-rw-ok; done; \
             for d in {vols}/*-ro; do echo x > $d/w; echo x > $d/nested/w; \
             cat $d/nested/marker; echo; done; exit\n"
        ),
    );
    let out = text(&console.stdout);
    println!("--- console:\n{out}");
    assert!(out.contains("share-rw-ok"), "{out}");
    assert!(out.contains("nested-visible"), "{out}");
    assert_eq!(out.matches("Read-only file system").count(), 2, "{out}");

    ctrd.force_remove(&c2);
    ctrd.force_remove(&sb);
    let left = wait_clean(&sb, CLEAN_TIMEOUT);

    assert_eq!(names(&canary), ["keep"], "the canary directory changed");
    assert_eq!(
        std::fs::read_to_string(canary.join("keep")).expect("keep"),
        "canary"
    );
    assert_eq!(
        names(&rw),
        ["from-c2", "from-share"],
        "the rw volume's writes, kept"
    );
    assert_eq!(names(&ro), ["nested"], "nothing written in the ro volume");
    assert_eq!(
        names(&ro.join("nested")),
        ["marker"],
        "nor in its nested mount"
    );
    // No mount appeared outside the run root's sandbox dirs (this one's, and those of tests
    // that may run alongside: each holds its own).
    let run_prefix = format!("{}/", sandbox_run_dir());
    let new_outside: Vec<&String> = during
        .difference(&before)
        .filter(|m| !m.starts_with(&run_prefix))
        .collect();
    assert!(
        new_outside.is_empty(),
        "mounts outside {run_prefix}: {new_outside:?}"
    );
    let canary_mounts: Vec<&String> = during
        .iter()
        .filter(|m| m.starts_with(&canary.display().to_string()))
        .collect();
    assert!(
        canary_mounts.is_empty(),
        "mounts in the canary: {canary_mounts:?}"
    );
    assert!(
        left.is_empty(),
        "sandbox {sb} left things behind: {left:#?}"
    );
}
