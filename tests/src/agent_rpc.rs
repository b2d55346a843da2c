//! Drives the agent API directly over a VM booted with the shim's `Vm::boot`, no containerd.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use kata_shim::config::Config;
use kata_shim::guest::client::Agent;
use kata_shim::guest::vsock::Dialer;
use kata_shim::hypervisor::VmPaths;
use kata_shim::resources::share::{guest_rootfs, Share};
use kata_shim::vm::{Vm, VmSpec};
use protocol::agent::{
    CreateContainerRequest, ExecProcessRequest, ReadStreamRequest, RemoveContainerRequest,
    SignalProcessRequest, StartContainerRequest, WaitProcessRequest,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{require_built, top_dir, unique_id, wait_clean};

/// busybox-static of the host arch (the x86_64 guest's arch).
pub const BUSYBOX: &str = "/bin/busybox";
/// Each agent call and debug console session is bounded by this: WaitProcess and ReadStdout
/// block until the guest process acts.
pub const STEP: Duration = Duration::from_secs(60);
/// How long a suite may drive its VM, all steps together.
pub const DRIVE_LIMIT: Duration = Duration::from_secs(300);

/// Busybox applets linked into every rootfs: what the suites' containers run.
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "hostname", "tty", "ls", "id", "true", "mkdir", "ip", "grep",
    "readlink",
];

/// The runtime config `default` (relative to the checkout) of one guest arch, with the guest
/// debug console on (the guest image carries a busybox shell) and development overrides from
/// the environment (`<env_prefix>_CONFIG`, `<env_prefix>_INITRD`, `<env_prefix>_KERNEL`).
pub fn guest_config(default: &str, env_prefix: &str) -> Config {
    let var = |name: &str| std::env::var_os(format!("{env_prefix}_{name}")).map(PathBuf::from);
    let path = var("CONFIG").unwrap_or_else(|| top_dir().join(default));
    require_built(std::slice::from_ref(&path));
    let mut config =
        Config::from_file(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    if let Some(p) = var("INITRD") {
        config.vmm.guest_mut().initrd = p;
    }
    if let Some(p) = var("KERNEL") {
        config.vmm.guest_mut().kernel = p;
    }
    require_built(&[
        config.vmm.guest().kernel.clone(),
        config.vmm.guest().initrd.clone(),
    ]);
    let guest = config.vmm.guest_mut();
    guest.kernel_params = format!("{} agent.debug_console", guest.kernel_params);
    config
}

/// What a suite does with its booted VM, given the VM and its sandbox id; an error fails the
/// test.
pub type Drive<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;

/// Boots the guest of `config` as a fresh sandbox named after `prefix`, runs `drive` on it
/// (bounded by [`DRIVE_LIMIT`]), shuts the VM down and checks that it left nothing behind. A
/// failed or timed out drive fails the test with the guest console in the message.
pub async fn run_in_vm(
    config: Config,
    prefix: &str,
    drive: impl for<'a> FnOnce(&'a Vm, &'a str) -> Drive<'a>,
) {
    let sandbox_id = unique_id(prefix);
    let vm = Vm::boot(&VmSpec::new(sandbox_id.clone(), config))
        .await
        .unwrap_or_else(|e| panic!("booting the VM: {e}"));
    let result = tokio::time::timeout(DRIVE_LIMIT, drive(&vm, &sandbox_id)).await;
    let console = std::fs::read_to_string(vm.console_log()).unwrap_or_default();
    // Shut down before failing, so that a failed test does not leave its VM running.
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

/// Creates the directories `dirs` (relative paths) under `root`.
pub fn make_dirs(root: &Path, dirs: &[&str]) {
    for d in dirs {
        std::fs::create_dir_all(root.join(d))
            .unwrap_or_else(|e| panic!("creating {}: {e}", root.join(d).display()));
    }
}

/// A rootfs of `busybox` and its [`APPLETS`] for container `cid`, where the shim puts a
/// container's (the host side of the share), after `plant` added what the test wants in it
/// (more directories, an image's hostile links). Returns its guest path.
pub fn make_rootfs(busybox: &Path, share: &Share, cid: &str, plant: impl FnOnce(&Path)) -> String {
    let root = share.rootfs_dir(cid);
    make_dirs(&root, &["bin", "proc", "sys", "etc"]);
    std::fs::copy(busybox, root.join("bin/busybox"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", busybox.display()));
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    plant(&root);
    // A mount of its own, as the shim's rootfs are: the export is read-only around it and
    // writable inside it.
    let st = crate::bounded("mount", std::time::Duration::from_secs(30))
        .arg("--bind")
        .arg(&root)
        .arg(&root)
        .status()
        .expect("mount --bind");
    assert!(st.success(), "mount --bind {}: {st}", root.display());
    guest_rootfs(cid)
}

/// An OCI spec for a container of rootfs `root` running `args` as root: the usual mounts
/// (proc, a tmpfs /dev, devpts, shm) and namespaces, with `extra` merged in (see
/// [`merge_json`]).
pub fn spec(root: &str, args: &[&str], extra: Value) -> Vec<u8> {
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "args": args,
            "cwd": "/",
            "env": ["PATH=/bin"],
            "user": {"uid": 0, "gid": 0},
            "noNewPrivileges": true
        },
        "root": {"path": root, "readonly": false},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                           {"type": "mount"}, {"type": "network"}],
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"]
        }
    });
    merge_json(&mut spec, extra);
    serde_json::to_vec(&spec).unwrap()
}

