//! Creating container processes through a re-exec of the agent binary.
//!
//! The agent is multi-threaded (tokio, blocking pool), which makes unshare/setns/fork unsafe in
//! it. So it runs `/proc/self/exe __spawn` (a fresh single-threaded process) with:
//!   fd 0/1/2  the container process's stdio (pipe ends or the pty slave),
//!   fd 3      the JSON [`SpawnRequest`], read to EOF,
//!   fd 4      the report pipe (written by the helper and its child; CLOEXEC),
//!   fd 5      (init only) the start pipe: one byte means "exec now",
//!   fd 6      the pidfd of the init whose namespaces the process joins: for an exec, its
//!             container's (all of them); for an init, the pod sandbox container's (the ones
//!             its spec names by [`protocol::container_ns_path`]), when it joins any.
//! The helper joins the cgroup, enters or creates the namespaces, forks, reports the child's pid
//! (`PID <n>`, with the child's pidfd attached: opened while the child is still the helper's
//! own, so it names that process and no later owner of its pid) and exits; the child
//! (reparented to the agent, a subreaper) sets itself up,
//! reports `READY`, waits for the start byte (init only) and execs. Any failure is reported as
//! `ERR <message>`; EOF after READY means the exec succeeded.
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sched::CloneFlags;
use nix::sys::socket;
use nix::unistd::{self, ForkResult};
use oci_spec::runtime::{LinuxNamespaceType, LinuxSeccomp, Process, Spec};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::guest::reaper;
use crate::runtime::stdio::ChildStdio;
use crate::runtime::{mount, pidfd, setup};

pub const HELPER_ARG: &str = "__spawn";
const SETUP_FD: RawFd = 3;
const REPORT_FD: RawFd = 4;
const START_FD: RawFd = 5;
const JOIN_FD: RawFd = 6;
/// The namespaces an exec shares with its container's init (joined in one setns).
const EXEC_NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWIPC
    .union(CloneFlags::CLONE_NEWUTS)
    .union(CloneFlags::CLONE_NEWNET)
    .union(CloneFlags::CLONE_NEWPID)
    .union(CloneFlags::CLONE_NEWCGROUP)
    .union(CloneFlags::CLONE_NEWNS);

