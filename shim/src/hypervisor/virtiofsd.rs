//! virtiofsd: serves the sandbox's shared directory to the guest over vhost-user.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use super::host_process::{wait_for_socket, CgroupJoin, HostProcess};
use super::{HypervisorError, VmPaths};
use crate::config::GuestConfig;

/// How long virtiofsd may take to create its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// The virtiofsd command line (`config` supplies the daemon and its options).
pub fn command(config: &GuestConfig, socket: &Path, shared: &Path, debug: bool) -> Command {
    let mut cmd = Command::new(&config.virtio_fs_daemon);
    cmd.arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--shared-dir={}", shared.display()))
        .arg(format!("--cache={}", config.virtio_fs_cache))
        .arg("--sandbox=namespace")
        // No device nodes and no file capabilities, whatever the guest asks for.
        .arg("--modcaps=-mknod:-setfcap")
        .arg(format!(
            "--log-level={}",
            if debug { "debug" } else { "warn" }
        ))
        .args(&config.virtio_fs_extra_args);
    cmd
}

/// Starts virtiofsd and waits for its socket.
pub async fn start(
    config: &GuestConfig,
    paths: &VmPaths,
    shared: &Path,
    debug: bool,
    cgroup: &CgroupJoin,
) -> Result<HostProcess, HypervisorError> {
    let cmd = command(config, &paths.virtiofsd_socket(), shared, debug);
    let p = HostProcess::spawn(
        "virtiofsd",
        cmd,
        &paths.log("virtiofsd"),
        &paths.pidfile("virtiofsd"),
        cgroup,
    )?;
    match wait_for_socket(&p, &paths.virtiofsd_socket(), SOCKET_TIMEOUT).await {
        Ok(()) => Ok(p),
        Err(e) => {
            p.kill().await;
            Err(e)
        }
    }
}
