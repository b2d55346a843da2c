//! virtiofsd: serves the sandbox's shared directory to the guest over vhost-user.
//!
//! The shim mounts container rootfs under the shared dir AFTER virtiofsd started. virtiofsd's
//! default `--sandbox=namespace` works on a private copy of the mount tree taken at start, so
//! the shared dir is first made a bind mount of itself with shared propagation: the daemon's
//! copy is then a slave of it and receives every later mount.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{mount, MsFlags};
use tokio::process::Command;

use super::process::{wait_for_socket, Process};
use super::{HypervisorError, SandboxPaths};
use crate::config::QemuConfig;

/// How long virtiofsd may take to create its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes `shared` a bind mount of itself with shared propagation.
pub async fn make_shared_mount(shared: PathBuf) -> Result<(), HypervisorError> {
    tokio::task::spawn_blocking(move || {
        let none: Option<&str> = None;
        mount(Some(&shared), &shared, none, MsFlags::MS_BIND, none).map_err(|e| {
            HypervisorError::io(
                format!("bind-mount {} onto itself", shared.display()),
                e.into(),
            )
        })?;
        mount(none, &shared, none, MsFlags::MS_SHARED, none).map_err(|e| {
            HypervisorError::io(
                format!("make {} a shared mount", shared.display()),
                e.into(),
            )
        })
    })
    .await
    .map_err(|e| HypervisorError::io("mount task", std::io::Error::other(e)))?
}

/// The virtiofsd command line.
pub fn command(config: &QemuConfig, socket: &Path, shared: &Path, debug: bool) -> Command {
    let mut cmd = Command::new(&config.virtio_fs_daemon);
    cmd.arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--shared-dir={}", shared.display()))
        .arg(format!("--cache={}", config.virtio_fs_cache))
        .arg("--sandbox=namespace")
        .arg(format!(
            "--log-level={}",
            if debug { "debug" } else { "warn" }
        ))
        .args(&config.virtio_fs_extra_args);
    cmd
}

/// Starts virtiofsd and waits for its socket.
pub async fn start(
    config: &QemuConfig,
    paths: &SandboxPaths,
    debug: bool,
) -> Result<Process, HypervisorError> {
    let cmd = command(config, &paths.virtiofsd_socket(), &paths.shared(), debug);
    let p = Process::spawn(
        "virtiofsd",
        cmd,
        &paths.log("virtiofsd"),
        &paths.pidfile("virtiofsd"),
    )?;
    match wait_for_socket(&p, &paths.virtiofsd_socket(), SOCKET_TIMEOUT).await {
        Ok(()) => Ok(p),
        Err(e) => {
            p.kill().await;
            Err(e)
        }
    }
}
