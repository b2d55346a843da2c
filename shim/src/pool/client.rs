//! What asks the pool daemon: a shim's `start` (a pooled VM for its pod; with no daemon
//! running, one started for next time) and kata-ctl (status, stop).

use std::path::Path;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::UnixStream;

use super::{
    receive, send, socket_path, Adoption, PoolError, PoolStatus, Reply, Request, DAEMON_ARG,
};

/// How long reaching the daemon may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a take may take: the daemon gives its pooled shim 10 s to become the pod's shim.
const TAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stop may take: every pooled VM torn down.
const STOP_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a status may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

async fn connect() -> Result<UnixStream, PoolError> {
    tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(socket_path()))
        .await
        .map_err(|_| {
            PoolError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connecting to the pool daemon",
            ))
        })?
        .map_err(PoolError::Io)
}

/// Whether an error means no daemon listens.
fn no_daemon(e: &PoolError) -> bool {
    matches!(e, PoolError::Io(io) if matches!(io.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused))
}

/// One request, one reply.
async fn ask(request: &Request, timeout: Duration) -> Result<Reply, PoolError> {
    let conn = connect().await?;
    let (r, mut w) = conn.into_split();
    send(&mut w, request).await?;
    let mut r = BufReader::new(r);
    tokio::time::timeout(timeout, receive::<Reply>(&mut r))
        .await
        .map_err(|_| PoolError::Message(format!("no answer within {timeout:?}")))?
}

/// A pooled VM of `config` made the shim of the pod `adoption` describes: Some(its address).
/// None when none is ready (the daemon refills), or there is no daemon (one is started, for
/// the next pod).
pub async fn take(config: &Path, adoption: Adoption) -> Result<Option<String>, PoolError> {
    let request = Request::Take {
        config: config.to_path_buf(),
        adoption,
    };
    match ask(&request, TAKE_TIMEOUT).await {
        Ok(Reply::Serving { address }) => Ok(Some(address)),
        Ok(Reply::Empty { reason }) => {
            tracing::info!("no pooled VM: {reason}");
            Ok(None)
        }
        Ok(other) => Err(PoolError::Message(format!("unexpected answer {other:?}"))),
        Err(e) if no_daemon(&e) => {
            spawn_daemon(config)?;
            tracing::info!("started the pool daemon; this pod boots its own VM");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Each configuration's pool; empty when no daemon runs.
pub async fn status() -> Result<Vec<PoolStatus>, PoolError> {
    match ask(&Request::Status, STATUS_TIMEOUT).await {
        Ok(Reply::Status(s)) => Ok(s),
        Ok(other) => Err(PoolError::Message(format!("unexpected answer {other:?}"))),
        Err(e) if no_daemon(&e) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Stops the daemon and waits until its pooled VMs are gone (nothing to do without one).
pub async fn stop() -> Result<(), PoolError> {
    match ask(&Request::Stop, STOP_TIMEOUT).await {
        Err(PoolError::Closed) => Ok(()),
        Err(e) if no_daemon(&e) => Ok(()),
        Err(e) => Err(e),
        Ok(other) => Err(PoolError::Message(format!("unexpected answer {other:?}"))),
    }
}

/// Starts `containerd-shim-kata-v2 pool <config>` detached: its own process group, no stdio
/// of ours (containerd reads `start`'s stdout to its end). A second daemon for the run root
/// exits.
fn spawn_daemon(config: &Path) -> Result<(), PoolError> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    std::process::Command::new(exe)
        .arg(DAEMON_ARG)
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()?;
    Ok(())
}
