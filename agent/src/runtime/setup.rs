//! Process setup inside the spawn helper's child, after the rootfs: session and terminal,
//! container-wide settings (hostname, sysctl), then per process rlimits, user, capabilities,
//! cwd, no_new_privileges, seccomp and finally execve.
use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability as Cap, CapsHashSet};
use nix::fcntl::OFlag;
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::unistd::{self, Gid, Uid};
use oci_spec::runtime::{
    Capabilities, LinuxCapabilities, LinuxSeccomp, PosixRlimit, PosixRlimitType, Process, Spec,
};

use crate::runtime::beneath::{fd_path, Root};
use crate::runtime::{seccomp, sysctl};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything execve needs, resolved before the process reports READY.
pub struct Prepared {
    path: CString,
    display: String,
    args: Vec<CString>,
    env: Vec<CString>,
    seccomp: Option<seccomp::Program>,
}

fn cstring(s: &str, what: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} {s:?} contains a NUL byte"))
}

/// Opens a pty in the devpts of the current mount namespace, makes its slave fds 0/1/2 and
/// the controlling terminal, and returns the master (to be passed to the agent). A container
/// init also gets the slave bound on /dev/console.
pub fn terminal(is_init: bool, size: Option<(u16, u16)>) -> Result<OwnedFd, String> {
    // Beneath the container's root: an image's /dev/ptmx cannot name a file outside it.
    let root = Root::open(Path::new("/")).map_err(|e| e.to_string())?;
    let open = |p: &str| root.open_file(Path::new(p), OFlag::O_RDWR | OFlag::O_NOCTTY);
    let master = open("/dev/ptmx")
        .or_else(|_| open("/dev/pts/ptmx"))
        .map_err(|e| format!("opening the pty master (is /dev/pts mounted?): {e}"))?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int; TIOCGPTPEER returns a new fd.
    let slave = unsafe {
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK as _, &unlock) < 0 {
            return Err(format!(
                "unlocking the pty: {}",
                std::io::Error::last_os_error()
            ));
        }
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER as _,
            libc::O_RDWR | libc::O_NOCTTY,
        )
    };
    if slave < 0 {
        return Err(format!(
            "opening the pty slave: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: TIOCGPTPEER returned a fresh fd.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    if let Some((rows, cols)) = size {
        // Before exec, so the process never sees a 0x0 terminal.
        crate::runtime::stdio::set_winsize(&master, rows, cols)
            .map_err(|e| format!("setting the terminal size: {e}"))?;
    }
    for fd in 0..3 {
        unistd::dup2(slave.as_raw_fd(), fd).map_err(|e| format!("dup2 pty slave: {e}"))?;
    }
    // SAFETY: TIOCSCTTY on fd 0 with arg 0; no memory is passed.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY as _, 0) } < 0 {
        return Err(format!(
            "making the pty the controlling terminal: {}",
            std::io::Error::last_os_error()
        ));
    }
    if is_init {
        console(&slave)?;
    }
    Ok(master)
}

/// Binds the pty slave on the container's /dev/console (resolved beneath the container's
/// root, created if missing), when it has a /dev and a /proc to name the fds through.
fn console(slave: &OwnedFd) -> Result<(), String> {
    let slave_path = fd_path(slave);
    let Ok(name) = std::fs::read_link(&slave_path) else {
        return Ok(());
    };
    let root = Root::open(Path::new("/")).map_err(|e| e.to_string())?;
    let dev = root
        .resolve_if_exists(Path::new("/dev"))
        .map_err(|e| e.to_string())?;
    if dev.is_none() {
        return Ok(());
    }
    let console = Path::new("/dev/console");
    let target = root.create_file(console).map_err(|e| e.to_string())?;
    nix::mount::mount(
        Some(&slave_path),
        &fd_path(&target),
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("binding {} on {}: {e}", name.display(), console.display()))
}

/// Settings of the whole container, applied once by its init: hostname (in a UTS namespace
/// of its own: a pod's container joining the pod's keeps the pod's name), sysctl (checked by
/// [`sysctl::check`], written in the namespaces just entered: the container's own or the
/// pod's it joined).
pub fn container_wide(spec: &Spec) -> Result<(), String> {
    let new_uts = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|n| {
            n.iter().any(|n| {
                n.typ() == oci_spec::runtime::LinuxNamespaceType::Uts && n.path().is_none()
            })
        });
    if let Some(h) = spec.hostname().as_ref().filter(|h| !h.is_empty()) {
        if new_uts {
            unistd::sethostname(h).map_err(|e| format!("sethostname {h:?}: {e}"))?;
        }
    }
    if let Some(params) = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()) {
        for (k, v) in params {
            // The guest's /proc (this process has not left the agent's root yet): the files
            // show the namespaces of the process that writes them.
            let path = sysctl::file_of(Path::new(sysctl::PROC_SYS), k)?;
            std::fs::write(&path, v).map_err(|e| format!("setting sysctl {k}={v}: {e}"))?;
        }
    }
    Ok(())
}

