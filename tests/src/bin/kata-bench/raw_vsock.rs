//! The host end of a raw vsock stream to or from a process in the guest (the probe's
//! `--to-host`/`--from-host`): the ceiling stdio over vsock is compared with.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const ACCEPT_TIMEOUT_MS: i32 = 60_000;

/// A listener for one guest-initiated connection to the host's `port`.
pub enum Listener {
    /// vhost-user vsock (vhost-device-vsock): the guest's connection to host port P arrives
    /// on the unix socket `<hybrid socket>_P`.
    Hybrid(UnixListener, std::path::PathBuf),
    /// Kernel vhost-vsock: an AF_VSOCK listener on the host.
    Kernel(OwnedFd),
}

impl Listener {
    /// Listens for sandbox VM directory `vm_dir`'s guest on `port`.
    pub fn bind(vm_dir: &Path, port: u32) -> Result<Listener> {
        let hybrid = vm_dir.join("vsock.sock");
        if hybrid.exists() {
            let path = vm_dir.join(format!("vsock.sock_{port}"));
            let _ = std::fs::remove_file(&path);
            let l = UnixListener::bind(&path)
                .with_context(|| format!("listening on {}", path.display()))?;
            return Ok(Listener::Hybrid(l, path));
        }
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("AF_VSOCK socket");
        }
        // SAFETY: fd is a fresh socket we own.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_vm is plain data; zeroed is a valid start.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        addr.svm_port = port;
        // SAFETY: addr outlives the calls and its size is passed.
        let ok = unsafe {
            libc::bind(
                fd,
                (&addr as *const libc::sockaddr_vm).cast(),
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            ) == 0
                && libc::listen(fd, 1) == 0
        };
        if !ok {
            return Err(std::io::Error::last_os_error()).context(format!("AF_VSOCK port {port}"));
        }
        Ok(Listener::Kernel(sock))
    }

    fn accept(&self) -> Result<std::fs::File> {
        // A probe that never connects fails the bench instead of hanging it.
        let fd = match self {
            Listener::Hybrid(l, _) => std::os::fd::AsRawFd::as_raw_fd(l),
            Listener::Kernel(fd) => std::os::fd::AsRawFd::as_raw_fd(fd),
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd that outlives the call.
        if unsafe { libc::poll(&mut pfd, 1, ACCEPT_TIMEOUT_MS) } != 1 {
            bail!("no connection from the guest's probe within {ACCEPT_TIMEOUT_MS} ms");
        }
        let conn = match self {
            Listener::Hybrid(l, _) => std::fs::File::from(OwnedFd::from(l.accept()?.0)),
            Listener::Kernel(fd) => {
                // SAFETY: accept(2) on our listening socket; the new fd is owned right away.
                let c = unsafe {
                    libc::accept4(
                        std::os::fd::AsRawFd::as_raw_fd(fd),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                if c < 0 {
                    return Err(std::io::Error::last_os_error()).context("accept");
                }
                // SAFETY: c is a fresh descriptor we own.
                std::fs::File::from(unsafe { OwnedFd::from_raw_fd(c) })
            }
        };
        // A stream that stalls fails the bench too.
        let tv = libc::timeval {
            tv_sec: (ACCEPT_TIMEOUT_MS / 1000).into(),
            tv_usec: 0,
        };
        for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
            // SAFETY: setsockopt with a timeval that outlives the call.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&conn),
                    libc::SOL_SOCKET,
                    opt,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                );
            }
        }
        Ok(conn)
    }

    /// Accepts one connection and reads `bytes` from it: the time from accept to the last byte.
    pub fn receive(&self, bytes: u64) -> Result<Duration> {
        let mut c = self.accept()?;
        let started = Instant::now();
        let mut buf = vec![0u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = c.read(&mut buf)?;
            if n == 0 {
                bail!("the guest's stream ended {left} bytes short");
            }
            left = left.saturating_sub(n as u64);
        }
        Ok(started.elapsed())
    }

    /// Accepts one connection and writes `bytes` to it: the time from accept to the guest's
    /// one-byte answer that it read them all.
    pub fn send(&self, bytes: u64) -> Result<Duration> {
        let mut c = self.accept()?;
        let started = Instant::now();
        let buf = vec![0u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            c.write_all(&buf[..n])?;
            left -= n as u64;
        }
        let mut ack = [0u8; 1];
        c.read_exact(&mut ack).context("the guest's answer")?;
        Ok(started.elapsed())
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Hybrid(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}
