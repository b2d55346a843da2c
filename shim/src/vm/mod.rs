//! One VM: booted from a [`VmSpec`], with its directory, its hypervisor, its agent connection
//! and its logs. A VM has no pod identity: a sandbox adopts one (see `sandbox`).

pub mod cleanup;
pub mod launcher;
mod logs;
pub mod spec;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use protocol::agent::DestroySandboxRequest;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use self::spec::{validate_vm_id, vm_dir, VmSpec};
use crate::config::{Config, SharedFs};
use crate::guest::client::{Agent, AgentError};
use crate::guest_output::CONSOLE_DRAIN;
use crate::hypervisor::layout::MAX_SOCKET_PATH;
use crate::hypervisor::{self, log_tail, Devices, Hypervisor, HypervisorError, VmPaths};
use crate::resources::share::Share;

/// How long DestroySandbox may take during shutdown.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to let the VM exit by itself after DestroySandbox before QMP quit. Nothing in the
/// guest needs flushing once the agent destroyed the sandbox (the shared fs writes through to
/// the host), so do not wait for the guest's own power-off.
const EXIT_GRACE: Duration = Duration::ZERO;
/// VMs started for one boot when the agent transport dies at start.
const BOOT_ATTEMPTS: u32 = 3;
/// How often the agent transport is checked while dialling the agent.
const TRANSPORT_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// After a QMP error during boot, how long to wait for QEMU's exit to be seen.
const QMP_EXIT_NOTICE: Duration = Duration::from_secs(2);
/// Console lines quoted in boot errors.
const CONSOLE_TAIL_LINES: usize = 30;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("invalid VM id {id:?}: {reason}")]
    InvalidId { id: String, reason: String },
    #[error("VM directory {}: {source}", path.display())]
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
    /// What it was booted from (a pooled VM fits a pod only if the pod would get the same).
    config: Config,
    paths: VmPaths,
    /// A pooled VM's first directory, now a symlink to `paths.dir` (see [`Vm::take_id`]).
    alias: Option<PathBuf>,
    hypervisor: Box<dyn Hypervisor>,
    agent: Agent,
    exited: watch::Receiver<bool>,
    share: Share,
    console_log: PathBuf,
    log_task: Option<JoinHandle<()>>,
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

