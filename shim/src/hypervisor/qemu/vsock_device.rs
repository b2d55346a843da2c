//! The guest's vsock device, host side: kernel vhost-vsock (a guest CID reserved on
//! /dev/vhost-vsock) or vhost-user through vhost-device-vsock (hybrid vsock socket).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use crate::config::{QemuConfig, VsockMode};
use crate::hypervisor::host_process::{
    drop_all_capabilities, wait_for_socket, CgroupJoin, HostProcess,
};
use crate::hypervisor::{HypervisorError, VmPaths};

pub const VHOST_VSOCK_DEV: &str = "/dev/vhost-vsock";
/// The first guest CID (0-2 are reserved).
const FIRST_CID: u32 = 3;
/// How many CIDs to try before giving up.
const CID_ATTEMPTS: u32 = 4096;
/// CID of the guest behind vhost-device-vsock (the daemon is per VM, so any fixed value works).
pub const VHOST_USER_GUEST_CID: u32 = 3;
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// Which transport, decided from the config and the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VsockKind {
    Vhost,
    VhostUser,
}

/// `auto` = kernel vhost-vsock if /dev/vhost-vsock exists, else vhost-user.
pub fn choose(mode: VsockMode, dev: &Path) -> Result<(VsockKind, String), HypervisorError> {
    let present = dev.exists();
    match mode {
        VsockMode::Vhost if !present => Err(HypervisorError::Unsupported(format!(
            "[hypervisor.qemu] vsock = \"vhost\" but {} does not exist (load vhost_vsock, or use \"vhost-user\" or \"auto\")",
            dev.display()
        ))),
        VsockMode::Vhost => Ok((VsockKind::Vhost, "vsock=vhost: kernel vhost-vsock as configured".into())),
        VsockMode::VhostUser => Ok((
            VsockKind::VhostUser,
            "vsock=vhost-user: vhost-device-vsock (hybrid vsock) as configured".into(),
        )),
        VsockMode::Auto if present => Ok((
            VsockKind::Vhost,
            format!("vsock=auto: kernel vhost-vsock ({} exists)", dev.display()),
        )),
        VsockMode::Auto => Ok((
            VsockKind::VhostUser,
            format!(
                "vsock=auto: vhost-user vsock via vhost-device-vsock because {} does not exist",
                dev.display()
            ),
        )),
    }
}

nix::ioctl_write_ptr!(vhost_vsock_set_guest_cid, 0xAF, 0x60, u64);

/// Reserves a free guest CID on /dev/vhost-vsock. The returned fd holds the reservation and is
/// handed to QEMU (`vhostfd=`), so no other VM can take the CID in between.
pub fn reserve_cid(dev: &Path) -> Result<(u32, OwnedFd), HypervisorError> {
    for cid in FIRST_CID..FIRST_CID + CID_ATTEMPTS {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev)
            .map_err(|e| HypervisorError::io(format!("open {}", dev.display()), e))?;
        let value = u64::from(cid);
        // SAFETY: the fd is an open /dev/vhost-vsock, and the ioctl reads one u64 from a valid
        // pointer to a live local.
        match unsafe { vhost_vsock_set_guest_cid(f.as_raw_fd(), &value) } {
            Ok(_) => return Ok((cid, OwnedFd::from(f))),
            Err(nix::errno::Errno::EADDRINUSE) => continue,
            Err(e) => {
                return Err(HypervisorError::io(
                    format!("reserve guest cid {cid} on {}", dev.display()),
                    e.into(),
                ))
            }
        }
    }
    Err(HypervisorError::Unsupported(format!(
        "no free vsock guest CID between {FIRST_CID} and {}",
        FIRST_CID + CID_ATTEMPTS - 1
    )))
}

/// Starts vhost-device-vsock for this VM and waits for its vhost-user socket.
pub async fn start_daemon(
    config: &QemuConfig,
    paths: &VmPaths,
    cgroup: &CgroupJoin,
) -> Result<HostProcess, HypervisorError> {
    let mut cmd = Command::new(&config.vhost_user_vsock_daemon);
    cmd.arg(format!("--guest-cid={VHOST_USER_GUEST_CID}"))
        .arg(format!("--socket={}", paths.vhost_user_vsock().display()))
        .arg(format!("--uds-path={}", paths.hybrid_vsock().display()));
    // Its warnings (in the sandbox dir's log) are what explains a dead vsock.
    cmd.env(
        "RUST_LOG",
        if config.guest.enable_debug {
            "debug"
        } else {
            "warn"
        },
    );
    // It only serves unix sockets in the VM dir, which it owns (uid 0): no capability needed.
    drop_all_capabilities(&mut cmd);
    let p = HostProcess::spawn(
        "vhost-device-vsock",
        cmd,
        &paths.log("vhost-device-vsock"),
        &paths.pidfile("vhost-device-vsock"),
        cgroup,
    )?;
    match wait_for_socket(&p, &paths.vhost_user_vsock(), SOCKET_TIMEOUT).await {
        Ok(()) => Ok(p),
        Err(e) => {
            p.kill().await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice() {
        let d = tempfile::tempdir().expect("tempdir");
        let missing = d.path().join("vhost-vsock");
        let (k, why) = choose(VsockMode::Auto, &missing).expect("auto");
        assert_eq!(k, VsockKind::VhostUser);
        assert!(why.contains("does not exist"), "{why}");
        let err = choose(VsockMode::Vhost, &missing).expect_err("forced vhost without device");
        assert!(err.to_string().contains("vhost-vsock"), "{err}");
        std::fs::write(&missing, "").expect("fake dev");
        assert_eq!(
            choose(VsockMode::Auto, &missing).expect("auto").0,
            VsockKind::Vhost
        );
        assert_eq!(
            choose(VsockMode::VhostUser, &missing).expect("forced").0,
            VsockKind::VhostUser
        );
    }
}
