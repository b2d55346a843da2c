//! The optional debug console (`agent.debug_console` on the kernel command line): every
//! connection on vsock port protocol::DEBUG_CONSOLE_PORT gets a shell of the guest, if the
//! guest image has one.
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};

use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

const SHELLS: [&str; 2] = ["/bin/sh", "/bin/bash"];

pub async fn serve(port: u32) -> std::io::Result<()> {
    let listener = super::host_vsock::HostListener::bind(port)?;
    info!("debug console listening on vsock port {port}");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, peer)) = listener.accept().await else {
                continue;
            };
            let Some(shell) = SHELLS.iter().find(|s| std::path::Path::new(s).exists()) else {
                let _ = stream.write_all(b"this guest has no shell\n").await;
                continue;
            };
            match spawn_shell(shell, std::os::fd::IntoRawFd::into_raw_fd(stream)) {
                Ok(pid) => info!("debug console for {peer:?}: {shell} pid {pid}"),
                Err(e) => warn!("debug console: starting {shell}: {e}"),
            }
        }
    });
    Ok(())
}

fn spawn_shell(shell: &str, raw: std::os::fd::RawFd) -> std::io::Result<i32> {
    // SAFETY: into_raw_fd handed us the only owner of this fd.
    let sock: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) };
    // The shell does blocking I/O on the socket.
    let flags = nix::fcntl::fcntl(sock.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) - nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(sock.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
    let child = Command::new(shell)
        .arg("-i")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::from(sock.try_clone()?))
        .stdout(Stdio::from(sock.try_clone()?))
        .stderr(Stdio::from(sock))
        .spawn()?;
    let pid = child.id() as i32;
    // The reaper collects it; nobody waits for its status.
    drop(crate::guest::reaper::global().register(pid));
    Ok(pid)
}