/// Per-process setup; returns what exec needs.
pub fn process(p: &Process, seccomp_spec: Option<&LinuxSeccomp>) -> Result<Prepared, String> {
    for rl in p.rlimits().iter().flatten() {
        set_rlimit(rl)?;
    }
    let args = p.args().clone().unwrap_or_default();
    let Some(arg0) = args.first() else {
        return Err("process has no args".into());
    };
    let env: Vec<String> = p.env().clone().unwrap_or_default();
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let exe = resolve_executable(arg0, path_var, p.cwd())?;

    let seccomp = seccomp_spec.map(seccomp::compile).transpose()?;
    let nnp = p.no_new_privileges().unwrap_or(false);
    if let (Some(prog), false) = (&seccomp, nnp) {
        // Without no_new_privs the kernel wants CAP_SYS_ADMIN: install while still root.
        seccomp::install(prog)?;
    }
    let caps = p.capabilities().as_ref();
    if let Some(c) = caps {
        drop_bounding(c)?;
    }
    let user = p.user();
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
            mask as libc::mode_t,
        ));
    }
    // With a capability spec, keep the permitted set across the uid change and set every set
    // below; without one, the kernel's rules apply (a non-root user ends with none).
    nix::sys::prctl::set_keepcaps(caps.is_some()).map_err(|e| format!("PR_SET_KEEPCAPS: {e}"))?;
    let gids: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    unistd::setgroups(&gids).map_err(|e| format!("setgroups {gids:?}: {e}"))?;
    unistd::setgid(Gid::from_raw(user.gid())).map_err(|e| format!("setgid {}: {e}", user.gid()))?;
    unistd::setuid(Uid::from_raw(user.uid())).map_err(|e| format!("setuid {}: {e}", user.uid()))?;
    nix::sys::prctl::set_keepcaps(false).map_err(|e| format!("PR_SET_KEEPCAPS: {e}"))?;
    if let Some(c) = caps {
        set_caps(c)?;
    }
    // Beneath the container's root, as the process's user: a symlink in the image cannot
    // take the process out of its root (e.g. through /proc/1/root).
    let cwd = Root::open(Path::new("/"))
        .and_then(|r| r.resolve_dir(p.cwd()))
        .map_err(|e| format!("the process's cwd: {e}"))?;
    unistd::fchdir(cwd.as_raw_fd()).map_err(|e| format!("chdir {}: {e}", p.cwd().display()))?;
    if nnp {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("PR_SET_NO_NEW_PRIVS: {e}"))?;
    }
    // With no_new_privs the filter goes last, just before execve.
    let seccomp = seccomp.filter(|_| nnp);
    Ok(Prepared {
        path: cstring(&exe.to_string_lossy(), "executable path")?,
        display: arg0.clone(),
        args: args
            .iter()
            .map(|a| cstring(a, "argument"))
            .collect::<Result<_, _>>()?,
        env: env
            .iter()
            .map(|e| cstring(e, "environment entry"))
            .collect::<Result<_, _>>()?,
        seccomp,
    })
}

/// Seccomp (last: it may forbid the calls above), default signal state, execve.
/// Returns only on failure.
pub fn exec(p: Prepared) -> String {
    // The agent binary ignores SIGPIPE (Rust runtime); a container must see the default.
    // SAFETY: resetting a disposition to SIG_DFL installs no handler.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    if let Some(prog) = &p.seccomp {
        if let Err(e) = seccomp::install(prog) {
            return e;
        }
    }
    match unistd::execve(&p.path, &p.args, &p.env) {
        Err(e) => format!("exec {:?}: {}", p.display, e.desc()),
        Ok(never) => match never {},
    }
}

/// execvp semantics with the container's PATH, evaluated inside the container root.
pub fn resolve_executable(arg0: &str, path_var: &str, cwd: &Path) -> Result<PathBuf, String> {
    let not_found = || format!("exec {arg0:?}: executable file not found in $PATH");
    if arg0.is_empty() {
        return Err("exec \"\": empty command".into());
    }
    if arg0.contains('/') {
        let p = if Path::new(arg0).is_absolute() {
            PathBuf::from(arg0)
        } else {
            cwd.join(arg0)
        };
        return match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => Err(format!("exec {arg0:?}: is a directory")),
            Ok(_) => Ok(p),
            Err(e) => Err(format!("exec {arg0:?}: {}", io_desc(&e))),
        };
    }
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = Path::new(dir).join(arg0);
        if is_executable(&cand) {
            return Ok(cand);
        }
    }
    Err(not_found())
}

