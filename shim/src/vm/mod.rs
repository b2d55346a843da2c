//! One sandbox VM: its directory, its hypervisor, its agent connection and its lifecycle.

mod logs;
pub mod mounts;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use protocol::agent::{DestroySandboxRequest, Storage};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent::{Agent, AgentError};
use crate::config::{Backend, Config, SharedFs};
use crate::hypervisor::clh::{Clh, ClhConfig};
use crate::hypervisor::layout::{run_root, MAX_SOCKET_PATH};
use crate::hypervisor::qemu::Qemu;
use crate::hypervisor::{log_tail, Hypervisor, HypervisorError, SandboxPaths};

/// How long DestroySandbox may take during shutdown.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to let the VM exit by itself after DestroySandbox before QMP quit. Nothing in the
/// guest needs flushing once the agent destroyed the sandbox (the shared fs writes through to
/// the host), so do not wait for the guest's own power-off.
const EXIT_GRACE: Duration = Duration::ZERO;
/// VMs started for one boot when the agent transport dies at start.
const BOOT_ATTEMPTS: u32 = 2;
/// How often the agent transport is checked while dialling the agent.
const TRANSPORT_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Console lines quoted in boot errors.
const CONSOLE_TAIL_LINES: usize = 30;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("invalid sandbox id {id:?}: {reason}")]
    InvalidId { id: String, reason: String },
    #[error("sandbox directory {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("socket path {} is longer than {MAX_SOCKET_PATH} bytes (use a shorter run dir)", path.display())]
    SocketPathTooLong { path: PathBuf },
    #[error("{0}")]
    Hypervisor(#[from] HypervisorError),
    #[error("{source}{}", console_suffix(console_tail))]
    Agent {
        source: AgentError,
        console_tail: String,
    },
    #[error(
        "the VM exited ({status}) before the agent answered{}",
        console_suffix(console_tail)
    )]
    Exited {
        status: String,
        console_tail: String,
    },
    #[error("{reason}{}", console_suffix(console_tail))]
    GuestNotReady {
        reason: String,
        console_tail: String,
    },
    #[error("the agent transport failed: {reason}")]
    TransportBroken { reason: String },
    #[error("the hypervisor gave no agent address")]
    NoDialer,
}

fn console_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; guest console:\n{}", tail.trim_end())
    }
}

pub struct Vm {
    id: String,
    paths: SandboxPaths,
    hypervisor: Box<dyn Hypervisor>,
    agent: Agent,
    /// Closes the agent's gate while the VM is paused.
    paused: watch::Sender<bool>,
    exited: watch::Receiver<bool>,
    shared_dir: PathBuf,
    console_log: PathBuf,
    log_task: Option<JoinHandle<()>>,
    /// True once the log forwarder's dial is over (see [`Vm::pause`]).
    log_dialled: Option<watch::Receiver<bool>>,
    console_task: JoinHandle<()>,
    boot_time: Duration,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("id", &self.id)
            .field("dir", &self.paths.dir)
            .field("hypervisor", &self.hypervisor.name())
            .finish_non_exhaustive()
    }
}

/// Sandbox ids become directory names and QEMU option values: the id rule both sides share.
pub fn validate_sandbox_id(id: &str) -> Result<(), VmError> {
    protocol::rules::check_id(id).map_err(|reason| VmError::InvalidId {
        id: id.to_string(),
        reason: reason.to_string(),
    })
}

/// The directory of sandbox `id` for `config`: `[runtime] run_dir`, `$KATA_RS_RUN_DIR` or
/// /run/kata-containers, plus the id.
pub fn sandbox_dir(config: &Config, id: &str) -> PathBuf {
    config
        .runtime
        .run_dir
        .clone()
        .unwrap_or_else(run_root)
        .join(id)
}

