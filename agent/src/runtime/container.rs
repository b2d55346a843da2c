//! One container: its spec, cgroup, init process and execs, and their lifecycle.
use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process as OciProcess, Spec};
use tracing::{info, warn};

use crate::error::{internal, AgentError, Result};
use crate::runtime::early_signal::InitSignals;
use crate::runtime::process::Process;
use crate::runtime::spawn::{self, Report, SpawnKind, SpawnRequest};
use crate::runtime::stdio_connections::ProcessConnections;
use crate::runtime::{cgroup, stdio, sysctl};
use crate::validate;

/// Time RemoveContainer waits for the processes to die when the request gives none.
const DEFAULT_REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
}

pub struct Container {
    pub id: String,
    pub spec: Spec,
    pub cgroup: PathBuf,
    pub init: Arc<Process>,
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    status: Mutex<Status>,
    /// Start pipe and pending exec report of the init, until StartContainer.
    pending_start: Mutex<Option<(OwnedFd, Report)>>,
    /// Storages mounted for this container only (unmounted on removal).
    pub storages: Vec<PathBuf>,
    /// Start time of the init and the termination signals held until it handles them.
    init_signals: InitSignals,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| internal(format!("blocking task failed: {e}")))
}

fn console_size(p: &OciProcess) -> Option<(u16, u16)> {
    p.console_size().map(|b| {
        (
            b.height().min(u16::MAX as u64) as u16,
            b.width().min(u16::MAX as u64) as u16,
        )
    })
}

/// Pipes, or (terminal) placeholders until the process passes back its pty master.
/// The process's stdio: a pty (made later by the process), or pipes to the agent, except for
/// the streams the host connected (`conns`), which the process gets as they are.
fn make_stdio(
    p: &OciProcess,
    conns: ProcessConnections,
) -> Result<(stdio::ChildStdio, Option<stdio::AgentStdio>)> {
    let r = if p.terminal().unwrap_or(false) {
        // A terminal's stdio is the pty: connections for it are dropped (the host sees EOF).
        stdio::null_child().map(|c| (c, None))
    } else {
        stdio::pipes_or_connections(conns).map(|(c, a)| (c, Some(a)))
    };
    r.map_err(|e| internal(format!("creating stdio: {e}")))
}

fn finish_stdio(
    pipes: Option<stdio::AgentStdio>,
    pty: Option<OwnedFd>,
    size: Option<(u16, u16)>,
) -> Result<stdio::AgentStdio> {
    match (pipes, pty) {
        (Some(s), _) => Ok(s),
        (None, Some(master)) => {
            stdio::from_pty(master, size).map_err(|e| internal(format!("pty stdio: {e}")))
        }
        (None, None) => Err(internal("terminal process without a pty")),
    }
}

/// Checks the parts of a spec the agent depends on, naming what is wrong.
pub fn check_spec(spec: &Spec) -> Result<(PathBuf, OciProcess)> {
    let process = spec
        .process()
        .clone()
        .ok_or_else(|| AgentError::InvalidArgument("spec has no process".into()))?;
    check_process(&process)?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| AgentError::InvalidArgument("spec has no root".into()))?;
    // Every rootfs the host can give lives under the run dir (shared fs or a storage).
    let root_path = validate::path_under(&root.path().to_string_lossy(), protocol::GUEST_RUN_DIR)?;
    if !root_path.is_dir() {
        return Err(AgentError::InvalidArgument(format!(
            "rootfs {} does not exist",
            root_path.display()
        )));
    }
    if let Some(sc) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        crate::runtime::seccomp::compile(sc).map_err(AgentError::InvalidArgument)?;
    }
    joined_container(spec)?;
    Ok((root_path, process))
}

