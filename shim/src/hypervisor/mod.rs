//! Hypervisor backends behind one small trait, plus what they share: the per-sandbox file
//! layout, child-process handling, accelerator choice and host facts.
//!
//! The trait does not assume QEMU: a backend starts "a VM with the sandbox's shared dir and an
//! agent port", however it does it (QEMU + helper daemons; cloud-hypervisor has vsock built in).

pub mod accel;
pub mod clh;
pub mod devices;
pub mod host;
pub mod host_process;
pub mod kernel_cmdline;
pub mod layout;
pub mod qemu;
pub mod virtiofsd;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::sync::watch;

pub use devices::Devices;
pub use host_process::CgroupJoin;
pub use layout::VmPaths;

use crate::config::{Config, Vmm};
use crate::guest::vsock::Dialer;
use crate::guest_output::console::ConsoleView;

#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// "qemu", "clh", ...: for logs.
    fn name(&self) -> &'static str;
    /// Starts the VM and whatever it needs; returns once the VMM is up (not the guest).
    /// On error the caller still calls [`Hypervisor::stop`] to clean up what was started.
    async fn start(&mut self) -> Result<(), HypervisorError>;
    /// Stops the VM (gracefully if it has not exited within `grace`, then by force) and its
    /// helpers. Safe to call more than once and after a failed start.
    async fn stop(&mut self, grace: std::time::Duration) -> Result<(), HypervisorError>;
    /// Waits (up to `timeout`) until the guest side of the agent transport can take a
    /// connection without harm. Backends whose vsock needs no care keep the default.
    async fn wait_agent_transport(
        &self,
        _timeout: std::time::Duration,
    ) -> Result<(), HypervisorError> {
        Ok(())
    }
    /// Some(reason) when the agent transport is known to be dead for good (so waiting for the
    /// agent is pointless). Checked while the agent is dialled at boot.
    async fn agent_transport_broken(&self) -> Option<String> {
        None
    }
    async fn pause(&self) -> Result<(), HypervisorError>;
    async fn resume(&self) -> Result<(), HypervisorError>;
    /// How to reach guest vsock ports. Valid after a successful start.
    fn agent_dialer(&self) -> Option<Dialer>;
    /// Becomes true when the VMM process is gone.
    fn exited(&self) -> watch::Receiver<bool>;
    /// Human-readable exit status of the VMM, once it exited.
    fn exit_status(&self) -> Option<String>;
    /// The guest console the backend reads (`guest_output::console`), once started.
    fn console(&self) -> Option<ConsoleView> {
        None
    }
}

/// The backend the configuration selects, for VM `id` with its files under `paths`.
/// Its processes join `cgroup` before they run.
pub fn new(
    config: &Config,
    devices: Devices,
    id: &str,
    paths: VmPaths,
    cgroup: CgroupJoin,
) -> Box<dyn Hypervisor> {
    match &config.vmm {
        Vmm::Qemu(q) => Box::new(qemu::Qemu::new(
            config,
            q.clone(),
            devices,
            id,
            paths,
            cgroup,
        )),
        Vmm::Clh(c) => Box::new(clh::Clh::new(config, c.clone(), devices, id, paths, cgroup)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("{what} \"{}\" (from {origin}): {source}", path.display())]
    MissingFile {
        what: &'static str,
        path: PathBuf,
        origin: String,
        source: std::io::Error,
    },
    #[error("start {what} \"{}\": {source}", path.display())]
    Spawn {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{what} exited ({status}) before {waiting_for}{}",
        tail_suffix(log_tail)
    )]
    Exited {
        what: String,
        status: String,
        waiting_for: String,
        log_tail: String,
    },
    #[error("{what}: {} did not appear within {timeout:?}{}", path.display(), tail_suffix(log_tail))]
    SocketTimeout {
        what: String,
        path: PathBuf,
        timeout: std::time::Duration,
        log_tail: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("QMP: {0}")]
    Qmp(#[from] qemu::qmp::QmpError),
    #[error("{0}")]
    Unsupported(String),
    /// The guest did not get far enough to be reached (boot errors add the guest console).
    #[error("{0}")]
    GuestNotReady(String),
}

fn tail_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; last output:\n{}", tail.trim_end())
    }
}

impl HypervisorError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        HypervisorError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Fails with a named error unless `path` is an existing file.
pub fn require_file(
    what: &'static str,
    path: &Path,
    origin: String,
) -> Result<(), HypervisorError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(HypervisorError::MissingFile {
            what,
            path: path.to_path_buf(),
            origin,
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        }),
        Err(source) => Err(HypervisorError::MissingFile {
            what,
            path: path.to_path_buf(),
            origin,
            source,
        }),
    }
}

/// How much of a log's end [`log_tail`] reads.
const LOG_TAIL_BYTES: u64 = 8192;

/// The last `max_lines` lines of a log file (empty if unreadable): for error messages.
pub fn log_tail(path: &Path, max_lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    // Only the end is read: the guest decides how long a console log grows.
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path).and_then(|mut f| {
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        f.take(LOG_TAIL_BYTES).read_to_end(&mut bytes)
    });
    if read.is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_reads_only_the_end_of_a_long_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        let mut text: String = (0..100_000).map(|n| format!("line {n}\n")).collect();
        text.push_str("last words\n");
        std::fs::write(&log, &text).expect("write");
        assert_eq!(log_tail(&log, 2), "line 99999\nlast words");
        assert_eq!(log_tail(&dir.path().join("none"), 2), "");
    }
}
