//! The agent keeps every path of a container beneath its root, end to end (the real guest booted
//! through the shim's `Vm::boot`, driven through the agent API like `agent_api.rs`): an image
//! whose `/dev` is an absolute symlink to a guest directory gets its devices inside its own
//! root, a mount destination climbing with `..` stays inside, a destination through a `/proc`
//! magic link is refused with an error naming it, and the guest's own directories are
//! untouched (looked at through the guest debug console); an image's own files at /proc (no
//! procfs there) do not weaken the bounding set. An exec joins the init's namespaces (through
//! its pidfd) and is refused once the init has exited.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_e2e::*;
use kata_shim::config::Config;
use kata_shim::guest::client::Agent;
use kata_shim::guest::vsock::Dialer;
use kata_shim::hypervisor::VmPaths;
use kata_shim::resources::share::{guest_rootfs, Share};
use kata_shim::vm::{Vm, VmSpec};
use protocol::agent::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// busybox-static of the host arch (the guest's arch here).
const BUSYBOX: &str = "/bin/busybox";
/// Each agent call and debug console session is bounded by this.
const STEP: Duration = Duration::from_secs(60);
/// The guest directory the image's `/dev` symlink names: it exists in the guest (a tmpfs the
/// agent mounts at boot), so an agent that followed the link would create device nodes there.
const GUEST_DIR: &str = "/tmp";

fn config() -> Config {
    let path = top_dir().join("build/configuration-qemu.toml");
    require_built(std::slice::from_ref(&path));
    let mut config =
        Config::from_file(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    require_built(&[
        config.vmm.guest().kernel.clone(),
        config.vmm.guest().initrd.clone(),
        PathBuf::from(BUSYBOX),
    ]);
    let guest = config.vmm.guest_mut();
    guest.kernel_params = format!("{} agent.debug_console", guest.kernel_params);
    config
}

/// A busybox rootfs for container `cid` in the share, made a mount of its own (the guest can
/// write only inside mounts), after `plant` put the image's hostile parts in it. Returns its
/// guest path.
fn make_rootfs(share: &Share, cid: &str, plant: impl FnOnce(&Path)) -> String {
    let root = share.rootfs_dir(cid);
    for d in ["bin", "proc", "sys", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copying busybox");
    for applet in [
        "sh", "ls", "cat", "grep", "readlink", "sleep", "hostname", "echo",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    plant(&root);
    let st = std::process::Command::new("timeout")
        .args(["30", "mount", "--bind"])
        .arg(&root)
        .arg(&root)
        .status()
        .expect("mount --bind");
    assert!(st.success(), "mount --bind {}: {st}", root.display());
    guest_rootfs(cid)
}

/// An OCI spec with the usual mounts (a tmpfs /dev, devpts, shm, ...) plus `extra`.
fn spec(root: &str, args: &[&str], extra: serde_json::Value) -> Vec<u8> {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
    ];
    if let serde_json::Value::Array(more) = extra {
        mounts.extend(more);
    }
    serde_json::to_vec(&json!({
        "ociVersion": "1.0.2",
        "hostname": "paths-test",
        "process": {
            "args": args, "cwd": "/", "env": ["PATH=/bin"],
            "user": {"uid": 0, "gid": 0},
            "noNewPrivileges": true
        },
        "root": {"path": root, "readonly": false},
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                           {"type": "mount"}, {"type": "network"}],
            "devices": [{"path": "/dev/null-copy", "type": "c", "major": 1, "minor": 3,
                         "fileMode": 420, "uid": 0, "gid": 0}],
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"]
        }
    }))
    .unwrap()
}

/// Runs `script` in a guest shell (the debug console); returns what it printed between two
/// markers (the shell's prompts and echo are outside them).
async fn guest_sh(vm: &Vm, script: &str) -> Result<String, String> {
    let dialer = Dialer::Hybrid {
        uds_path: VmPaths::new(vm.dir()).hybrid_vsock(),
    };
    let mut c = dialer
        .dial(protocol::DEBUG_CONSOLE_PORT)
        .await
        .map_err(|e| format!("dialing the debug console: {e}"))?;
    // $((...)) so that the markers appear only in the output, not in an echo of the input.
    let line = format!("echo BEGIN-$((1+1)); {script}; echo END-$((2+2)); exit\n");
    c.write_all(line.as_bytes())
        .await
        .map_err(|e| format!("writing to the debug console: {e}"))?;
    let mut out = Vec::new();
    tokio::time::timeout(STEP, c.read_to_end(&mut out))
        .await
        .map_err(|_| format!("the debug console did not finish {script:?}"))?
        .map_err(|e| format!("reading the debug console: {e}"))?;
    let out = String::from_utf8_lossy(&out);
    let body = out
        .split_once("BEGIN-2\n")
        .and_then(|(_, rest)| rest.split_once("END-4"))
        .map(|(body, _)| body.to_string());
    body.ok_or_else(|| format!("no output markers from the debug console: {out:?}"))
}

