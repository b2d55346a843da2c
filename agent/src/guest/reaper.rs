//! The only place that calls waitpid: PID 1 reaps every child and orphan on SIGCHLD and hands
//! each exit status to whoever registered for that pid.
//!
//! A process may exit before anyone registers for it (a container process can die before the
//! spawn helper's report is read), so statuses nobody asked for are kept, a bounded number.
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Exit statuses kept for pids nobody registered yet (intermediate helpers, short-lived orphans).
const MAX_UNCLAIMED: usize = 256;

pub type ExitReceiver = watch::Receiver<Option<i32>>;

#[derive(Default)]
struct State {
    waiters: HashMap<i32, watch::Sender<Option<i32>>>,
    unclaimed: HashMap<i32, i32>,
    unclaimed_order: VecDeque<i32>,
}

#[derive(Default, Clone)]
pub struct Reaper {
    state: Arc<Mutex<State>>,
}

static GLOBAL: OnceLock<Reaper> = OnceLock::new();

/// The process-wide reaper (one per agent).
pub fn global() -> &'static Reaper {
    GLOBAL.get_or_init(Reaper::default)
}

/// Exit code as the API reports it: the code, or 128 + signal.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

impl Reaper {
    /// Starts the SIGCHLD-driven reaping task. Must run inside the tokio runtime.
    pub fn start(&self) -> std::io::Result<()> {
        let mut sigchld = signal(SignalKind::child())?;
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                this.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(())
    }

    /// Reaps every exited child without blocking.
    pub fn reap_all(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(status) => {
                    if let (Some(pid), Some(code)) = (status.pid(), exit_code(status)) {
                        self.record(pid.as_raw(), code);
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break, // ECHILD: no children left
            }
        }
    }

    fn record(&self, pid: i32, code: i32) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if let Some(tx) = st.waiters.remove(&pid) {
            let _ = tx.send(Some(code));
            return;
        }
        st.unclaimed.insert(pid, code);
        st.unclaimed_order.push_back(pid);
        while st.unclaimed_order.len() > MAX_UNCLAIMED {
            if let Some(old) = st.unclaimed_order.pop_front() {
                st.unclaimed.remove(&old);
            }
        }
    }

    /// Registers interest in `pid`'s exit. If it already exited, the receiver holds the status.
    pub fn register(&self, pid: i32) -> ExitReceiver {
        let (tx, rx) = watch::channel(None);
        if let Ok(mut st) = self.state.lock() {
            if let Some(code) = st.unclaimed.remove(&pid) {
                st.unclaimed_order.retain(|p| *p != pid);
                let _ = tx.send(Some(code));
            } else {
                st.waiters.insert(pid, tx);
            }
        }
        rx
    }
}

/// Waits until the process behind `rx` exited and returns its status.
pub async fn wait(mut rx: ExitReceiver) -> Option<i32> {
    match rx.wait_for(|s| s.is_some()).await {
        Ok(v) => *v,
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_before_and_after_register() {
        let r = Reaper::default();
        r.record(10, 3);
        assert_eq!(*r.register(10).borrow(), Some(3));
        let rx = r.register(11);
        assert_eq!(*rx.borrow(), None);
        r.record(11, 137);
        assert_eq!(*rx.borrow(), Some(137));
    }

    #[test]
    fn unclaimed_is_bounded() {
        let r = Reaper::default();
        for pid in 0..(MAX_UNCLAIMED as i32 + 10) {
            r.record(pid, 0);
        }
        let st = r.state.lock().unwrap();
        assert_eq!(st.unclaimed.len(), MAX_UNCLAIMED);
        assert!(!st.unclaimed.contains_key(&0));
    }
}