/// The container whose namespaces the spec joins (a pod's container joining the pod sandbox
/// container's IPC, UTS and PID namespaces): the one every namespace path names as
/// [`protocol::container_ns_path`]. Any other path, a path on another namespace type, or
/// paths naming two containers are refused.
pub fn joined_container(spec: &Spec) -> Result<Option<String>> {
    let mut joined: Option<String> = None;
    let entries = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
    for ns in entries.into_iter().flatten() {
        let Some(path) = ns.path().as_ref() else {
            continue;
        };
        let typ = ns.typ();
        // The agent's network namespace is every container's: a path there changes nothing.
        if typ == LinuxNamespaceType::Network {
            continue;
        }
        let shown = path.display();
        let id = path
            .to_str()
            .and_then(protocol::container_of_ns_path)
            .ok_or_else(|| {
                AgentError::InvalidArgument(format!(
                    "{typ:?} namespace path {shown}: only another container's namespace, \
                     named {}/<container id>, can be joined",
                    protocol::GUEST_CONTAINER_NS_DIR
                ))
            })?;
        validate::container_id(id)?;
        if !matches!(
            typ,
            LinuxNamespaceType::Ipc | LinuxNamespaceType::Uts | LinuxNamespaceType::Pid
        ) {
            return Err(AgentError::InvalidArgument(format!(
                "{typ:?} namespace path {shown}: only IPC, UTS and PID namespaces can be joined"
            )));
        }
        match &joined {
            Some(other) if other != id => {
                return Err(AgentError::InvalidArgument(format!(
                    "the spec joins the namespaces of two containers, {other:?} and {id:?}"
                )))
            }
            _ => joined = Some(id.to_string()),
        }
    }
    Ok(joined)
}

pub fn check_process(p: &OciProcess) -> Result<()> {
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(AgentError::InvalidArgument("process has no args".into()));
    }
    if !p.cwd().is_absolute() {
        return Err(AgentError::InvalidArgument(format!(
            "process cwd {:?} is not absolute",
            p.cwd()
        )));
    }
    Ok(())
}

impl Container {
    /// Creates the cgroup and the init process, which waits for StartContainer. `join` is the
    /// init of the container whose namespaces the spec joins ([`joined_container`]).
    /// On failure nothing is left (process killed, cgroup removed).
    pub async fn create(
        id: &str,
        spec: Spec,
        storages: Vec<PathBuf>,
        join: Option<Arc<Process>>,
        conns: ProcessConnections,
    ) -> Result<Container> {
        let (_root, process) = check_spec(&spec)?;
        // Reads the guest's /proc/sys: off the async threads.
        let params = spec.clone();
        blocking(move || sysctl::check(&params))
            .await?
            .map_err(AgentError::InvalidArgument)?;
        let cg = cgroup::container_path(id);
        cgroup::create(&cg).map_err(AgentError::FailedPrecondition)?;
        let result = Self::create_in(spec.clone(), process, &cg, join, conns).await;
        match result {
            Ok((init, pending)) => Ok(Container {
                id: id.to_string(),
                spec,
                cgroup: cg,
                init: Arc::new(init),
                execs: Mutex::new(HashMap::new()),
                status: Mutex::new(Status::Created),
                pending_start: Mutex::new(Some(pending)),
                storages,
                init_signals: InitSignals::default(),
            }),
            Err(e) => {
                let cg2 = cg.clone();
                let _ = blocking(move || destroy_cgroup(&cg2, DEFAULT_REMOVE_TIMEOUT)).await;
                Err(e)
            }
        }
    }

