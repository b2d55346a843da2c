//! A child process we started (QEMU or a helper daemon): its own process group, output to a
//! log file, a pid file for crash cleanup, and a watcher task that owns the tokio `Child`,
//! reaps it and tells everyone when it exited.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use super::HypervisorError;

/// The `cgroup.procs` files (one per cgroup hierarchy) every host process of a VM joins
/// before it executes, so it is accounted in the pod's cgroup from its first allocation.
/// Empty: processes stay in the shim's cgroup.
#[derive(Debug, Clone, Default)]
pub struct CgroupJoin(Option<Arc<Vec<OwnedFd>>>);

/// The same files (not just equal paths): two joins are equal when they share them.
impl PartialEq for CgroupJoin {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl CgroupJoin {
    pub fn new(procs: Vec<OwnedFd>) -> Self {
        CgroupJoin((!procs.is_empty()).then(|| Arc::new(procs)))
    }

    /// Makes `cmd`'s child write `0` (itself) to each file before exec; a failed write fails
    /// the spawn, so a process is never silently left outside the pod's cgroup.
    fn apply(&self, cmd: &mut Command) {
        let Some(procs) = self.0.clone() else {
            return;
        };
        // SAFETY: the closure runs in the child between fork and exec and calls only write(2)
        // on descriptors the parent keeps open (the Arc is held by `self` and the closure)
        // and reads errno, all async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                for f in procs.iter() {
                    if libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
}

#[derive(Debug)]
pub struct HostProcess {
    name: String,
    pid: u32,
    log: PathBuf,
    exited: watch::Receiver<bool>,
    status: Arc<Mutex<Option<ExitStatus>>>,
    signals: mpsc::UnboundedSender<Signal>,
}

impl HostProcess {
    /// Spawns `cmd` with stdin from /dev/null and stdout/stderr appended to `log`, in the
    /// cgroup of `cgroup`.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        log: &Path,
        pidfile: &Path,
        cgroup: &CgroupJoin,
    ) -> Result<HostProcess, HypervisorError> {
        cgroup.apply(&mut cmd);
        let program = PathBuf::from(cmd.as_std().get_program());
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| HypervisorError::io(format!("open {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| HypervisorError::io(format!("open {}", log.display()), e))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            // Own process group: a ^C or signal to the shim's group does not hit the VM.
            .process_group(0)
            .kill_on_drop(true);
        tracing::debug!(name, cmd = ?cmd.as_std(), "spawning");
        let mut child = cmd.spawn().map_err(|source| HypervisorError::Spawn {
            what: name.to_string(),
            path: program,
            source,
        })?;
        let pid = child.id().ok_or_else(|| {
            HypervisorError::io(
                format!("start {name}"),
                std::io::Error::other("exited before its pid was known"),
            )
        })?;
        std::fs::write(pidfile, format!("{pid}\n"))
            .map_err(|e| HypervisorError::io(format!("write {}", pidfile.display()), e))?;

        let (exited_tx, exited) = watch::channel(false);
        let (signals, mut signal_rx) = mpsc::unbounded_channel::<Signal>();
        let status = Arc::new(Mutex::new(None));
        let status_w = status.clone();
        let name_w = name.to_string();
        tokio::spawn(async move {
            let result = loop {
                tokio::select! {
                    // Biased: once wait() reaped the child, no signal is sent to a reused pid.
                    biased;
                    r = child.wait() => break r,
                    Some(sig) = signal_rx.recv() => {
                        if let Err(e) = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig) {
                            tracing::debug!(name = %name_w, pid, "signal {sig}: {e}");
                        }
                    }
                }
            };
            match result {
                Ok(s) => {
                    tracing::debug!(name = %name_w, pid, "exited: {s}");
                    if let Ok(mut g) = status_w.lock() {
                        *g = Some(s);
                    }
                }
                Err(e) => tracing::warn!(name = %name_w, pid, "waiting for the process: {e}"),
            }
            let _ = exited_tx.send(true);
        });
        Ok(HostProcess {
            name: name.to_string(),
            pid,
            log: log.to_path_buf(),
            exited,
            status,
            signals,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn pid(&self) -> u32 {
        self.pid
    }
    pub fn log(&self) -> &Path {
        &self.log
    }
    pub fn exited(&self) -> watch::Receiver<bool> {
        self.exited.clone()
    }
    pub fn has_exited(&self) -> bool {
        *self.exited.borrow()
    }

    /// "exit status: 1", "signal: 9 (SIGKILL)", or "unknown status".
    pub fn status_text(&self) -> String {
        self.status_reader().text()
    }

    /// A handle that reads the exit status without holding the `HostProcess`.
    pub fn status_reader(&self) -> StatusReader {
        StatusReader(self.status.clone())
    }

    /// Waits up to `timeout` for the process to exit; true if it did.
    pub async fn wait_timeout(&self, timeout: Duration) -> bool {
        let mut rx = self.exited.clone();
        let exited = tokio::time::timeout(timeout, rx.wait_for(|e| *e)).await;
        matches!(exited, Ok(Ok(_)))
    }

    /// Sends `sig` unless the process already exited.
    pub fn signal(&self, sig: Signal) {
        let _ = self.signals.send(sig);
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL and wait.
    pub async fn terminate(&self, grace: Duration) {
        if self.has_exited() {
            return;
        }
        self.signal(Signal::SIGTERM);
        if !self.wait_timeout(grace).await {
            self.kill().await;
        }
    }

    /// SIGKILL and wait for the exit.
    pub async fn kill(&self) {
        if self.has_exited() {
            return;
        }
        self.signal(Signal::SIGKILL);
        if !self.wait_timeout(Duration::from_secs(5)).await {
            tracing::warn!(name = %self.name, pid = self.pid, "still running 5s after SIGKILL");
        }
    }
}

impl HostProcess {
    /// What [`stop_vm_when_a_helper_dies`] watches of this process.
    pub fn exit_watch(&self) -> ExitWatch {
        ExitWatch {
            name: self.name.clone(),
            exited: self.exited(),
            status: self.status_reader(),
        }
    }
}

/// A process's exit, watched from a task that does not own it.
pub struct ExitWatch {
    name: String,
    exited: watch::Receiver<bool>,
    status: StatusReader,
}

impl ExitWatch {
    /// "<name> exited (<status>)" once it did.
    async fn exited(mut self) -> String {
        let _ = self.exited.wait_for(|e| *e).await;
        format!("{} exited ({})", self.name, self.status.text())
    }
}

/// Kills the VMM when one of its `helpers` (virtiofsd, the vsock daemon) exits before the VM
/// is stopped: its guest would hang on the files or the agent connection it lost, so the
/// sandbox is declared dead at once (its tasks then exit with the VM-gone status) instead of
/// when some RPC times out. The error log names the helper and how it ended.
pub fn stop_vm_when_a_helper_dies(
    sandbox: String,
    helpers: Vec<ExitWatch>,
    vmm: &HostProcess,
    stopping: Arc<std::sync::atomic::AtomicBool>,
) {
    if helpers.is_empty() {
        return;
    }
    let (signals, mut vmm_exited, vmm_name) = (vmm.signals.clone(), vmm.exited(), vmm.name.clone());
    tokio::spawn(async move {
        let first = futures::future::select_all(helpers.into_iter().map(|h| Box::pin(h.exited())));
        tokio::select! {
            _ = vmm_exited.wait_for(|e| *e) => {}
            (cause, _, _) = first => {
                if !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    tracing::error!(
                        %sandbox,
                        "{cause} while the VM ran: the guest cannot go on without it; \
                         killing {vmm_name}"
                    );
                    let _ = signals.send(Signal::SIGKILL);
                }
            }
        }
    });
}

/// Reads the exit status of a [`HostProcess`] once it exited.
#[derive(Debug, Clone)]
pub struct StatusReader(Arc<Mutex<Option<ExitStatus>>>);

impl StatusReader {
    pub fn text(&self) -> String {
        match self.0.lock().ok().and_then(|g| *g) {
            Some(s) => s.to_string(),
            None => "unknown status".into(),
        }
    }
}

/// `capset(2)` header and data, version 3 (two 32-bit words per set).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// Capability numbers go up to 63 at most (the kernel's last one is lower: EINVAL after it).
const MAX_CAP: libc::c_ulong = 63;

/// `cmd` runs with no_new_privs: neither it nor anything it executes gains privileges
/// (setuid, file capabilities).
pub fn no_new_privileges(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl(2)
    // and reads errno, both async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `cmd` runs with no capabilities at all, for a helper that needs none (it stays uid 0, so it
/// still owns the files of its VM dir): no_new_privs, empty bounding and ambient sets (so the
/// exec of a root process grants nothing), and empty effective, permitted and inheritable sets.
pub fn drop_all_capabilities(cmd: &mut Command) {
    no_new_privileges(cmd);
    // SAFETY: as above: prctl(2) and capset(2) through syscall(2), on locals of the closure,
    // and errno; all async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let err = std::io::Error::last_os_error;
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(err());
            }
            // Before capset: dropping from the bounding set needs CAP_SETPCAP.
            for cap in 0..=MAX_CAP {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                    let e = err();
                    if e.raw_os_error() == Some(libc::EINVAL) {
                        break; // past the kernel's last capability
                    }
                    return Err(e);
                }
            }
            let header = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let data = [CapData::default(); 2];
            if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
                return Err(err());
            }
            Ok(())
        });
    }
}