fn io_desc(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The libc resource number of an OCI rlimit type.
pub fn rlimit_resource(t: PosixRlimitType) -> Option<libc::c_int> {
    use PosixRlimitType::*;
    let r = match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
        #[allow(unreachable_patterns)]
        _ => return None,
    };
    Some(r as libc::c_int)
}

fn set_rlimit(rl: &PosixRlimit) -> Result<(), String> {
    let res = rlimit_resource(rl.typ()).ok_or_else(|| format!("unknown rlimit {}", rl.typ()))?;
    let lim = libc::rlimit {
        rlim_cur: rl.soft() as libc::rlim_t,
        rlim_max: rl.hard() as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct we pass by reference.
    if unsafe { libc::setrlimit(res as _, &lim) } < 0 {
        return Err(format!(
            "setrlimit {} soft={} hard={}: {}",
            rl.typ(),
            rl.soft(),
            rl.hard(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// OCI capability names -> the caps crate's; unknown ones are an error naming them.
pub fn to_caps(set: &Capabilities) -> Result<CapsHashSet, String> {
    set.iter()
        .map(|c| {
            let name = format!("CAP_{c}");
            name.parse::<Cap>()
                .map_err(|_| format!("unknown capability {name}"))
        })
        .collect()
}

fn drop_bounding(c: &LinuxCapabilities) -> Result<(), String> {
    let keep = to_caps(c.bounding().as_ref().unwrap_or(&HashSet::new()))?;
    // Only capabilities this kernel knows can be dropped. Asked of the kernel (prctl), not read
    // from /proc/sys/kernel/cap_last_cap: the container's /proc may be the image's own files.
    let supported = caps::runtime::thread_all_supported();
    for cap in supported {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| format!("dropping {cap} from the bounding set: {e}"))?;
        }
    }
    Ok(())
}

fn set_caps(c: &LinuxCapabilities) -> Result<(), String> {
    let empty = HashSet::new();
    let eff = to_caps(c.effective().as_ref().unwrap_or(&empty))?;
    let inh = to_caps(c.inheritable().as_ref().unwrap_or(&empty))?;
    let perm = to_caps(c.permitted().as_ref().unwrap_or(&empty))?;
    let amb = to_caps(c.ambient().as_ref().unwrap_or(&empty))?;
    // Shrink effective first (it must stay within permitted), then the others.
    let cur_perm = caps::read(None, CapSet::Permitted).unwrap_or_default();
    caps::set(
        None,
        CapSet::Effective,
        &eff.intersection(&cur_perm).copied().collect(),
    )
    .map_err(|e| format!("setting effective capabilities: {e}"))?;
    caps::set(None, CapSet::Inheritable, &inh)
        .map_err(|e| format!("setting inheritable capabilities: {e}"))?;
    caps::set(None, CapSet::Permitted, &perm)
        .map_err(|e| format!("setting permitted capabilities: {e}"))?;
    caps::set(None, CapSet::Effective, &eff)
        .map_err(|e| format!("setting effective capabilities: {e}"))?;
    for cap in amb {
        caps::raise(None, CapSet::Ambient, cap)
            .map_err(|e| format!("raising ambient capability {cap}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::Capability as OciCap;

    #[test]
    fn capability_names() {
        let set: Capabilities = [OciCap::Chown, OciCap::NetBindService, OciCap::SysAdmin]
            .into_iter()
            .collect();
        let c = to_caps(&set).unwrap();
        assert!(c.contains(&Cap::CAP_CHOWN));
        assert!(c.contains(&Cap::CAP_NET_BIND_SERVICE));
        assert!(c.contains(&Cap::CAP_SYS_ADMIN));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn rlimits() {
        assert_eq!(
            rlimit_resource(PosixRlimitType::RlimitNofile),
            Some(libc::RLIMIT_NOFILE as libc::c_int)
        );
        assert_eq!(
            rlimit_resource(PosixRlimitType::RlimitCore),
            Some(libc::RLIMIT_CORE as libc::c_int)
        );
        let rl: PosixRlimit =
            serde_json::from_str(r#"{"type":"RLIMIT_NOFILE","hard":1024,"soft":512}"#).unwrap();
        assert_eq!(rl.typ(), PosixRlimitType::RlimitNofile);
    }

    #[test]
    fn executable_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("tool");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("/nonexistent:{}", dir.path().display());
        assert_eq!(
            resolve_executable("tool", &path, Path::new("/")).unwrap(),
            bin
        );
        let e = resolve_executable("nosuch", &path, Path::new("/")).unwrap_err();
        assert!(e.contains("executable file not found"), "{e}");
        let e = resolve_executable("/bin/nosuch", &path, Path::new("/")).unwrap_err();
        assert_eq!(e, "exec \"/bin/nosuch\": No such file or directory");
    }
}