    async fn create_in(
        spec: Spec,
        process: OciProcess,
        cg: &Path,
        join: Option<Arc<Process>>,
        conns: ProcessConnections,
    ) -> Result<(Process, (OwnedFd, Report))> {
        if let Some(res) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
            cgroup::apply(cg, res).map_err(AgentError::InvalidArgument)?;
        }
        let size = console_size(&process);
        let (child_stdio, agent_stdio) = make_stdio(&process, conns)?;
        let req = SpawnRequest {
            seccomp: spec.linux().as_ref().and_then(|l| l.seccomp().clone()),
            kind: SpawnKind::Init {
                spec: Box::new(spec),
            },
            process,
            cgroup: Some(cg.to_path_buf()),
        };
        // Joined through the pidfd: if that init exited, the spawn fails, even if its pid was
        // given to another process.
        let spawned = blocking(move || {
            spawn::spawn(&req, child_stdio, join.as_ref().map(|p| p.pidfd.as_fd()))
        })
        .await?
        .map_err(|e| AgentError::FailedPrecondition(e.to_string()))?;
        let start = spawned
            .start
            .ok_or_else(|| internal("init spawned without a start pipe"))?;
        let stdio = finish_stdio(agent_stdio, spawned.pty, size)?;
        Ok((
            Process {
                exec_id: String::new(),
                pid: spawned.pid,
                pidfd: spawned.pidfd,
                exit: spawned.exit,
                stdio,
                waited: Default::default(),
            },
            (start, spawned.report),
        ))
    }

    pub fn status(&self) -> Status {
        *lock(&self.status)
    }

    /// Lets the init exec its process and waits for the exec's outcome.
    pub async fn start(&self) -> Result<()> {
        let Some((start, report)) = lock(&self.pending_start).take() else {
            return Err(AgentError::FailedPrecondition(format!(
                "container {:?} was already started",
                self.id
            )));
        };
        let outcome = blocking(move || {
            let mut f = std::fs::File::from(start);
            f.write_all(&[1])
                .map_err(|e| format!("signalling the container to start: {e}"))?;
            drop(f);
            report.wait_exec().map_err(|e| e.to_string())
        })
        .await?;
        match outcome {
            Ok(()) => {
                self.init_signals.mark_started();
                *lock(&self.status) = Status::Running;
                info!(container = %self.id, pid = self.init.pid, "container started");
                Ok(())
            }
            Err(e) => Err(AgentError::FailedPrecondition(e)),
        }
    }

    /// Runs an extra process in the container's namespaces and cgroup.
    pub async fn exec(
        &self,
        exec_id: &str,
        process: OciProcess,
        conns: ProcessConnections,
    ) -> Result<Arc<Process>> {
        check_process(&process)?;
        if lock(&self.execs).contains_key(exec_id) {
            return Err(AgentError::AlreadyExists(format!(
                "exec {exec_id:?} already exists in container {:?}",
                self.id
            )));
        }
        if self.init.exited().is_some() || self.status() != Status::Running {
            return Err(AgentError::FailedPrecondition(format!(
                "container {:?} is not running",
                self.id
            )));
        }
        let size = console_size(&process);
        let (child_stdio, agent_stdio) = make_stdio(&process, conns)?;
        let req = SpawnRequest {
            kind: SpawnKind::Exec,
            process,
            cgroup: Some(self.cgroup.clone()),
            seccomp: self.spec.linux().as_ref().and_then(|l| l.seccomp().clone()),
        };
        // The init's namespaces are joined through its pidfd: if it exited since the check
        // above, the exec fails, even if its pid was given to another process.
        let init = self.init.clone();
        let (pid, pidfd, exit, pty) = blocking(move || {
            let s = spawn::spawn(&req, child_stdio, Some(init.pidfd.as_fd()))?;
            let (pid, pidfd, exit, pty) = (s.pid, s.pidfd, s.exit, s.pty);
            s.report.wait_exec().map(|()| (pid, pidfd, exit, pty))
        })
        .await?
        .map_err(|e| AgentError::FailedPrecondition(e.to_string()))?;
        let stdio = finish_stdio(agent_stdio, pty, size)?;
        let p = Arc::new(Process {
            exec_id: exec_id.to_string(),
            pid,
            pidfd,
            exit,
            stdio,
            waited: Default::default(),
        });
        let mut execs = lock(&self.execs);
        if execs.contains_key(exec_id) {
            let _ = p.signal(nix::sys::signal::SIGKILL);
            return Err(AgentError::AlreadyExists(format!(
                "exec {exec_id:?} already exists in container {:?}",
                self.id
            )));
        }
        execs.insert(exec_id.to_string(), p.clone());
        Ok(p)
    }

    /// The container's init for "" or its own id, else the exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() || exec_id == self.id {
            return Ok(self.init.clone());
        }
        lock(&self.execs).get(exec_id).cloned().ok_or_else(|| {
            AgentError::NotFound(format!(
                "exec {exec_id:?} not found in container {:?}",
                self.id
            ))
        })
    }

    /// Drops a finished exec (its fds and map entry), so long-lived containers with many
    /// execs (health checks) do not accumulate them.
    pub fn forget_if_finished(&self, exec_id: &str) {
        let mut execs = lock(&self.execs);
        if execs.get(exec_id).is_some_and(|p| p.finished()) {
            execs.remove(exec_id);
        }
    }

    /// Signals one process (through its pidfd); for the init, a termination signal it does
    /// not handle yet is held until it does (see [`crate::runtime::early_signal`]).
    pub async fn signal(&self, exec_id: &str, sig: nix::sys::signal::Signal) -> Result<()> {
        let p = self.process(exec_id)?;
        let r = if Arc::ptr_eq(&p, &self.init) {
            self.init_signals.send(&self.id, &p, sig).await
        } else {
            p.signal(sig)
        };
        r.map_err(|e| internal(format!("sending {sig:?} to pid {}: {e}", p.pid)))
    }

    pub fn signal_all(&self, sig: nix::sys::signal::Signal) {
        cgroup::signal_all(&self.cgroup, sig);
    }

    pub async fn pause(&self, paused: bool) -> Result<()> {
        let cg = self.cgroup.clone();
        blocking(move || {
            cgroup::freeze(&cg, paused)?;
            // Freezing completes asynchronously; wait for the kernel to confirm.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while cgroup::is_frozen(&cg) != paused {
                if std::time::Instant::now() > deadline {
                    return Err(format!("cgroup {} did not (un)freeze in 5s", cg.display()));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        })
        .await?
        .map_err(internal)?;
        *lock(&self.status) = if paused {
            Status::Paused
        } else {
            Status::Running
        };
        Ok(())
    }

    pub fn update(&self, res: &LinuxResources) -> Result<()> {
        cgroup::apply(&self.cgroup, res).map_err(AgentError::InvalidArgument)
    }

    /// Kills every process, waits for them (bounded), removes the cgroup.
    pub async fn destroy(&self, timeout: Option<Duration>) -> Result<()> {
        let timeout = timeout.unwrap_or(DEFAULT_REMOVE_TIMEOUT);
        // A paused cgroup cannot die: thaw it first.
        let _ = cgroup::freeze(&self.cgroup, false);
        lock(&self.pending_start).take();
        let cg = self.cgroup.clone();
        blocking(move || destroy_cgroup(&cg, timeout))
            .await?
            .map_err(internal)?;
        if tokio::time::timeout(timeout, self.init.wait())
            .await
            .is_err()
        {
            warn!(container = %self.id, "init did not exit after SIGKILL");
        }
        Ok(())
    }
}