impl Vm {
    /// Creates the sandbox directory, starts the VM and connects to its agent. On error,
    /// nothing is left behind.
    pub async fn boot(config: &Config, sandbox_id: &str) -> Result<Vm, VmError> {
        validate_sandbox_id(sandbox_id)?;
        let started = Instant::now();
        let dir = sandbox_dir(config, sandbox_id);
        let paths = SandboxPaths::new(&dir);
        for s in paths.sockets() {
            if s.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(VmError::SocketPathTooLong { path: s });
            }
        }
        let mut attempt = 1;
        loop {
            create_sandbox_dir(&dir).await?;
            let mut hv = new_hypervisor(config, sandbox_id, &paths);
            match boot_in(config, sandbox_id, &paths, hv.as_mut()).await {
                Ok(agent) => {
                    let (paused, gate) = watch::channel(false);
                    let agent = agent.gated(gate);
                    let boot_time = started.elapsed();
                    tracing::info!(sandbox = %sandbox_id, "VM ready: agent answered {boot_time:?} after boot started");
                    let (log_task, log_dialled) = hv
                        .agent_dialer()
                        .map(|d| logs::forward_agent_logs(d, sandbox_id.to_string()))
                        .unzip();
                    let console_task =
                        logs::forward_console(paths.console_log(), sandbox_id.to_string());
                    return Ok(Vm {
                        id: sandbox_id.to_string(),
                        exited: hv.exited(),
                        shared_dir: paths.shared(),
                        console_log: paths.console_log(),
                        paths,
                        hypervisor: hv,
                        agent,
                        paused,
                        log_task,
                        log_dialled,
                        console_task,
                        boot_time,
                    });
                }
                Err(e) => {
                    tracing::warn!(sandbox = %sandbox_id, "boot failed: {e}");
                    if let Err(ce) = teardown(hv.as_mut(), &paths, Duration::ZERO).await {
                        tracing::warn!(sandbox = %sandbox_id, "cleanup after failed boot: {ce}");
                        return Err(e);
                    }
                    // A transport that died at start (a helper's race, not the configuration)
                    // gets one more VM.
                    if matches!(e, VmError::TransportBroken { .. }) && attempt < BOOT_ATTEMPTS {
                        attempt += 1;
                        tracing::warn!(sandbox = %sandbox_id, "booting the VM again (attempt {attempt} of {BOOT_ATTEMPTS})");
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn agent(&self) -> &Agent {
        &self.agent
    }
    pub fn dir(&self) -> &Path {
        &self.paths.dir
    }
    /// Host side of the shared directory (what the guest sees at GUEST_SHARED_DIR).
    pub fn shared_dir(&self) -> &Path {
        &self.shared_dir
    }
    pub fn console_log(&self) -> &Path {
        &self.console_log
    }
    /// From `Vm::boot` being called to the agent answering.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The Storage for CreateSandbox that mounts the shared directory in the guest.
    pub fn shared_storage(&self) -> Storage {
        shared_storage(self.hypervisor.shared_fs())
    }

    /// Becomes true when the VM process died.
    pub fn exited(&self) -> watch::Receiver<bool> {
        self.exited.clone()
    }

    /// Pauses the VM (QMP stop). Agent requests made meanwhile wait for [`Vm::resume`].
    pub async fn pause(&self) -> Result<(), VmError> {
        // A CONNECT to the log port still in flight would reach a paused guest and wedge
        // vhost-device-vsock 0.3: let the dial (bounded by its own deadline) finish first.
        if let Some(mut dialled) = self.log_dialled.clone() {
            let _ = tokio::time::timeout(logs::LOG_DIAL_TIMEOUT, dialled.wait_for(|d| *d)).await;
        }
        self.paused.send_replace(true);
        let r = self.hypervisor.pause().await;
        if r.is_err() {
            self.paused.send_replace(false);
        }
        Ok(r?)
    }

    pub async fn resume(&self) -> Result<(), VmError> {
        self.hypervisor.resume().await?;
        self.paused.send_replace(false);
        Ok(())
    }

    /// DestroySandbox (best effort), stop the VM and its helpers, unmount what is under the
    /// sandbox dir and remove it.
    pub async fn shutdown(mut self) -> Result<(), VmError> {
        let mut grace = Duration::ZERO;
        // A paused VM gets no DestroySandbox (it could not answer): it is stopped directly.
        let paused = *self.paused.borrow();
        if !paused && !*self.exited.borrow() {
            let agent = self.agent.with_timeout(DESTROY_TIMEOUT);
            match agent.destroy_sandbox(DestroySandboxRequest::new()).await {
                Ok(_) => grace = EXIT_GRACE,
                Err(e) => tracing::warn!(sandbox = %self.id, "{e} (stopping the VM anyway)"),
            }
        }
        if let Some(t) = self.log_task.take() {
            t.abort();
        }
        self.console_task.abort();
        teardown(self.hypervisor.as_mut(), &self.paths, grace).await?;
        tracing::info!(sandbox = %self.id, "VM stopped and cleaned up");
        Ok(())
    }
}

/// The Storage the agent mounts at GUEST_SHARED_DIR for a shared-fs kind.
pub fn shared_storage(kind: SharedFs) -> Storage {
    let mut s = Storage::new();
    s.source = protocol::SHARED_FS_TAG.to_string();
    s.mount_point = protocol::GUEST_SHARED_DIR.to_string();
    match kind {
        SharedFs::VirtioFs | SharedFs::None => {
            s.driver = "virtio-fs".into();
            s.fstype = "virtiofs".into();
        }
        SharedFs::Virtio9p => {
            s.driver = "9p".into();
            s.fstype = "9p".into();
            s.options = [
                "trans=virtio",
                "version=9p2000.L",
                "msize=512000",
                "cache=mmap",
            ]
            .map(String::from)
            .to_vec();
        }
    }
    s
}

async fn create_sandbox_dir(dir: &Path) -> Result<(), VmError> {
    let err = |source| VmError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    if let Some(root) = dir.parent() {
        tokio::fs::create_dir_all(root).await.map_err(err)?;
    }
    let mut b = tokio::fs::DirBuilder::new();
    b.mode(0o700);
    b.create(dir).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            VmError::Dir {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    e.kind(),
                    "already exists (another sandbox with this id, or a leftover: `containerd-shim-kata-v2 delete` cleans it)",
                ),
            }
        } else {
            err(e)
        }
    })
}

