//! Forwards what the guest writes into tracing: the agent's log stream (vsock port
//! protocol::AGENT_LOG_PORT) and the serial console, line by line with bounded lines.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use super::lines::LineSplitter;
use crate::guest::vsock::Dialer;

/// How long to keep trying to open the log port once the agent answered on its ttrpc port.
const LOG_DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Spawns the forwarder; it ends when the guest closes the stream.
pub fn forward_agent_logs(dialer: Dialer, sandbox_id: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + LOG_DIAL_TIMEOUT;
        let stream = loop {
            match dialer.dial(protocol::AGENT_LOG_PORT).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!(sandbox = %sandbox_id, "agent log stream not available: {e}");
                    return;
                }
                // The agent normally listens before it serves ttrpc; poll briefly otherwise.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        // Lines are re-emitted even if the guest writes invalid UTF-8.
        let mut stream = stream;
        let mut lines = LineSplitter::default();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    for text in lines.push(&chunk[..n]) {
                        tracing::info!(target: "agent", sandbox = %sandbox_id, "{text}");
                    }
                }
                Err(e) => {
                    tracing::debug!(sandbox = %sandbox_id, "agent log stream: {e}");
                    break;
                }
            }
        }
    })
}

/// The inotify instance as something tokio's AsyncFd can wait on.
struct Watch(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for Watch {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

/// Spawns a task that re-emits each line the guest writes to its serial console (the file
/// QEMU writes) through tracing, tagged with the sandbox id: with `quiet` the console holds
/// little but what matters (panics, OOM-killer reports). Woken by inotify, not by polling;
/// ends when the file goes away with the sandbox directory, or when aborted.
pub fn forward_console(path: std::path::PathBuf, sandbox_id: String) -> JoinHandle<()> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

    tokio::spawn(async move {
        let watch = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).and_then(|i| {
            i.add_watch(
                &path,
                AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_DELETE_SELF,
            )
            .map(|_| i)
        });
        #[allow(deprecated)] // the AsyncFd owns the inotify fd for its whole life
        let watch = match watch.map(Watch).map(tokio::io::unix::AsyncFd::new) {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => return tracing::debug!(sandbox = %sandbox_id, "console watch: {e}"),
            Err(e) => return tracing::debug!(sandbox = %sandbox_id, "console watch: {e}"),
        };
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => {
                return tracing::debug!(sandbox = %sandbox_id, "console {}: {e}", path.display())
            }
        };
        let mut lines = LineSplitter::default();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            // Everything written so far, then wait for the next write.
            loop {
                match file.read(&mut chunk).await {
                    Ok(0) => break,
                    Ok(n) => {
                        for text in lines.push(&chunk[..n]) {
                            tracing::info!(target: "console", sandbox = %sandbox_id, "{text}");
                        }
                    }
                    Err(_) => return,
                }
            }
            let Ok(mut ready) = watch.readable().await else {
                return;
            };
            match ready.try_io(|w| w.get_ref().0.read_events().map_err(std::io::Error::from)) {
                Ok(Ok(events)) => {
                    if events
                        .iter()
                        .any(|e| e.mask.contains(AddWatchFlags::IN_DELETE_SELF))
                    {
                        return;
                    }
                }
                Ok(Err(_)) => return,
                Err(_would_block) => {}
            }
        }
    })
}