/// SIGKILL everything in the cgroup, wait until it is empty (bounded), remove it.
fn destroy_cgroup(cg: &Path, timeout: Duration) -> std::result::Result<(), String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        cgroup::kill_all(cg);
        if !cgroup::is_populated(cg) || !cg.exists() {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "processes of cgroup {} still alive after {timeout:?}",
                cg.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // rmdir can briefly fail with EBUSY while the last task is being released.
    loop {
        match cgroup::remove(cg) {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(namespaces: serde_json::Value) -> Spec {
        serde_json::from_value(json!({"ociVersion": "1.0.2", "linux": {"namespaces": namespaces}}))
            .expect("a valid spec")
    }

    #[test]
    fn the_joined_container_is_the_one_every_namespace_path_names() {
        let pod = protocol::container_ns_path("sb1");
        let joining = spec(json!([
            {"type": "pid", "path": pod}, {"type": "ipc", "path": pod},
            {"type": "uts", "path": pod}, {"type": "mount"},
            {"type": "network", "path": "/var/run/netns/x"}
        ]));
        assert_eq!(joined_container(&joining).unwrap().as_deref(), Some("sb1"));
        assert_eq!(
            spawn::namespaces(&joining),
            (
                nix::sched::CloneFlags::CLONE_NEWPID
                    | nix::sched::CloneFlags::CLONE_NEWIPC
                    | nix::sched::CloneFlags::CLONE_NEWUTS,
                nix::sched::CloneFlags::CLONE_NEWNS
            )
        );
        assert_eq!(
            joined_container(&spec(json!([{"type": "ipc"}]))).unwrap(),
            None
        );
    }

    #[test]
    fn other_namespace_paths_are_refused_naming_them() {
        let pod = protocol::container_ns_path("sb1");
        for (namespaces, want) in [
            (
                json!([{"type": "ipc", "path": "/proc/42/ns/ipc"}]),
                "Ipc namespace path /proc/42/ns/ipc: only another container's",
            ),
            (
                json!([{"type": "mount", "path": pod}]),
                "only IPC, UTS and PID namespaces can be joined",
            ),
            (
                json!([{"type": "ipc", "path": pod},
                       {"type": "uts", "path": protocol::container_ns_path("sb2")}]),
                "two containers, \"sb1\" and \"sb2\"",
            ),
            (
                json!([{"type": "ipc", "path": protocol::container_ns_path("..")}]),
                "invalid container id",
            ),
        ] {
            let err = joined_container(&spec(namespaces)).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
