//! One process of a container (its init or an exec): pid, pidfd, exit status and stdio.
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::guest::reaper::{self, ExitReceiver};
use crate::runtime::pidfd;
use crate::runtime::stdio::AgentStdio;

pub struct Process {
    pub exec_id: String,
    pub pid: i32,
    /// Names this process and no later owner of its pid: signals go through it, and an exec
    /// joins the init's namespaces through it.
    pub pidfd: OwnedFd,
    pub exit: ExitReceiver,
    pub stdio: AgentStdio,
    /// Someone got the exit status through WaitProcess.
    pub waited: AtomicBool,
}

impl Process {
    /// Blocks until the process exited; returns its status (code, or 128 + signal).
    pub async fn wait(&self) -> i32 {
        let status = reaper::wait(self.exit.clone()).await.unwrap_or(255);
        self.waited.store(true, Ordering::Relaxed);
        status
    }

    /// Exited, waited for, and both outputs read to EOF: nobody can need it any more.
    pub fn finished(&self) -> bool {
        self.exited().is_some()
            && self.waited.load(Ordering::Relaxed)
            && self.stdio.stdout.at_eof()
            && self.stdio.stderr.at_eof()
    }

    pub fn exited(&self) -> Option<i32> {
        *self.exit.borrow()
    }

    /// Sends a signal to this very process (through its pidfd), unless it already exited.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> nix::Result<()> {
        if self.exited().is_some() {
            return Ok(());
        }
        match pidfd::send_signal(&self.pidfd, sig) {
            Err(nix::errno::Errno::ESRCH) => Ok(()),
            r => r,
        }
    }
}
