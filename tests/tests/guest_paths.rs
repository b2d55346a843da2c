//! The agent keeps every path of a container beneath its root, end to end (the real guest booted
//! through the shim's `Vm::boot`, driven through the agent API like `agent_api.rs`): an image
//! whose `/dev` is an absolute symlink to a guest directory gets its devices inside its own
//! root, a mount destination climbing with `..` stays inside, a destination through a `/proc`
//! magic link is refused with an error naming it, and the guest's own directories are
//! untouched (looked at through the guest debug console); an image's own files at /proc (no
//! procfs there) do not weaken the bounding set. An exec joins the init's namespaces (through
//! its pidfd) and is refused once the init has exited.

use std::path::{Path, PathBuf};

use kata_e2e::agent_rpc::{
    create, create_and_start, exec, guest_config, guest_sh, make_rootfs, read_all, remove,
    run_in_vm, signal, wait, Stream, BUSYBOX, STEP,
};
use kata_e2e::*;
use kata_shim::vm::Vm;
use protocol::agent::*;
use serde_json::json;

/// The guest directory the image's `/dev` symlink names: it exists in the guest (a tmpfs the
/// agent mounts at boot), so an agent that followed the link would create device nodes there.
const GUEST_DIR: &str = "/tmp";

/// The suite's OCI spec: the usual one with hostname `paths-test`, a device node asked in
/// `/dev`, and `mounts` after the usual mounts.
fn paths_spec(root: &str, args: &[&str], mounts: serde_json::Value) -> Vec<u8> {
    kata_e2e::agent_rpc::spec(
        root,
        args,
        json!({
            "hostname": "paths-test",
            "mounts": mounts,
            "linux": {
                "devices": [{"path": "/dev/null-copy", "type": "c", "major": 1, "minor": 3,
                             "fileMode": 420, "uid": 0, "gid": 0}]
            }
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_paths_resolve_beneath_the_root() {
    let config = guest_config("build/configuration-qemu.toml", "KATA_RS_TEST");
    require_built(&[PathBuf::from(BUSYBOX)]);
    run_in_vm(config, "guestpaths", |vm, sandbox_id| {
        Box::pin(drive(vm, sandbox_id))
    })
    .await;
}

async fn drive(vm: &Vm, sandbox_id: &str) -> Result<(), String> {
    let agent = vm.agent().with_timeout(STEP);
    agent
        .create_sandbox(CreateSandboxRequest {
            sandbox_id: sandbox_id.into(),
            storages: vec![vm.share().storage()],
            ..Default::default()
        })
        .await
        .map_err(|e| format!("CreateSandbox: {e}"))?;
    let list_guest_dir = format!("ls -A {GUEST_DIR}; ls -d /run/dotdot 2>&1");
    let before = guest_sh(vm, &list_guest_dir).await?;
    println!("guest {GUEST_DIR} before: {before:?}");

    // 1. `/dev -> /tmp` (absolute) in the image, a tmpfs asked on /dev, devices asked in it,
    //    and a tmpfs mount destination climbing out with `..`.
    let root = make_rootfs(Path::new(BUSYBOX), vm.share(), "devlink", |root| {
        std::os::unix::fs::symlink(GUEST_DIR, root.join("dev")).unwrap();
    });
    let mounts = json!([{"destination": "/../../../run/dotdot", "type": "tmpfs",
                        "source": "tmpfs"}]);
    create_and_start(
        &agent,
        "devlink",
        paths_spec(&root, &["sleep", "1000"], mounts),
    )
    .await?;
    // An exec joins the init's mount and uts namespaces (through the init's pidfd).
    exec(
        &agent,
        "devlink",
        "look",
        &[
            "sh",
            "-c",
            "echo x > /dev/null && echo devnull-ok; readlink /dev; ls /dev; \
             grep -c ' /run/dotdot ' /proc/self/mountinfo; hostname",
        ],
        false,
    )
    .await
    .map_err(|e| format!("ExecProcess look: {e}"))?;
    let seen = read_all(&agent, "devlink", "look", Stream::Stdout).await;
    println!("inside devlink: {seen:?}");
    assert_eq!(wait(&agent, "devlink", "look").await, 0, "{seen}");
    // First the guest: its own directory got none of the devices or links.
    let after = guest_sh(vm, &list_guest_dir).await?;
    println!("guest {GUEST_DIR} after devlink: {after:?}");
    assert_eq!(
        after, before,
        "the agent wrote into the guest's {GUEST_DIR}"
    );
    assert!(
        after.contains("No such file"),
        "/run/dotdot exists in the guest: {after}"
    );
    // Then the container: everything asked for, beneath its root.
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines.first(), Some(&"devnull-ok"), "{seen}");
    assert_eq!(
        lines.get(1),
        Some(&GUEST_DIR),
        "/dev is still the image's link: {seen}"
    );
    for name in [
        "null",
        "zero",
        "urandom",
        "tty",
        "fd",
        "ptmx",
        "pts",
        "shm",
        "null-copy",
    ] {
        assert!(
            lines.contains(&name),
            "{name} missing from the container's /dev: {seen}"
        );
    }
    assert!(
        lines.contains(&"1"),
        "the `..` destination is not mounted at /run/dotdot in the container: {seen}"
    );
    assert_eq!(lines.last(), Some(&"paths-test"), "{seen}");

    // 2. A mount destination through a /proc magic link: refused, the path named.
    let root = make_rootfs(Path::new(BUSYBOX), vm.share(), "magic", |root| {
        std::os::unix::fs::symlink("/proc/self/root/tmp", root.join("data")).unwrap();
    });
    let mounts = json!([{"destination": "/data/vol", "type": "tmpfs", "source": "tmpfs"}]);
    let e = create(&agent, "magic", paths_spec(&root, &["true"], mounts))
        .await
        .expect_err("a destination through /proc/self/root was mounted");
    println!("magic link destination: {e}");
    assert!(
        e.contains("/data/vol") && e.contains("magic link"),
        "the error does not name the path and the cause: {e}"
    );

    let after = guest_sh(vm, &list_guest_dir).await?;
    assert_eq!(
        after, before,
        "the agent wrote into the guest's {GUEST_DIR}"
    );

    // 3. No procfs at /proc (it is at /realproc) and the image's own /proc files instead: the
    //    agent takes nothing from them (here a cap_last_cap of 1, which would leave every
    //    capability above 1 in the bounding set, for a setuid binary of the image to get).
    let root = make_rootfs(Path::new(BUSYBOX), vm.share(), "fakeproc", |root| {
        std::fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
        std::fs::write(root.join("proc/sys/kernel/cap_last_cap"), "1\n").unwrap();
    });
    let mut fake: serde_json::Value = serde_json::from_slice(&paths_spec(
        &root,
        &["grep", "CapBnd", "/realproc/self/status"],
        json!([]),
    ))
    .unwrap();
    fake["mounts"][0]["destination"] = json!("/realproc");
    fake["process"]["capabilities"] = json!({
        "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]
    });
    create_and_start(&agent, "fakeproc", serde_json::to_vec(&fake).unwrap()).await?;
    let status = read_all(&agent, "fakeproc", "", Stream::Stdout).await;
    assert_eq!(wait(&agent, "fakeproc", "").await, 0, "{status}");
    // CAP_KILL is capability 5: the bounding set is that bit alone.
    assert_eq!(status.trim(), "CapBnd:\t0000000000000020", "{status}");

    // 4. The init killed: an exec is refused, it never joins what may now own the init's pid.
    signal(&agent, "devlink", "", 9).await?;
    assert_eq!(wait(&agent, "devlink", "").await, 128 + 9);
    let e = exec(&agent, "devlink", "late", &["true"], false)
        .await
        .expect_err("an exec ran after its init exited");
    assert!(e.contains("not running") || e.contains("has exited"), "{e}");
    remove(&agent, "devlink").await?;
    Ok(())
}
