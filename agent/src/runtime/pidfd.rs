//! Pidfds: a handle on one process that a reused pid can never redirect, used to join a container init's namespaces.
//!
//! The spawn helper opens the pidfd of each process it forks while that process is still its
//! own unreaped child, so the pid cannot have been reused yet; the agent keeps it for the
//! process's life. An exec joins the init's namespaces with `setns(pidfd, flags)` (Linux 5.8):
//! all of them in one call, and refused (ESRCH) once the init has exited, even if its pid now
//! belongs to another process.
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sched::CloneFlags;

/// `pidfd_open(pid, 0)`: the fd is close-on-exec.
pub fn open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(pidfd, sig)`: signals exactly that process (ESRCH once it exited).
pub fn send_signal(pidfd: &OwnedFd, sig: nix::sys::signal::Signal) -> Result<(), Errno> {
    // SAFETY: pidfd_send_signal takes an fd, a signal number, no siginfo (NULL) and flags 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

/// Enters the namespaces `flags` of the process behind `pidfd`, atomically (all or none).
/// Only a syscall: safe between fork and exec.
pub fn setns(pidfd: BorrowedFd<'_>, flags: CloneFlags) -> Result<(), Errno> {
    // SAFETY: setns takes an fd and flags; no memory is passed.
    let r = unsafe { libc::setns(pidfd.as_raw_fd(), flags.bits()) };
    Errno::result(r).map(drop)
}

/// [`setns`] with an error that says what happened.
pub fn join(pidfd: BorrowedFd<'_>, flags: CloneFlags) -> Result<(), String> {
    setns(pidfd, flags).map_err(|e| match e {
        Errno::ESRCH => "the container's init has exited: its namespaces are gone".to_string(),
        e => format!("joining the namespaces {flags:?} of the container's init: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};

    /// A `sleep` in a UTS namespace of its own named `name`.
    fn in_own_uts(name: &'static str) -> Child {
        let mut cmd = Command::new("sleep");
        cmd.arg("60").stdin(Stdio::null());
        // SAFETY: only syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::unshare(CloneFlags::CLONE_NEWUTS)?;
                nix::unistd::sethostname(name)?;
                Ok(())
            });
        }
        cmd.spawn().expect("spawning sleep")
    }

    /// `uname -n` run after joining the UTS namespace behind `pidfd`.
    fn hostname_via(pidfd: &OwnedFd) -> std::io::Result<String> {
        let raw = pidfd.as_raw_fd();
        let mut cmd = Command::new("uname");
        cmd.arg("-n");
        // SAFETY: only a syscall between fork and exec; the fd outlives the child's setup.
        unsafe {
            cmd.pre_exec(move || {
                setns(BorrowedFd::borrow_raw(raw), CloneFlags::CLONE_NEWUTS)?;
                Ok(())
            });
        }
        let out = cmd.output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn stop(mut c: Child) {
        let _ = c.kill();
        let _ = c.wait();
    }

    #[test]
    fn joins_the_namespace_of_the_process_it_names() {
        let child = in_own_uts("pidfd-joined");
        let pidfd = open(child.id() as i32).unwrap();
        let got = hostname_via(&pidfd);
        stop(child);
        assert_eq!(got.unwrap(), "pidfd-joined");
    }

    #[test]
    fn an_exited_process_is_refused_with_a_clear_error() {
        let child = in_own_uts("pidfd-gone");
        let pidfd = open(child.id() as i32).unwrap();
        stop(child);
        let e = join(pidfd.as_fd(), CloneFlags::CLONE_NEWUTS).unwrap_err();
        assert!(e.contains("has exited"), "{e}");
    }

    /// The case a pid cannot tell apart: the init exited and another process got its pid.
    /// The pidfd still names the dead one, so nothing is joined.
    #[test]
    fn a_reused_pid_is_never_joined() {
        let first = in_own_uts("pidfd-first");
        let pid = first.id() as i32;
        let pidfd = open(pid).unwrap();
        stop(first);
        // Make the next pid the kernel hands out be the freed one (as root, in the host's pid
        // namespace); other processes may take it first, so try a few times.
        let mut reused = None;
        for _ in 0..200 {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
                .expect("writing ns_last_pid (the unit tests run as root)");
            let c = in_own_uts("pidfd-second");
            if c.id() as i32 == pid {
                reused = Some(c);
                break;
            }
            stop(c);
        }
        let second = reused.expect("the freed pid was not handed out again in 200 tries");
        let got = hostname_via(&pidfd);
        stop(second);
        match got {
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ESRCH), "{e}"),
            Ok(name) => panic!("joined the namespace of pid {pid}'s new owner ({name})"),
        }
    }
}
