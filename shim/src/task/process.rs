//! One process of a container (its init or an exec): pid, stdio, and its lifecycle as one state
//! machine: every rule about what may happen to a process in which state is here. The exit is
//! recorded once (by its waiter or the VM death watch, without the state lock) and any number
//! of `wait` callers observe it.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use containerd_shim_protos::api::Status;
use containerd_shim_protos::events::task::TaskExit;
use containerd_shim_protos::protobuf::MessageField;
use tokio::sync::watch;

use super::stdio::{Copiers, StdioPaths};
use crate::error::{TaskError, TaskResult};
use crate::events::{self, EventSender, TaskEvent};

/// How a process ended and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

/// Where a process is in its life before it exits (the exit itself is in the exit watch).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Created in the guest (init) or only recorded (exec, with its OCI Process JSON kept
    /// until Start runs it).
    Created {
        exec_spec: Option<Vec<u8>>,
    },
    Running,
}

pub struct Process {
    /// "" for the container's init process.
    pub exec_id: String,
    pub pid: u32,
    pub stdio: StdioPaths,
    phase: Phase,
    /// Whether a task waits for this process's exit in the guest.
    waited: bool,
    /// Whether a SIGKILL's grace period is being watched (see `TaskCore::kill`).
    kill_watched: bool,
    /// The stdio copiers, shared with the waiter task that drains them.
    pub copiers: Arc<Mutex<Option<Copiers>>>,
    exit: watch::Sender<Option<Exit>>,
}

impl Process {
    /// A container's init, created in the guest as `pid`.
    pub fn init(pid: u32, stdio: StdioPaths) -> Self {
        let mut p = Self::new("", stdio, None);
        p.pid = pid;
        p
    }

    /// An exec recorded by Exec, run by Start.
    pub fn exec(exec_id: &str, stdio: StdioPaths, spec: Vec<u8>) -> Self {
        Self::new(exec_id, stdio, Some(spec))
    }

    fn new(exec_id: &str, stdio: StdioPaths, exec_spec: Option<Vec<u8>>) -> Self {
        Self {
            exec_id: exec_id.to_string(),
            pid: 0,
            stdio,
            phase: Phase::Created { exec_spec },
            waited: false,
            kill_watched: false,
            copiers: Arc::new(Mutex::new(None)),
            exit: watch::channel(None).0,
        }
    }

    fn is_init(&self) -> bool {
        self.exec_id.is_empty()
    }

    fn started(&self) -> bool {
        self.phase == Phase::Running
    }

    /// Start is allowed once, before the process exited. Returns an exec's process spec.
    pub fn check_start(&self, cid: &str) -> TaskResult<Option<Vec<u8>>> {
        match &self.phase {
            Phase::Created { exec_spec } if self.exit().is_none() => Ok(exec_spec.clone()),
            _ => Err(TaskError::precondition(format!(
                "process {:?} of container {cid:?} was already started",
                self.exec_id
            ))),
        }
    }

    /// Start succeeded: the process runs as `pid` in the guest.
    pub fn set_started(&mut self, pid: u32) {
        self.pid = pid;
        self.phase = Phase::Running;
    }

    /// A signal reaches a process that has not exited, and an exec only once started (a
    /// container's init can be killed before Start).
    pub fn check_signal(&self, cid: &str) -> TaskResult<()> {
        if self.exit().is_some() {
            return Err(TaskError::not_found(format!(
                "process {:?} of container {cid:?} already finished",
                self.exec_id
            )));
        }
        if !self.is_init() && !self.started() {
            return Err(TaskError::precondition(format!(
                "exec {:?} of container {cid:?} was not started",
                self.exec_id
            )));
        }
        Ok(())
    }

    /// Whether the process runs (started and not exited).
    pub fn is_running(&self) -> bool {
        self.started() && self.exit().is_none()
    }

    /// Delete is refused while the process runs.
    pub fn check_delete(&self, cid: &str) -> TaskResult<()> {
        if !self.is_running() {
            return Ok(());
        }
        Err(TaskError::precondition(if self.is_init() {
            format!("container {cid:?} is still running: kill it first")
        } else {
            format!(
                "exec {:?} of container {cid:?} is still running",
                self.exec_id
            )
        }))
    }

    /// Exec, Pause and Resume need a running init.
    pub fn check_running(&self, cid: &str) -> TaskResult<()> {
        if self.exit().is_some() || !self.started() {
            return Err(TaskError::precondition(format!(
                "container {cid:?} is not running"
            )));
        }
        Ok(())
    }