/// Starts the hypervisor and connects to the agent, failing early if the VM dies.
async fn boot_in(
    config: &Config,
    id: &str,
    paths: &SandboxPaths,
    hv: &mut dyn Hypervisor,
) -> Result<Agent, VmError> {
    hv.start().await?;
    let hv: &dyn Hypervisor = hv;
    let dialer = hv.agent_dialer().ok_or(VmError::NoDialer)?;
    let mut exited = hv.exited();
    let timeout = config.agent.dial_timeout;
    tracing::debug!(sandbox = %id, ?dialer, "connecting to the agent");
    let connect = async {
        let started = Instant::now();
        hv.wait_agent_transport(timeout).await?;
        let left = timeout.saturating_sub(started.elapsed());
        Agent::connect(&dialer, left.max(Duration::from_millis(100)))
            .await
            .map_err(|source| VmError::Agent {
                source,
                console_tail: String::new(),
            })
    };
    tokio::select! {
        r = connect => r.map_err(|e| match e {
            VmError::Agent { source, .. } => VmError::Agent {
                source,
                console_tail: log_tail(&paths.console_log(), CONSOLE_TAIL_LINES),
            },
            VmError::Hypervisor(HypervisorError::GuestNotReady(reason)) => VmError::GuestNotReady {
                reason,
                console_tail: log_tail(&paths.console_log(), CONSOLE_TAIL_LINES),
            },
            other => other,
        }),
        reason = transport_broken(hv) => Err(VmError::TransportBroken { reason }),
        _ = exited.wait_for(|e| *e) => Err(VmError::Exited {
            status: hv.exit_status().unwrap_or_else(|| "unknown status".into()),
            console_tail: [
                log_tail(&paths.log("qemu"), 10),
                log_tail(&paths.console_log(), CONSOLE_TAIL_LINES),
            ]
            .join("\n"),
        }),
    }
}