/// Merges `extra` into `base`: objects key by key, arrays appended to (so that `extra` adds
/// mounts or masked paths after the usual ones), anything else replaced.
pub fn merge_json(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (key, value) in extra {
                match base.get_mut(&key) {
                    Some(old) => merge_json(old, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (Value::Array(base), Value::Array(extra)) => base.extend(extra),
        (base, extra) => *base = extra,
    }
}

/// The host end of the VM's hybrid vsock, to reach the guest's other ports (logs, debug
/// console).
pub fn guest_dialer(vm: &Vm) -> Dialer {
    Dialer::Hybrid {
        uds_path: VmPaths::new(vm.dir()).hybrid_vsock(),
    }
}

/// Runs `script` in a guest shell (the debug console); returns what it printed between two
/// markers (the shell's prompts and echo are outside them).
pub async fn guest_sh(vm: &Vm, script: &str) -> Result<String, String> {
    let mut c = guest_dialer(vm)
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

/// Which output of a container process [`read_all`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Everything process `exec` of container `cid` writes to `stream`, up to its end.
pub async fn read_all(agent: &Agent, cid: &str, exec: &str, stream: Stream) -> String {
    let mut out = Vec::new();
    loop {
        let req = ReadStreamRequest {
            container_id: cid.into(),
            exec_id: exec.into(),
            len: 4096,
            ..Default::default()
        };
        let call = async {
            match stream {
                Stream::Stdout => agent.read_stdout(req).await,
                Stream::Stderr => agent.read_stderr(req).await,
            }
        };
        let resp = tokio::time::timeout(STEP, call)
            .await
            .unwrap_or_else(|_| panic!("reading {stream:?} of {cid}/{exec} timed out"))
            .unwrap_or_else(|e| panic!("reading {stream:?} of {cid}/{exec}: {e}"));
        if resp.data.is_empty() {
            return String::from_utf8_lossy(&out).into_owned();
        }
        out.extend_from_slice(&resp.data);
    }
}

/// Waits for process `exec` of container `cid` to exit; returns its status.
pub async fn wait(agent: &Agent, cid: &str, exec: &str) -> i32 {
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

/// CreateContainer; returns the init's pid, or the agent's error as text.
pub async fn create(agent: &Agent, cid: &str, spec: Vec<u8>) -> Result<u32, String> {
    agent
        .create_container(CreateContainerRequest {
            container_id: cid.into(),
            oci_spec_json: spec,
            ..Default::default()
        })
        .await
        .map(|r| r.pid)
        .map_err(|e| e.to_string())
}

/// CreateContainer then StartContainer: a running container from `spec`.
pub async fn create_and_start(agent: &Agent, cid: &str, spec: Vec<u8>) -> Result<(), String> {
    create(agent, cid, spec)
        .await
        .map_err(|e| format!("CreateContainer {cid}: {e}"))?;
    start(agent, cid).await
}

/// StartContainer: runs the init of a created container.
pub async fn start(agent: &Agent, cid: &str) -> Result<(), String> {
    agent
        .start_container(StartContainerRequest {
            container_id: cid.into(),
            ..Default::default()
        })
        .await
        .map(drop)
        .map_err(|e| format!("StartContainer {cid}: {e}"))
}

/// ExecProcess of `args` as root in container `cid`, on a terminal if `tty`; returns its pid,
/// or the agent's error as text.
pub async fn exec(
    agent: &Agent,
    cid: &str,
    eid: &str,
    args: &[&str],
    tty: bool,
) -> Result<u32, String> {
    let process = json!({"args": args, "cwd": "/", "env": ["PATH=/bin"], "terminal": tty,
                         "user": {"uid": 0, "gid": 0}});
    agent
        .exec_process(ExecProcessRequest {
            container_id: cid.into(),
            exec_id: eid.into(),
            process_json: serde_json::to_vec(&process).unwrap(),
            ..Default::default()
        })
        .await
        .map(|r| r.pid)
        .map_err(|e| e.to_string())
}

/// Sends `sig` to process `eid` of container `cid` (`""` is the init).
pub async fn signal(agent: &Agent, cid: &str, eid: &str, sig: u32) -> Result<(), String> {
    agent
        .signal_process(SignalProcessRequest {
            container_id: cid.into(),
            exec_id: eid.into(),
            signal: sig,
            ..Default::default()
        })
        .await
        .map(drop)
        .map_err(|e| format!("SignalProcess {cid}/{eid}: {e}"))
}

/// RemoveContainer.
pub async fn remove(agent: &Agent, cid: &str) -> Result<(), String> {
    agent
        .remove_container(RemoveContainerRequest {
            container_id: cid.into(),
            ..Default::default()
        })
        .await
        .map(drop)
        .map_err(|e| format!("RemoveContainer {cid}: {e}"))
}