    /// Exec needs an init that has not exited (it may not be started yet).
    pub fn check_exec_into(&self, cid: &str) -> TaskResult<()> {
        if self.exit().is_some() {
            return Err(TaskError::precondition(format!(
                "container {cid:?} is not running"
            )));
        }
        Ok(())
    }

    /// Marks the process as waited for; true if nobody waited for it yet (so the caller
    /// starts the waiter).
    pub fn claim_waiter(&mut self) -> bool {
        !std::mem::replace(&mut self.waited, true)
    }

    /// Marks the SIGKILL grace period as watched; true for the first caller only.
    pub fn claim_kill_watch(&mut self) -> bool {
        !std::mem::replace(&mut self.kill_watched, true)
    }

    /// The guest holds no stdin of this process that CloseIO must close: it exited, is
    /// exiting (its waiter holds the copiers) or never started.
    pub fn stdin_gone(&self) -> bool {
        self.exit().is_some() || self.waited || !self.started()
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// A handle the waiter and death watch use to record the exit without the state lock.
    pub fn exit_handle(&self) -> ExitHandle {
        ExitHandle(self.exit.clone())
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.subscribe()
    }

    /// containerd's view of the process.
    pub fn status(&self, paused: bool) -> Status {
        match (self.exit(), &self.phase) {
            (Some(_), _) => Status::STOPPED,
            (None, _) if paused => Status::PAUSED,
            (None, Phase::Created { .. }) => Status::CREATED,
            (None, Phase::Running) => Status::RUNNING,
        }
    }
}

/// Records a process's exit exactly once.
#[derive(Clone)]
pub struct ExitHandle(watch::Sender<Option<Exit>>);

impl ExitHandle {
    /// Sets the exit if none was set yet and returns the exit now recorded. `on_first` runs
    /// only for the call that set it, before any waiter can see the exit (so TaskExit is
    /// queued before a `wait` caller can go on to Delete).
    pub fn set_then(&self, status: u32, on_first: impl FnOnce(Exit)) -> Exit {
        let mut on_first = Some(on_first);
        self.0.send_if_modified(|cur| {
            if cur.is_some() {
                return false;
            }
            let exit = Exit {
                status,
                at: SystemTime::now(),
            };
            *cur = Some(exit);
            if let Some(f) = on_first.take() {
                f(exit);
            }
            true
        });
        self.0.borrow().unwrap_or(Exit {
            status,
            at: SystemTime::now(),
        })
    }

    /// [`Self::set_then`] without a callback; returns whether this call set the exit.
    pub fn set(&self, status: u32) -> (Exit, bool) {
        let mut first = false;
        let exit = self.set_then(status, |_| first = true);
        (exit, first)
    }

    pub fn get(&self) -> Option<Exit> {
        *self.0.borrow()
    }

    /// Records the exit and, if this call recorded it, queues TaskExit for `cid`/`event_id`.
    pub fn publish(&self, events: &EventSender, status: u32, cid: &str, event_id: &str, pid: u32) {
        self.set_then(status, |exit| {
            // A milestone of the start timeline `make bench` draws.
            tracing::info!(
                "exited {cid} (exec {event_id:?}) with status {}",
                exit.status
            );
            events::send(
                events,
                TaskEvent::Exit(TaskExit {
                    container_id: cid.to_string(),
                    id: event_id.to_string(),
                    pid,
                    exit_status: exit.status,
                    exited_at: MessageField::some(events::timestamp(exit.at)),
                    ..Default::default()
                }),
            );
        });
    }
}

/// Waits until the process has exited.
pub async fn wait_exit(mut rx: watch::Receiver<Option<Exit>>) -> Option<Exit> {
    rx.wait_for(Option::is_some).await.ok().and_then(|v| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_is_set_once_and_seen_by_every_waiter() {
        let p = Process::init(1, StdioPaths::default());
        let waiters: Vec<_> = (0..3)
            .map(|_| tokio::spawn(wait_exit(p.subscribe())))
            .collect();
        assert_eq!(p.status(false), Status::CREATED);
        let h = p.exit_handle();
        let (e1, first) = h.set(3);
        assert!(first);
        let (e2, again) = h.set(255);
        assert!(!again);
        assert_eq!(e1, e2);
        for w in waiters {
            assert_eq!(w.await.unwrap().unwrap().status, 3);
        }
        assert_eq!(p.status(true), Status::STOPPED);
    }
}
