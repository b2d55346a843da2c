//! Where everything of one VM lives on the host: one directory, one name per job (the shared
//! directory's place in it is `resources::share`'s business).

use std::path::{Path, PathBuf};

/// Default root of the sandbox directories.
pub const DEFAULT_RUN_ROOT: &str = "/run/kata-containers";
/// Environment variable overriding [`DEFAULT_RUN_ROOT`] (tests).
pub const ENV_RUN_ROOT: &str = "KATA_RS_RUN_DIR";
/// Longest unix socket path (sun_path is 108 bytes including the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// `$KATA_RS_RUN_DIR` or /run/kata-containers.
pub fn run_root() -> PathBuf {
    std::env::var_os(ENV_RUN_ROOT)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_ROOT))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    pub dir: PathBuf,
}

impl VmPaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        VmPaths { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Guest serial console output, as the shim keeps it: capped, rotated once to
    /// `console.log.1` (`guest_output::capped_file`).
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The unix socket the guest console comes through from the VMM.
    pub fn console_socket(&self) -> PathBuf {
        self.dir.join("console.sock")
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    /// Hybrid vsock socket the host dials (vhost-device-vsock `--uds-path`).
    pub fn hybrid_vsock(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }
    /// vhost-user socket between QEMU and vhost-device-vsock.
    pub fn vhost_user_vsock(&self) -> PathBuf {
        self.dir.join("vhost-vsock.sock")
    }
    /// vhost-user socket between QEMU and virtiofsd.
    pub fn virtiofsd_socket(&self) -> PathBuf {
        self.dir.join("virtiofsd.sock")
    }
    /// stdout/stderr of a helper process or QEMU.
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }
    /// Pid file of a process we started (for cleanup after a shim crash).
    pub fn pidfile(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pid"))
    }
    /// The pids every pid file in the directory records (QEMU and its helpers).
    pub fn recorded_pids(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".pid")))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| t.trim().parse::<u32>().ok())
            .filter(|pid| *pid > 1)
            .collect()
    }
    /// For a pooled VM renamed to its pod's id: the directory it was booted in (its
    /// processes' command lines name that one; a symlink there points here).
    pub fn origin_record(&self) -> PathBuf {
        self.dir.join("pooled-as")
    }

    /// Every socket path, to check their length up front.
    pub fn sockets(&self) -> [PathBuf; 5] {
        [
            self.console_socket(),
            self.qmp_socket(),
            self.hybrid_vsock(),
            self.vhost_user_vsock(),
            self.virtiofsd_socket(),
        ]
    }
}