/// Waits until `path` exists (a daemon or QEMU created its socket), failing early if `process`
/// exits. There is no portable event for "a socket was bound", so poll with a short interval.
pub async fn wait_for_socket(
    process: &HostProcess,
    path: &Path,
    timeout: Duration,
) -> Result<(), HypervisorError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut exited = process.exited();
    loop {
        if tokio::fs::symlink_metadata(path).await.is_ok() {
            return Ok(());
        }
        if *exited.borrow() {
            return Err(HypervisorError::Exited {
                what: process.name().to_string(),
                status: process.status_text(),
                waiting_for: format!("creating {}", path.display()),
                log_tail: super::log_tail(process.log(), 20),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HypervisorError::SocketTimeout {
                what: process.name().to_string(),
                path: path.to_path_buf(),
                timeout,
                log_tail: super::log_tail(process.log(), 20),
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            _ = exited.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The capability lines of a child's /proc/self/status.
    async fn status_of(cmd: &mut Command) -> String {
        let out = cmd
            .arg("-c")
            .arg("grep -E '^(Cap|NoNewPrivs)' /proc/self/status")
            .output()
            .await
            .expect("spawn sh");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Needs root (the shim's case): a helper started this way has no capability left,
    /// in any set, and cannot regain one.
    #[tokio::test]
    async fn a_helper_without_capabilities_has_none_in_any_set() {
        let mut cmd = Command::new("/bin/sh");
        drop_all_capabilities(&mut cmd);
        let status = status_of(&mut cmd).await;
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert!(
                status.contains(&format!("{set}:\t0000000000000000")),
                "{set} not empty:\n{status}"
            );
        }
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
        // Without the drop, root keeps them (the check above can fail).
        let plain = status_of(&mut Command::new("/bin/sh")).await;
        assert!(!plain.contains("CapEff:\t0000000000000000"), "{plain}");
    }
}
