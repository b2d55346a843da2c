//! The VM pool: per configuration, a few VMs booted ahead, each held by a waiting shim process
//! (a "pooled shim") that one pod's `start` takes whole, once. The daemon that keeps them
//! (`daemon`), what `start` and kata-ctl ask it (`client`), and the messages between them: one
//! JSON line each way on a root-only unix socket.

pub mod client;
pub mod daemon;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::hypervisor::layout::run_root;

/// The pool's directory in the run root (0700): its socket, lock and log.
pub fn pool_dir() -> PathBuf {
    run_root().join("vm-pool")
}

/// The daemon's socket (0600, root's).
pub fn socket_path() -> PathBuf {
    pool_dir().join("pool.sock")
}

/// Ids of pooled VMs start with this (their directories sit in the run root until adopted).
pub const POOLED_VM_PREFIX: &str = "pooled-";

/// The argument that makes `containerd-shim-kata-v2` the pool daemon.
pub const DAEMON_ARG: &str = "pool";
/// The argument that makes it a pooled shim: `pool-vm <config> <vm id>`.
pub const POOLED_SHIM_ARG: &str = "pool-vm";

/// The nice value a pooled shim and its VM boot at, so that filling the pool yields the CPU to
/// the pods running; an adopted VM gets the priority of the `start` that took it.
pub const POOLED_NICE: i32 = 10;

/// Longest message line either side accepts.
const MAX_LINE: usize = 64 * 1024;

/// What a client asks the daemon (the first line of a connection).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Request {
    /// From a shim's `start`: a VM booted from `config`, handed to the pod described.
    Take { config: PathBuf, adoption: Adoption },
    /// From a pooled shim whose VM answered: it waits on this connection for its pod.
    Ready { config: PathBuf, vm_id: String },
    /// Each configuration's pool.
    Status,
    /// Stop every waiting VM and exit.
    Stop,
}

/// Everything a pooled shim needs to become the shim containerd asked `start` for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Adoption {
    /// containerd's namespace.
    pub namespace: String,
    /// Where events go (`TTRPC_ADDRESS`).
    pub ttrpc_address: String,
    /// The sandbox: its id names the VM from now on; its bundle is the shim's working
    /// directory (its `log` FIFO and `address` file).
    pub sandbox_id: String,
    pub bundle: PathBuf,
    /// The ttrpc socket to serve the Task API on (`unix://...`, as containerd's start computes).
    pub socket: String,
    pub debug: bool,
    /// `start`'s pid: the shim joins its cgroup, where containerd puts the shims it spawns.
    pub start_pid: u32,
}

/// What the daemon answers, and what it sends a pooled shim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Reply {
    /// The pooled shim serves the pod's Task API at `address`.
    Serving {
        address: String,
    },
    /// No VM for that configuration is ready (the daemon starts filling its pool).
    Empty {
        reason: String,
    },
    /// To a pooled shim: become this pod's shim.
    Adopt(Adoption),
    Status(Vec<PoolStatus>),
    Stopping,
    Refused {
        reason: String,
    },
}

/// One configuration's pool.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolStatus {
    pub config: PathBuf,
    /// `[factory] vm_cache_number` (0 after the configuration turned the pool off).
    pub wanted: u32,
    pub ready: usize,
    pub booting: usize,
    /// VMs handed to pods since the daemon started.
    pub served: u64,
    /// Pooled VMs that failed before they were ready.
    pub failed: u64,
    /// Pids of the pooled shims waiting, and of their VMs' processes.
    pub pids: Vec<u32>,
    /// Why the pool holds fewer than wanted (memory, failures), if it does.
    pub holding_back: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("pool socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("pool message: {0}")]
    Message(String),
    #[error("the pool daemon closed the connection")]
    Closed,
}

/// Writes one message line.
pub async fn send<T: Serialize>(
    w: &mut (impl AsyncWrite + Unpin),
    msg: &T,
) -> Result<(), PoolError> {
    let mut line = serde_json::to_vec(msg).map_err(|e| PoolError::Message(e.to_string()))?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one message line (at most [`MAX_LINE`] bytes).
pub async fn receive<T: for<'de> Deserialize<'de>>(
    r: &mut (impl AsyncBufRead + Unpin),
) -> Result<T, PoolError> {
    let mut line = Vec::new();
    let mut limited = r.take(MAX_LINE as u64);
    let n = tokio::io::AsyncBufReadExt::read_until(&mut limited, b'\n', &mut line).await?;
    if n == 0 {
        return Err(PoolError::Closed);
    }
    if line.last() != Some(&b'\n') {
        return Err(PoolError::Message(format!(
            "a line longer than {MAX_LINE} bytes, or cut short"
        )));
    }
    serde_json::from_slice(&line).map_err(|e| PoolError::Message(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip_and_long_lines_are_refused() {
        let msg = Request::Ready {
            config: "/etc/k.toml".into(),
            vm_id: "pooled-1".into(),
        };
        let mut buf = Vec::new();
        send(&mut buf, &msg).await.expect("send");
        let mut r = tokio::io::BufReader::new(&buf[..]);
        assert_eq!(receive::<Request>(&mut r).await.expect("receive"), msg);
        assert!(matches!(
            receive::<Request>(&mut r).await,
            Err(PoolError::Closed)
        ));
        let long = vec![b'x'; MAX_LINE + 10];
        let mut r = tokio::io::BufReader::new(&long[..]);
        assert!(matches!(
            receive::<Request>(&mut r).await,
            Err(PoolError::Message(_))
        ));
    }
}
