//! A child process we started (QEMU or a helper daemon): its own process group, output to a
//! log file, a pid file for crash cleanup, and a watcher task that owns the tokio `Child`,
//! reaps it and tells everyone when it exited.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use super::HypervisorError;

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
    /// Spawns `cmd` with stdin from /dev/null and stdout/stderr appended to `log`.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        log: &Path,
        pidfile: &Path,
    ) -> Result<HostProcess, HypervisorError> {
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