impl Vm {
    /// Creates the VM's directory, starts the VM and connects to its agent. On error,
    /// nothing is left behind.
    pub async fn boot(spec: &VmSpec) -> Result<Vm, VmError> {
        let (config, vm_id) = (&spec.config, spec.id.as_str());
        validate_vm_id(vm_id)?;
        let started = Instant::now();
        let dir = vm_dir(config, vm_id);
        let paths = VmPaths::new(&dir);
        let share = Share::in_vm_dir(&dir, config.vmm.guest().shared_fs);
        let devices = Devices {
            shared_dir: share.host_dir().to_path_buf(),
            net: spec.net.clone(),
        };
        for s in paths.sockets() {
            if s.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(VmError::SocketPathTooLong { path: s });
            }
        }
        let mut attempt = 1;
        loop {
            create_vm_dir(&dir).await?;
            if let Err(e) = prepare_share(&share).await {
                let _ = cleanup::remove_vm_dir(&dir).await;
                return Err(e);
            }
            let mut hv = hypervisor::new(
                config,
                devices.clone(),
                vm_id,
                paths.clone(),
                spec.cgroup.clone(),
            );
            match boot_in(config, vm_id, &paths, hv.as_mut()).await {
                Ok(agent) => {
                    let boot_time = started.elapsed();
                    tracing::info!(vm = %vm_id, "VM ready: agent answered {boot_time:?} after boot started");
                    let log_task = hv
                        .agent_dialer()
                        .map(|d| logs::forward_agent_logs(d, vm_id.to_string()));
                    return Ok(Vm {
                        id: vm_id.to_string(),
                        config: config.clone(),
                        alias: None,
                        exited: hv.exited(),
                        share,
                        console_log: paths.console_log(),
                        paths,
                        hypervisor: hv,
                        agent,
                        log_task,
                        boot_time,
                    });
                }
                Err(e) => {
                    tracing::warn!(vm = %vm_id, "boot failed: {e}");
                    if let Err(ce) = teardown(hv.as_mut(), &paths, Duration::ZERO).await {
                        tracing::warn!(vm = %vm_id, "cleanup after failed boot: {ce}");
                        return Err(e);
                    }
                    // A transport that died at start (a helper's race, not the configuration)
                    // gets one more VM.
                    if matches!(e, VmError::TransportBroken { .. }) && attempt < BOOT_ATTEMPTS {
                        attempt += 1;
                        tracing::warn!(vm = %vm_id, "booting the VM again (attempt {attempt} of {BOOT_ATTEMPTS})");
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
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// QEMU's and its helpers' pids, as their pid files record them.
    pub fn process_ids(&self) -> Vec<u32> {
        self.paths.recorded_pids()
    }

    /// Renames a pooled VM after the sandbox adopting it, so everything that finds a sandbox's
    /// VM by the sandbox id (a dead shim's `delete`, logs, the tests) finds this one. Its
    /// processes keep the paths they were started with through a symlink from the old name;
    /// the old name is recorded in the directory for a dead shim's cleanup.
    pub async fn take_id(&mut self, id: &str) -> Result<(), VmError> {
        validate_vm_id(id)?;
        let old = self.paths.dir.clone();
        let new = old.with_file_name(id);
        let err = |path: &Path, source| VmError::Dir {
            path: path.to_path_buf(),
            source,
        };
        tokio::fs::write(
            self.paths.origin_record(),
            old.as_os_str().as_encoded_bytes(),
        )
        .await
        .map_err(|e| err(&old, e))?;
        let (from, to) = (old.clone(), new.clone());
        tokio::task::spawn_blocking(move || {
            nix::fcntl::renameat2(
                None,
                &from,
                None,
                &to,
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            )
        })
        .await
        .map_err(|e| err(&new, std::io::Error::other(e)))?
        .map_err(|e| err(&new, e.into()))?;
        // The symlink names its target relatively: both are in the run root.
        if let Err(e) = tokio::fs::symlink(id, &old).await {
            let _ = tokio::fs::rename(&new, &old).await;
            return Err(err(&old, e));
        }
        tracing::info!(vm = %self.id, "pooled VM adopted as {id}");
        self.id = id.to_string();
        self.paths = VmPaths::new(&new);
        self.share = Share::in_vm_dir(&new, self.share.kind());
        self.console_log = self.paths.console_log();
        self.alias = Some(old);
        Ok(())
    }
    pub fn dir(&self) -> &Path {
        &self.paths.dir
    }
    /// The directory shared with the guest.
    pub fn share(&self) -> &Share {
        &self.share
    }
    /// The guest console's capped file (`guest_output::console`).
    pub fn console_log(&self) -> &Path {
        &self.console_log
    }
    /// The last `lines` lines of the guest console.
    pub fn console_tail(&self, lines: usize) -> String {
        console_tail(self.hypervisor.as_ref(), lines)
    }
    /// From `Vm::boot` being called to the agent answering.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Becomes true when the VM process died.
    pub fn exited(&self) -> watch::Receiver<bool> {
        self.exited.clone()
    }

    /// DestroySandbox (best effort), stop the VM and its helpers, unmount what is under the
    /// sandbox dir and remove it.
    pub async fn shutdown(self) -> Result<(), VmError> {
        self.stop(true).await
    }

    /// [`Vm::shutdown`] without asking the guest: it stopped answering (a DestroySandbox
    /// would only wait out its timeout) or cannot be trusted.
    pub async fn abandon(self) -> Result<(), VmError> {
        self.stop(false).await
    }

    async fn stop(mut self, ask_guest: bool) -> Result<(), VmError> {
        let mut grace = Duration::ZERO;
        if ask_guest && !*self.exited.borrow() {
            let agent = self.agent.with_timeout(DESTROY_TIMEOUT);
            match agent.destroy_sandbox(DestroySandboxRequest::new()).await {
                Ok(_) => grace = EXIT_GRACE,
                Err(e) => tracing::warn!(sandbox = %self.id, "{e} (stopping the VM anyway)"),
            }
        }
        if let Some(t) = self.log_task.take() {
            t.abort();
        }
        teardown(self.hypervisor.as_mut(), &self.paths, grace).await?;
        if let Some(alias) = self.alias.take() {
            cleanup::remove_alias(&alias).await;
        }
        tracing::info!(sandbox = %self.id, "VM stopped and cleaned up");
        Ok(())
    }
}

async fn create_vm_dir(dir: &Path) -> Result<(), VmError> {
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

/// Lays out the share (`mounts/` and its read-only export) before the hypervisor exports it.
async fn prepare_share(share: &Share) -> Result<(), VmError> {
    if share.kind() == SharedFs::None {
        return Ok(());
    }
    let s = share.clone();
    tokio::task::spawn_blocking(move || s.prepare())
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|source| VmError::Dir {
            path: share.host_dir().to_path_buf(),
            source,
        })
}

/// Starts the hypervisor and connects to the agent, failing early if the VM dies.
async fn boot_in(
    config: &Config,
    id: &str,
    paths: &VmPaths,
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
    let connected = tokio::select! {
        r = connect => Some(r),
        reason = transport_broken(hv) => return Err(VmError::TransportBroken { reason }),
        _ = exited.wait_for(|e| *e) => None,
    };
    let vmm_exited = match connected {
        // A QMP connection that breaks while the VM boots usually means QEMU died (a device
        // it could not set up, say): once its exit is seen, say so with its output.
        Some(Err(VmError::Hypervisor(HypervisorError::Qmp(e)))) => {
            match tokio::time::timeout(QMP_EXIT_NOTICE, exited.wait_for(|e| *e)).await {
                Ok(Ok(_)) => hv.exit_status().unwrap_or_else(|| "unknown status".into()),
                _ => return Err(VmError::Hypervisor(HypervisorError::Qmp(e))),
            }
        }
        Some(r) => {
            return r.map_err(|e| match e {
                VmError::Agent { source, .. } => VmError::Agent {
                    source,
                    console_tail: console_tail(hv, CONSOLE_TAIL_LINES),
                },
                VmError::Hypervisor(HypervisorError::GuestNotReady(reason)) => {
                    VmError::GuestNotReady {
                        reason,
                        console_tail: console_tail(hv, CONSOLE_TAIL_LINES),
                    }
                }
                other => other,
            })
        }
        None => hv.exit_status().unwrap_or_else(|| "unknown status".into()),
    };
    // The VMM is gone: its console's last bytes are on their way (bounded wait).
    if let Some(c) = hv.console() {
        c.drained(CONSOLE_DRAIN).await;
    }
    Err(VmError::Exited {
        status: vmm_exited,
        console_tail: [
            log_tail(&paths.log("qemu"), 10),
            console_tail(hv, CONSOLE_TAIL_LINES),
        ]
        .join("\n"),
    })
}

/// The newest lines of the guest console (empty if the backend has none).
fn console_tail(hv: &dyn Hypervisor, lines: usize) -> String {
    hv.console().map(|c| c.tail(lines)).unwrap_or_default()
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

/// Stops the hypervisor, unmounts and removes the VM dir.
async fn teardown(
    hv: &mut dyn Hypervisor,
    paths: &VmPaths,
    grace: Duration,
) -> Result<(), VmError> {
    hv.stop(grace).await?;
    cleanup::remove_vm_dir(&paths.dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let h = c.vmm.qemu_mut().expect("QEMU by default");
        h.path = "/bin/true".into();
        h.guest.kernel = script(bin.path(), "vmlinux", "");
        h.guest.initrd = script(bin.path(), "initrd", "");
        h.guest.shared_fs = crate::config::SharedFs::VirtioFs;
        h.vsock = crate::config::VsockMode::VhostUser;
        h.guest.virtio_fs_daemon = script(
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
        let err = Vm::boot(&VmSpec::new("s1", c))
            .await
            .expect_err("must fail");
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
        let h = c.vmm.qemu_mut().expect("QEMU by default");
        h.path = "/bin/true".into();
        h.guest.kernel = root.path().join("no-vmlinux");
        h.vsock = crate::config::VsockMode::VhostUser;
        c.source = Some("/etc/x.toml".into());
        let err = Vm::boot(&VmSpec::new("s1", c))
            .await
            .expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("no-vmlinux"), "{msg}");
        assert!(
            msg.contains("[hypervisor.qemu] kernel in /etc/x.toml"),
            "{msg}"
        );
        assert!(!root.path().join("s1").exists(), "sandbox dir left behind");
    }
}