async fn read_stdout(agent: &Agent, cid: &str, exec: &str) -> String {
    let mut out = Vec::new();
    loop {
        let req = ReadStreamRequest {
            container_id: cid.into(),
            exec_id: exec.into(),
            len: 4096,
            ..Default::default()
        };
        let resp = tokio::time::timeout(STEP, agent.read_stdout(req))
            .await
            .expect("ReadStdout timed out")
            .expect("ReadStdout failed");
        if resp.data.is_empty() {
            return String::from_utf8_lossy(&out).into_owned();
        }
        out.extend_from_slice(&resp.data);
    }
}

async fn wait(agent: &Agent, cid: &str, exec: &str) -> i32 {
    let req = WaitProcessRequest {
        container_id: cid.into(),
        exec_id: exec.into(),
        ..Default::default()
    };
    tokio::time::timeout(STEP, agent.wait_process(req))
        .await
        .expect("WaitProcess timed out")
        .expect("WaitProcess failed")
        .status
}

async fn create(agent: &Agent, cid: &str, spec: Vec<u8>) -> Result<(), String> {
    agent
        .create_container(CreateContainerRequest {
            container_id: cid.into(),
            oci_spec_json: spec,
            ..Default::default()
        })
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

async fn exec(agent: &Agent, cid: &str, eid: &str, args: &[&str]) -> Result<(), String> {
    let process = json!({"args": args, "cwd": "/", "env": ["PATH=/bin"],
                         "user": {"uid": 0, "gid": 0}});
    agent
        .exec_process(ExecProcessRequest {
            container_id: cid.into(),
            exec_id: eid.into(),
            process_json: serde_json::to_vec(&process).unwrap(),
            ..Default::default()
        })
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_paths_resolve_beneath_the_root() {
    let sandbox_id = unique_id("guestpaths");
    let vm = Vm::boot(&VmSpec::new(sandbox_id.clone(), config()))
        .await
        .unwrap_or_else(|e| panic!("booting the VM: {e}"));
    let result = tokio::time::timeout(Duration::from_secs(300), drive(&vm, &sandbox_id)).await;
    let console = std::fs::read_to_string(vm.console_log()).unwrap_or_default();
    let down = vm.shutdown().await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{e}\nguest console:\n{console}"),
        Err(_) => panic!("the test timed out\nguest console:\n{console}"),
    }
    down.expect("shutting the VM down");
    let left = wait_clean(&sandbox_id, Duration::from_secs(15));
    assert!(left.is_empty(), "sandbox left things behind: {left:#?}");
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
    let root = make_rootfs(vm.share(), "devlink", |root| {
        std::os::unix::fs::symlink(GUEST_DIR, root.join("dev")).unwrap();
    });
    let extra = json!([{"destination": "/../../../run/dotdot", "type": "tmpfs",
                        "source": "tmpfs"}]);
    create(&agent, "devlink", spec(&root, &["sleep", "1000"], extra))
        .await
        .map_err(|e| format!("CreateContainer devlink: {e}"))?;
    agent
        .start_container(StartContainerRequest {
            container_id: "devlink".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("StartContainer devlink: {e}"))?;
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
    )
    .await
    .map_err(|e| format!("ExecProcess look: {e}"))?;
    let seen = read_stdout(&agent, "devlink", "look").await;
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
    let root = make_rootfs(vm.share(), "magic", |root| {
        std::os::unix::fs::symlink("/proc/self/root/tmp", root.join("data")).unwrap();
    });
    let extra = json!([{"destination": "/data/vol", "type": "tmpfs", "source": "tmpfs"}]);
    let e = create(&agent, "magic", spec(&root, &["true"], extra))
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
    let root = make_rootfs(vm.share(), "fakeproc", |root| {
        std::fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
        std::fs::write(root.join("proc/sys/kernel/cap_last_cap"), "1\n").unwrap();
    });
    let mut fake: serde_json::Value = serde_json::from_slice(&spec(
        &root,
        &["grep", "CapBnd", "/realproc/self/status"],
        json!([]),
    ))
    .unwrap();
    fake["mounts"][0]["destination"] = json!("/realproc");
    fake["process"]["capabilities"] = json!({
        "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]
    });
    create(&agent, "fakeproc", serde_json::to_vec(&fake).unwrap())
        .await
        .map_err(|e| format!("CreateContainer fakeproc: {e}"))?;
    agent
        .start_container(StartContainerRequest {
            container_id: "fakeproc".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("StartContainer fakeproc: {e}"))?;
    let status = read_stdout(&agent, "fakeproc", "").await;
    assert_eq!(wait(&agent, "fakeproc", "").await, 0, "{status}");
    // CAP_KILL is capability 5: the bounding set is that bit alone.
    assert_eq!(status.trim(), "CapBnd:\t0000000000000020", "{status}");

    // 4. The init killed: an exec is refused, it never joins what may now own the init's pid.
    agent
        .signal_process(SignalProcessRequest {
            container_id: "devlink".into(),
            signal: 9,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("SignalProcess: {e}"))?;
    assert_eq!(wait(&agent, "devlink", "").await, 128 + 9);
    let e = exec(&agent, "devlink", "late", &["true"])
        .await
        .expect_err("an exec ran after its init exited");
    assert!(e.contains("not running") || e.contains("has exited"), "{e}");
    agent
        .remove_container(RemoveContainerRequest {
            container_id: "devlink".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("RemoveContainer: {e}"))?;
    Ok(())
}