#[derive(Debug, Error)]
pub enum SpawnError {
    #[error("cannot start the spawn helper: {0}")]
    Helper(#[source] std::io::Error),
    #[error("{0}")]
    Setup(String),
    #[error("the spawn helper ended without reporting ({0})")]
    NoReport(&'static str),
}

#[derive(Serialize, Deserialize)]
pub enum SpawnKind {
    /// A container's first process: new namespaces (or another container's, see
    /// [`protocol::container_ns_path`]), rootfs, waits for the start byte.
    Init { spec: Box<Spec> },
    /// A process joining the namespaces of the running init, whose pidfd [`spawn`] passes.
    Exec,
}

#[derive(Serialize, Deserialize)]
pub struct SpawnRequest {
    pub kind: SpawnKind,
    pub process: Process,
    /// cgroup v2 directory the process joins.
    pub cgroup: Option<PathBuf>,
    /// The container's seccomp profile, applied last (init and execs alike).
    pub seccomp: Option<LinuxSeccomp>,
}

/// A process whose setup succeeded: it runs (exec) or waits for the start byte (init).
pub struct Spawned {
    pub pid: i32,
    /// The process's pidfd, opened by the helper while the process was its child.
    pub pidfd: OwnedFd,
    pub exit: reaper::ExitReceiver,
    /// Report pipe, still open: init reports the exec result after the start byte.
    pub report: Report,
    /// Write end of the start pipe (init only).
    pub start: Option<OwnedFd>,
    /// Master of the pty the process created in its own devpts (terminal processes).
    pub pty: Option<OwnedFd>,
}

/// The agent's end of the report socket: text lines, plus the pty master passed with
/// SCM_RIGHTS for terminal processes.
pub struct Report {
    sock: OwnedFd,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Report {
    fn new(sock: OwnedFd) -> Self {
        Report {
            sock,
            buf: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// Next report line, or None at EOF.
    fn line(&mut self) -> Result<Option<String>, SpawnError> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(Some(String::from_utf8_lossy(&line).trim_end().to_string()));
            }
            let mut chunk = [0u8; 512];
            let mut cmsg = nix::cmsg_space!([RawFd; 1]);
            let mut iov = [std::io::IoSliceMut::new(&mut chunk)];
            let msg = match socket::recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                socket::MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(SpawnError::Setup(format!("reading the spawn report: {e}"))),
            };
            let n = msg.bytes;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let socket::ControlMessageOwned::ScmRights(fds) = c {
                        // SAFETY: the kernel just installed these fds for us.
                        self.fds.extend(
                            fds.into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
            }
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let rest = String::from_utf8_lossy(&self.buf).trim_end().to_string();
                self.buf.clear();
                return Ok(Some(rest));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Waits for the exec: EOF means success, `ERR` carries the failure.
    pub fn wait_exec(mut self) -> Result<(), SpawnError> {
        loop {
            match self.line()? {
                None => return Ok(()),
                Some(l) => {
                    if let Some(msg) = l.strip_prefix("ERR ") {
                        return Err(SpawnError::Setup(msg.to_string()));
                    }
                }
            }
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError::Helper(e.into()))
}

/// Starts the helper and waits until the process is set up (blocking: call from
/// spawn_blocking). `join` is the pidfd of the init whose namespaces the process joins: for an
/// exec its container's (required), for an init the one its spec's namespace paths name. On
/// error nothing is left running.
pub fn spawn(
    req: &SpawnRequest,
    stdio: ChildStdio,
    join: Option<BorrowedFd<'_>>,
) -> Result<Spawned, SpawnError> {
    let is_init = matches!(req.kind, SpawnKind::Init { .. });
    let joins = match &req.kind {
        SpawnKind::Init { spec } => !namespaces(spec).0.is_empty(),
        SpawnKind::Exec => true,
    };
    if joins != join.is_some() {
        return Err(SpawnError::Setup(
            "a process joins another's namespaces with its pidfd, and only then".into(),
        ));
    }
    let (setup_r, setup_w) = pipe()?;
    let (report_r, report_w) = socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::Stream,
        None,
        socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| SpawnError::Helper(e.into()))?;
    let (start_r, start_w) = if is_init {
        let (r, w) = pipe()?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let fds = [
        setup_r.as_raw_fd(),
        report_w.as_raw_fd(),
        start_r.as_ref().map_or(-1, |f| f.as_raw_fd()),
        join.map_or(-1, |f| f.as_raw_fd()),
    ];
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(HELPER_ARG)
        .env_clear()
        .stdin(Stdio::from(stdio.stdin))
        .stdout(Stdio::from(stdio.stdout))
        .stderr(Stdio::from(stdio.stderr));
    // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Move out of the way first so the dup2s below cannot clobber each other.
            let mut tmp = [-1; 4];
            for (i, fd) in fds.iter().enumerate() {
                if *fd >= 0 {
                    tmp[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                    if tmp[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            for (i, fd) in tmp.iter().enumerate() {
                if *fd >= 0 && libc::dup2(*fd, SETUP_FD + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(SpawnError::Helper)?;
    let helper_pid = child.id() as i32;
    // The reaper owns the helper's exit status; nobody needs it.
    drop(reaper::global().register(helper_pid));
    drop(child);
    drop(setup_r);
    drop(report_w);
    drop(start_r);

    let json = serde_json::to_vec(req)
        .map_err(|e| SpawnError::Setup(format!("encoding the spawn request: {e}")))?;
    let mut setup_w = File::from(setup_w);
    // A helper that died early closes its end: the report below says why.
    let _ = setup_w.write_all(&json);
    drop(setup_w);

    let mut report = Report::new(report_r);
    let pid = match report.line()? {
        Some(l) if l.starts_with("PID ") => l[4..]
            .parse::<i32>()
            .map_err(|_| SpawnError::Setup(format!("bad report line {l:?}")))?,
        Some(l) => return Err(SpawnError::Setup(strip_err(&l))),
        None => return Err(SpawnError::NoReport("no pid")),
    };
    let exit = reaper::global().register(pid);
    // Sent with the PID line: the only fd received so far.
    let Some(child_pidfd) = report.fds.pop() else {
        let _ = nix::sys::signal::kill(unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        return Err(SpawnError::Setup("the spawn helper passed no pidfd".into()));
    };
    let kill = || {
        let _ = pidfd::send_signal(&child_pidfd, nix::sys::signal::SIGKILL);
    };
    let mut pty = None;
    let ready = loop {
        match report.line() {
            Ok(Some(l)) if l == "PTY" => match report.fds.pop() {
                Some(fd) => pty = Some(fd),
                None => break Ok(Some("ERR the pty master was not passed".to_string())),
            },
            other => break other,
        }
    };
    match ready {
        Ok(Some(l)) if l == "READY" => {}
        Ok(Some(l)) => {
            kill();
            return Err(SpawnError::Setup(strip_err(&l)));
        }
        Ok(None) => {
            kill();
            return Err(SpawnError::NoReport("setup did not finish"));
        }
        Err(e) => {
            kill();
            return Err(e);
        }
    }
    if pty.is_none() && req.process.terminal().unwrap_or(false) {
        kill();
        return Err(SpawnError::Setup("the terminal process sent no pty".into()));
    }
    Ok(Spawned {
        pid,
        pidfd: child_pidfd,
        exit,
        report,
        start: start_w,
        pty,
    })
}

fn strip_err(l: &str) -> String {
    l.strip_prefix("ERR ").unwrap_or(l).to_string()
}

// ---------------------------------------------------------------------------------------------
// Helper side: runs in the re-executed, single-threaded process.

/// Entry point of `kata-agent __spawn`. Never returns.
pub fn helper_main() -> ! {
    for fd in [REPORT_FD, START_FD, JOIN_FD] {
        let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
    // SAFETY: fd 4 is the report pipe the agent set up for us and nobody else owns it.
    let mut report = unsafe { File::from_raw_fd(REPORT_FD) };
    let code = match helper(&mut report) {
        Ok(()) => 0,
        Err(msg) => {
            let _ = writeln!(report, "ERR {}", one_line(&msg));
            1
        }
    };
    std::process::exit(code)
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

fn helper(report: &mut File) -> Result<(), String> {
    let mut json = Vec::new();
    // SAFETY: fd 3 is the setup pipe, owned by this process only.
    let mut setup = unsafe { File::from_raw_fd(SETUP_FD) };
    setup
        .read_to_end(&mut json)
        .map_err(|e| format!("reading the spawn request: {e}"))?;
    drop(setup);
    let req: SpawnRequest =
        serde_json::from_slice(&json).map_err(|e| format!("decoding the spawn request: {e}"))?;

    if let Some(adj) = req.process.oom_score_adj() {
        // Here, in the guest's /proc and before any namespace, and inherited by the child:
        // never through a /proc the container's image could provide. This sandbox (and some
        // hosts) refuse lowering it: a warning case, not a failure.
        let _ = std::fs::write("/proc/self/oom_score_adj", adj.to_string());
    }
    if let Some(cg) = &req.cgroup {
        let procs = cg.join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string())
            .map_err(|e| format!("joining cgroup {}: {e}", cg.display()))?;
    }
    match &req.kind {
        SpawnKind::Init { spec } => enter_namespaces(spec)?,
        SpawnKind::Exec => {
            // SAFETY: fd 6 is the init's pidfd the agent passed, owned by this process only;
            // closed here, before the fork, so the container process never holds it.
            let init = unsafe { OwnedFd::from_raw_fd(JOIN_FD) };
            pidfd::join(std::os::fd::AsFd::as_fd(&init), EXEC_NAMESPACES)?;
        }
    }
    // The child waits until the parent reported its pid, so `PID` is always the first line.
    let (sync_r, sync_w) =
        unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("creating a pipe: {e}"))?;
    // SAFETY: this process is single-threaded (fresh exec, no runtime started).
    match unsafe { unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => {
            // The child is ours and unreaped: its pid is still its own.
            let sent = pidfd::open(child.as_raw())
                .map_err(|e| format!("pidfd_open of the new process {child}: {e}"))
                .and_then(|fd| {
                    let line = format!("PID {}\n", child.as_raw());
                    socket::sendmsg::<()>(
                        report.as_raw_fd(),
                        &[std::io::IoSlice::new(line.as_bytes())],
                        &[socket::ControlMessage::ScmRights(&[fd.as_raw_fd()])],
                        socket::MsgFlags::empty(),
                        None,
                    )
                    .map_err(|e| format!("writing the report: {e}"))
                });
            if let Err(e) = sent {
                // Never let a child the agent does not know about go on with its setup.
                let _ = nix::sys::signal::kill(child, nix::sys::signal::SIGKILL);
                return Err(e);
            }
            drop(sync_w);
            Ok(())
        }
        ForkResult::Child => {
            drop(sync_w);
            let mut b = [0u8; 1];
            // Returns 0 (EOF) once the parent wrote the pid and closed its end.
            let _ = File::from(sync_r).read(&mut b);
            let err = child_main(&req, report);
            let _ = writeln!(report, "ERR {}", one_line(&err));
            std::process::exit(1)
        }
    }
}

/// The namespaces a container init joins (named by a path: the pod sandbox container's, see
/// [`protocol::container_ns_path`]) and the ones it creates, from its spec. The agent checked
/// the paths before spawning ([`crate::runtime::container::joined_container`]).
pub fn namespaces(spec: &Spec) -> (CloneFlags, CloneFlags) {
    let (mut join, mut new) = (CloneFlags::empty(), CloneFlags::empty());
    let entries = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
    for ns in entries.into_iter().flatten() {
        let flag = match ns.typ() {
            // Containers always share the sandbox's (the agent's) network namespace.
            LinuxNamespaceType::Network => continue,
            LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
            LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            // Refused by check_spec; creating them is what would go wrong.
            LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
            LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
        };
        if ns.path().is_some() {
            join |= flag;
        } else {
            new |= flag;
        }
    }
    (join, new)
}

/// Joins the namespaces the spec names (through the pidfd at fd 6), then creates the others.
fn enter_namespaces(spec: &Spec) -> Result<(), String> {
    let (join, mut new) = namespaces(spec);
    if new.intersects(CloneFlags::CLONE_NEWUSER) {
        return Err("user namespaces are not supported".into());
    }
    if new.bits() & libc::CLONE_NEWTIME != 0 {
        return Err("time namespaces are not supported".into());
    }
    let joinable = CloneFlags::CLONE_NEWIPC
        .union(CloneFlags::CLONE_NEWUTS)
        .union(CloneFlags::CLONE_NEWPID);
    if !joinable.contains(join) {
        return Err(format!(
            "only IPC, UTS and PID namespaces can be joined, not {:?}",
            join.difference(joinable)
        ));
    }
    if !join.is_empty() {
        // SAFETY: fd 6 is the pidfd the agent passed, owned by this process only; closed
        // here, before the fork, so the container process never holds it.
        let other = unsafe { OwnedFd::from_raw_fd(JOIN_FD) };
        pidfd::join(std::os::fd::AsFd::as_fd(&other), join)?;
    }
    // The rootfs is built with mounts: without a private mount namespace they would leak into
    // the agent's.
    new |= CloneFlags::CLONE_NEWNS;
    nix::sched::unshare(new).map_err(|e| format!("unshare {new:?}: {e}"))
}

/// The forked child: set everything up, report READY, wait for the start byte, exec.
/// Returns only on failure, with the message.
fn child_main(req: &SpawnRequest, report: &mut File) -> String {
    match child_setup(req, report) {
        Ok(prepared) => {
            if writeln!(report, "READY").is_err() {
                return "writing the report failed".into();
            }
            if matches!(req.kind, SpawnKind::Init { .. }) {
                // SAFETY: fd 5 is the start pipe, owned by this process.
                let mut start = unsafe { File::from_raw_fd(START_FD) };
                let mut b = [0u8; 1];
                match start.read(&mut b) {
                    Ok(1) => {}
                    // The agent dropped the container before starting it.
                    _ => std::process::exit(1),
                }
            }
            setup::exec(prepared)
        }
        Err(e) => e,
    }
}

fn child_setup(req: &SpawnRequest, report: &mut File) -> Result<setup::Prepared, String> {
    let terminal = req.process.terminal().unwrap_or(false);
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    let is_init = matches!(req.kind, SpawnKind::Init { .. });
    if let SpawnKind::Init { spec } = &req.kind {
        let root = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .ok_or("spec has no root")?;
        let root = mount::setup_rootfs(spec, Path::new(&root), req.cgroup.as_deref())?;
        setup::container_wide(spec)?;
        mount::finalize_rootfs(spec, root)?;
    }
    if terminal {
        // The pty comes from the container's own devpts, so ttyname() works inside it.
        let size = req.process.console_size().map(|b| {
            (
                b.height().min(u16::MAX as u64) as u16,
                b.width().min(u16::MAX as u64) as u16,
            )
        });
        let master = setup::terminal(is_init, size)?;
        socket::sendmsg::<()>(
            report.as_raw_fd(),
            &[std::io::IoSlice::new(b"PTY\n")],
            &[socket::ControlMessage::ScmRights(&[master.as_raw_fd()])],
            socket::MsgFlags::empty(),
            None,
        )
        .map_err(|e| format!("passing the pty master: {e}"))?;
    }
    setup::process(&req.process, req.seccomp.as_ref())
}
