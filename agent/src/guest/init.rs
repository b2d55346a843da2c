//! PID 1 duties done once at boot: the guest's base filesystems, stdio, subreaper, loopback,
//! kernel command line options.
use std::fs;
use std::os::fd::AsRawFd;

use nix::mount::{mount, MsFlags};

/// Options read from /proc/cmdline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `agent.log=debug|info|warn|error|trace`
    pub log_level: tracing::Level,
    /// `agent.debug_console`
    pub debug_console: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            log_level: tracing::Level::INFO,
            debug_console: false,
        }
    }
}

pub fn parse_cmdline(cmdline: &str) -> Options {
    let mut o = Options::default();
    for word in cmdline.split_whitespace() {
        if let Some(level) = word.strip_prefix("agent.log=") {
            if let Ok(l) = level.parse() {
                o.log_level = l;
            }
        } else if word == "agent.debug_console" {
            o.debug_console = true;
        }
    }
    o
}

/// Mounts the base filesystems. Errors are collected (logging is not up yet) and an already
/// mounted target is fine.
pub fn mount_base() -> Vec<String> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let table: [(&str, &str, &str, MsFlags, Option<&str>); 8] = [
        ("proc", "/proc", "proc", nosuid_nodev_noexec, None),
        ("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
        (
            "shm",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid_nodev_noexec,
            None,
        ),
    ];
    let mut errors = Vec::new();
    for (src, dst, fstype, flags, data) in table {
        if let Err(e) = fs::create_dir_all(dst) {
            errors.push(format!("creating {dst}: {e}"));
            continue;
        }
        match mount(Some(src), dst, Some(fstype), flags, data) {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => errors.push(format!("mounting {fstype} on {dst}: {e}")),
        }
    }
    errors
}

/// The kernel starts /init with fds 0-2 on /dev/console only if the initramfs has that node;
/// make sure they are open so no socket ever lands on them.
pub fn ensure_stdio() {
    for fd in 0..3 {
        if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/console")
                .or_else(|_| {
                    fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open("/dev/null")
                });
            if let Ok(f) = f {
                if f.as_raw_fd() != fd {
                    // SAFETY: dup2 onto a closed low fd number.
                    unsafe { libc::dup2(f.as_raw_fd(), fd) };
                } else {
                    std::mem::forget(f); // it already is that fd: keep it open
                }
            }
        }
    }
}

/// Open files the agent may hold: a few per container process (stdio, pty, report socket).
const AGENT_NOFILE: u64 = 1 << 20;

/// Raises the agent's open-file limit (the kernel gives init 1024/4096). Container processes
/// get their limits from their spec.
pub fn raise_nofile() -> nix::Result<()> {
    use nix::sys::resource::{setrlimit, Resource};
    setrlimit(Resource::RLIMIT_NOFILE, AGENT_NOFILE, AGENT_NOFILE)
}

pub fn set_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// Brings `lo` up (SIOCSIFFLAGS on a throwaway socket).
pub fn loopback_up() -> std::io::Result<()> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0"));
    // Binding 127.0.0.1 fails while lo is down; fall back to a raw AF_INET socket.
    let fd = match &sock {
        Ok(s) => s.as_raw_fd(),
        Err(_) => {
            // SAFETY: plain socket(2).
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            fd
        }
    };
    // SAFETY: ifreq is plain data; the name fits in IFNAMSIZ.
    let result = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req) < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    if sock.is_err() {
        // SAFETY: we own the raw fd created above.
        unsafe { libc::close(fd) };
    }
    result
}

pub fn read_cmdline() -> Options {
    parse_cmdline(&fs::read_to_string("/proc/cmdline").unwrap_or_default())
}

pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Sets the wall clock (CLOCK_REALTIME).
pub fn set_clock(sec: i64, nsec: i64) -> nix::Result<()> {
    if sec <= 0 || !(0..1_000_000_000).contains(&nsec) {
        return Err(nix::errno::Errno::EINVAL);
    }
    let ts = nix::sys::time::TimeSpec::new(sec, nsec);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
}

/// Milliseconds since boot (CLOCK_BOOTTIME).
pub fn uptime_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline() {
        let o = parse_cmdline("console=ttyS0 quiet panic=-1 agent.log=debug agent.debug_console");
        assert_eq!(o.log_level, tracing::Level::DEBUG);
        assert!(o.debug_console);
        let o = parse_cmdline("console=ttyS0 agent.log=bogus");
        assert_eq!(o, Options::default());
    }
}