/// Resolves when the hypervisor reports its agent transport dead (a poll: no event for it).
async fn transport_broken(hv: &dyn Hypervisor) -> String {
    loop {
        tokio::time::sleep(TRANSPORT_CHECK_INTERVAL).await;
        if let Some(reason) = hv.agent_transport_broken().await {
            return reason;
        }
    }
}

fn new_hypervisor(config: &Config, id: &str, paths: &SandboxPaths) -> Box<dyn Hypervisor> {
    match &config.backend {
        Backend::Qemu => Box::new(Qemu::new(config, id, paths.clone())),
        Backend::Clh { path } => Box::new(Clh::new(
            config,
            ClhConfig::from_qemu_like(&config.hypervisor, path.clone()),
            id,
            paths.clone(),
        )),
    }
}

/// Stops the hypervisor, unmounts and removes the sandbox dir.
async fn teardown(
    hv: &mut dyn Hypervisor,
    paths: &SandboxPaths,
    grace: Duration,
) -> Result<(), VmError> {
    hv.stop(grace).await?;
    remove_sandbox_dir(&paths.dir).await
}

/// Unmounts everything under `dir` and removes it.
async fn remove_sandbox_dir(dir: &Path) -> Result<(), VmError> {
    let d = dir.to_path_buf();
    let errors = tokio::task::spawn_blocking(move || mounts::unmount_all_under(&d))
        .await
        .map_err(|e| VmError::Dir {
            path: dir.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
    if !errors.is_empty() {
        return Err(VmError::Dir {
            path: dir.to_path_buf(),
            source: std::io::Error::other(errors.join("; ")),
        });
    }
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(VmError::Dir {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// For a shim that died: kill the processes recorded in the sandbox dir's pid files (only if
/// they still are ours: their command line names the dir), unmount and remove the dir.
pub async fn cleanup_sandbox_dir(sandbox_id: &str) -> Result<(), VmError> {
    validate_sandbox_id(sandbox_id)?;
    cleanup_dir(&run_root().join(sandbox_id)).await
}

/// [`cleanup_sandbox_dir`] for an explicit directory.
pub async fn cleanup_dir(dir: &Path) -> Result<(), VmError> {
    if !dir.exists() {
        return Ok(());
    }
    for name in ["qemu", "virtiofsd", "vhost-device-vsock"] {
        let pidfile = SandboxPaths::new(dir).pidfile(name);
        let Ok(text) = tokio::fs::read_to_string(&pidfile).await else {
            continue;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            continue;
        };
        if pid <= 1 {
            continue;
        }
        // Only a process whose command line mentions this dir is ours (pids get reused).
        let cmdline = tokio::fs::read(format!("/proc/{pid}/cmdline"))
            .await
            .unwrap_or_default();
        let needle = dir.as_os_str().as_encoded_bytes();
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            tracing::info!(dir = %dir.display(), name, pid, "killing leftover process");
            let p = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            wait_gone(pid).await;
        }
    }
    remove_sandbox_dir(dir).await
}

/// Waits (bounded) until /proc/<pid> is gone or a zombie: a killed process we are not the
/// parent of has no event to wait on.
async fn wait_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tokio::fs::read_to_string(format!("/proc/{pid}/stat")).await {
            Err(_) => return,
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                return
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_sandbox_id("abc-123_x.y").is_ok());
        assert!(validate_sandbox_id(&"a".repeat(64)).is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b", "a,b"] {
            assert!(validate_sandbox_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn storages() {
        let s = shared_storage(SharedFs::VirtioFs);
        assert_eq!(s.driver, "virtio-fs");
        assert_eq!(s.fstype, "virtiofs");
        assert_eq!(s.source, protocol::SHARED_FS_TAG);
        assert_eq!(s.mount_point, protocol::GUEST_SHARED_DIR);
        assert!(s.options.is_empty());
        let s = shared_storage(SharedFs::Virtio9p);
        assert_eq!(s.driver, "9p");
        assert_eq!(s.fstype, "9p");
        assert_eq!(
            s.options,
            [
                "trans=virtio",
                "version=9p2000.L",
                "msize=512000",
                "cache=mmap"
            ]
        );
    }

    #[tokio::test]
    async fn cleanup_kills_only_our_leftovers_and_removes_the_dir() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("s1");
        std::fs::create_dir(&dir).expect("dir");
        let paths = SandboxPaths::new(&dir);
        // A leftover "QEMU": its command line names the sandbox dir.
        let mut ours = std::process::Command::new("sh")
            .arg("-c")
            .arg("sleep 100")
            .arg(&dir)
            .spawn()
            .expect("spawn");
        std::fs::write(paths.pidfile("qemu"), format!("{}\n", ours.id())).expect("pidfile");
        // A stranger that reused a recorded pid: must survive.
        let mut stranger = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .expect("spawn");
        std::fs::write(paths.pidfile("virtiofsd"), format!("{}\n", stranger.id()))
            .expect("pidfile");
        cleanup_dir(&dir).await.expect("cleanup");
        assert!(!dir.exists());
        let status = ours.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(
            stranger.try_wait().expect("try_wait").is_none(),
            "stranger killed"
        );
        stranger.kill().expect("kill");
        stranger.wait().expect("reap");
        // A second cleanup of a gone dir is fine.
        cleanup_dir(&dir).await.expect("idempotent");
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("script");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    /// Processes whose command line names `dir`.
    fn processes_naming(dir: &Path) -> Vec<String> {
        let needle = dir.display().to_string();
        let mut found = Vec::new();
        for p in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle) {
                found.push(cmdline);
            }
        }
        found
    }

    /// A helper daemon dying at start fails the boot with its output, and the other daemon,
    /// the shared-dir mount and the sandbox dir are all gone afterwards. Needs root (mount).
    #[tokio::test]
    async fn failing_daemon_fails_boot_with_its_output_and_leaves_nothing() {
        let root = tempfile::tempdir().expect("tempdir");
        let bin = tempfile::tempdir().expect("tempdir");
        let mut c = Config::default();
        c.runtime.run_dir = Some(root.path().to_path_buf());
        c.source = Some("/etc/x.toml".into());
        let h = &mut c.hypervisor;
        h.path = "/bin/true".into();
        h.kernel = script(bin.path(), "vmlinux", "");
        h.initrd = script(bin.path(), "initrd", "");
        h.shared_fs = SharedFs::VirtioFs;
        h.vsock = crate::config::VsockMode::VhostUser;
        h.virtio_fs_daemon = script(
            bin.path(),
            "virtiofsd",
            "echo 'cannot serve: boom' >&2; exit 3",
        );
        // A vsock daemon that comes up fine: it must be stopped when the boot fails.
        h.vhost_user_vsock_daemon = script(
            bin.path(),
            "vsockd",
            "for a; do case $a in --socket=*) touch \"${a#--socket=}\";; esac; done; sleep 100",
        );
        let err = Vm::boot(&c, "s1").await.expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("virtiofsd exited (exit status: 3)"), "{msg}");
        assert!(msg.contains("cannot serve: boom"), "{msg}");
        let dir = root.path().join("s1");
        assert!(!dir.exists(), "sandbox dir left behind");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(
            !mounts.contains(&dir.display().to_string()),
            "mount left behind"
        );
        assert!(
            processes_naming(&dir).is_empty(),
            "{:?}",
            processes_naming(&dir)
        );
    }

    #[tokio::test]
    async fn boot_with_missing_kernel_names_it_and_leaves_nothing() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut c = Config::default();
        c.runtime.run_dir = Some(root.path().to_path_buf());
        c.hypervisor.path = "/bin/true".into();
        c.hypervisor.kernel = root.path().join("no-vmlinux");
        c.hypervisor.vsock = crate::config::VsockMode::VhostUser;
        c.source = Some("/etc/x.toml".into());
        let err = Vm::boot(&c, "s1").await.expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("no-vmlinux"), "{msg}");
        assert!(
            msg.contains("[hypervisor.qemu] kernel in /etc/x.toml"),
            "{msg}"
        );
        assert!(!root.path().join("s1").exists(), "sandbox dir left behind");
    }
}
