//! One process of a container (its init or an exec): pid, stdio, lifecycle status and the
//! exit status that any number of `wait` callers observe.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use containerd_shim_protos::api::Status;

use tokio::sync::watch;

use crate::stdio::{Copiers, StdioPaths};

/// How a process ended and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

/// Exit status reported when the VM is gone and the real status cannot be known.
pub const VM_GONE_EXIT_STATUS: u32 = 255;

/// Where a process is in its life (before it exits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Created,
    Running,
}

pub struct Process {
    /// "" for the container's init process.
    pub exec_id: String,
    pub pid: u32,
    pub stdio: StdioPaths,
    pub phase: Phase,
    /// OCI Process JSON of an exec, kept until Start runs it.
    pub exec_spec: Option<Vec<u8>>,
    /// Whether a task waits for this process's exit in the guest.
    pub waited: bool,
    /// The stdio copiers, shared with the waiter task that drains them.
    pub copiers: Arc<Mutex<Option<Copiers>>>,
    exit: watch::Sender<Option<Exit>>,
}

impl Process {
    pub fn new(exec_id: &str, stdio: StdioPaths) -> Self {
        Self {
            exec_id: exec_id.to_string(),
            pid: 0,
            stdio,
            phase: Phase::Created,
            exec_spec: None,
            waited: false,
            copiers: Arc::new(Mutex::new(None)),
            exit: watch::channel(None).0,
        }
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
        match (self.exit(), self.phase) {
            (Some(_), _) => Status::STOPPED,
            (None, _) if paused => Status::PAUSED,
            (None, Phase::Created) => Status::CREATED,
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
        let p = Process::new("", StdioPaths::default());
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
