//! The guest's serial console, host side. The VMM writes it to a unix socket (never to a file
//! of its own, which nothing could cap); one task reads it until it closes and puts every line
//! (bounded by `lines`) into
//! - a ring of the newest [`CONSOLE_RING_BYTES`], which error messages quote ([`ConsoleView`]);
//! - the capped console file in the VM dir ([`CONSOLE_FILE_CAP`], rotated once), for people
//!   and tools;
//! - the shim's log (target `console`, with the sandbox id), at the guest line rate only.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::capped_file::CappedFile;
use super::lines::{next_chunk, LimitedLines, Next, CHUNK};
use super::ring::LineRing;
use super::{CONSOLE_FILE_CAP, CONSOLE_RING_BYTES};

/// A running console reader; dropping it stops the reader.
#[derive(Debug)]
pub struct Console {
    view: ConsoleView,
    task: JoinHandle<()>,
}

/// What others may read of a console: its newest lines, and whether it ended.
#[derive(Debug, Clone)]
pub struct ConsoleView {
    ring: Arc<Mutex<LineRing>>,
    closed: watch::Receiver<bool>,
}

impl Console {
    /// Reads the stream `connect` yields (the VMM's end of the console) until it closes,
    /// keeping its lines in the ring and in the capped file `log` (created now) and logging
    /// them for `sandbox`.
    pub fn spawn<S, F>(connect: F, log: PathBuf, sandbox: String) -> Console
    where
        S: AsyncRead + Unpin + Send + 'static,
        F: Future<Output = std::io::Result<S>> + Send + 'static,
    {
        let ring = Arc::new(Mutex::new(LineRing::new(CONSOLE_RING_BYTES)));
        let (closed_tx, closed) = watch::channel(false);
        let task = tokio::spawn({
            let ring = ring.clone();
            async move {
                read(connect, &log, &sandbox, &ring).await;
                let _ = closed_tx.send(true);
            }
        });
        Console {
            view: ConsoleView { ring, closed },
            task,
        }
    }

    pub fn view(&self) -> ConsoleView {
        self.view.clone()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConsoleView {
    /// The last `n` lines the guest wrote.
    pub fn tail(&self, n: usize) -> String {
        self.ring.lock().unwrap_or_else(|e| e.into_inner()).tail(n)
    }

    /// Waits (at most `timeout`) until the console stream ended, so that a tail taken after a
    /// VMM exit holds its last words.
    pub async fn drained(&self, timeout: Duration) {
        let mut closed = self.closed.clone();
        // An error means the reader is gone (aborted): nothing more will come either.
        let _ = tokio::time::timeout(timeout, closed.wait_for(|c| *c)).await;
    }
}

async fn read<S, F>(connect: F, log: &Path, sandbox: &str, ring: &Mutex<LineRing>)
where
    S: AsyncRead + Unpin,
    F: Future<Output = std::io::Result<S>>,
{
    let mut file = match CappedFile::create(log, CONSOLE_FILE_CAP).await {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(sandbox = %sandbox, "console file {}: {e}", log.display());
            None
        }
    };
    let mut stream = match connect.await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(sandbox = %sandbox, "the guest console is not connected: {e}");
            return;
        }
    };
    let mut lines = LimitedLines::new(Instant::now());
    let mut buf = vec![0u8; CHUNK];
    loop {
        match next_chunk(&mut stream, &mut buf, lines.gate.deadline()).await {
            Next::Bytes(n) => {
                let out = lines.push(&buf[..n], Instant::now());
                {
                    let mut r = ring.lock().unwrap_or_else(|e| e.into_inner());
                    for l in &out {
                        r.push(&l.text);
                    }
                }
                for l in out.iter().filter(|l| l.to_log) {
                    tracing::info!(target: "console", sandbox = %sandbox, "{}", l.text);
                }
                if let Some(f) = file.as_mut() {
                    let texts: Vec<&str> = out.iter().map(|l| l.text.as_str()).collect();
                    if let Err(e) = f.write_lines(&texts).await {
                        tracing::warn!(
                            sandbox = %sandbox,
                            "console file {}: {e} (no longer written)",
                            log.display()
                        );
                        file = None;
                    }
                }
            }
            Next::Tick => {}
            Next::Closed(e) => {
                if let Some(e) = e {
                    tracing::debug!(sandbox = %sandbox, "guest console: {e}");
                }
                break;
            }
        }
        if let Some(report) = lines.gate.check(Instant::now()) {
            tracing::warn!(sandbox = %sandbox, "guest console: {report}");
        }
    }
    if let Some(report) = lines.gate.finish() {
        tracing::warn!(sandbox = %sandbox, "guest console: {report}");
    }
}

/// The VMM's connection to `listener`, which was bound at `path` before the VMM started: the
/// first whose peer is process `pid` (others are closed). The socket file is then removed, so
/// nothing else connects later.
pub async fn accept_from(
    listener: UnixListener,
    path: PathBuf,
    pid: u32,
) -> std::io::Result<UnixStream> {
    loop {
        let (stream, _) = listener.accept().await?;
        let peer = stream.peer_cred()?.pid();
        if peer.and_then(|p| u32::try_from(p).ok()) == Some(pid) {
            if let Err(e) = tokio::fs::remove_file(&path).await {
                tracing::debug!("remove {}: {e}", path.display());
            }
            return Ok(stream);
        }
        tracing::warn!(
            "console socket {}: connection from pid {peer:?}, not the VMM (pid {pid}): closed",
            path.display()
        );
    }
}

/// Connects to a console socket the VMM serves once it appears (within `timeout`).
pub async fn connect_when_ready(path: PathBuf, timeout: Duration) -> std::io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(&path).await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{} within {timeout:?}: {e}", path.display()),
                ))
            }
            // No event says "the VMM bound its socket": poll briefly.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_output::capped_file::rotated;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_flooding_console_stays_within_its_ring_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        let (mut guest, host) = tokio::io::duplex(64 * 1024);
        let console = Console::spawn(async move { Ok(host) }, log.clone(), "s1".into());
        let view = console.view();
        // 8 MiB of console: four times the file's whole budget.
        let line = format!("{}\n", "x".repeat(99));
        let chunk = line.repeat(1024);
        for _ in 0..80 {
            guest.write_all(chunk.as_bytes()).await.expect("write");
        }
        guest.write_all(b"last words\n").await.expect("write");
        drop(guest);
        view.drained(Duration::from_secs(10)).await;
        assert!(*view.closed.borrow(), "the reader saw the end");
        assert!(view.ring.lock().expect("ring").bytes() <= CONSOLE_RING_BYTES);
        assert!(view.tail(1) == "last words", "{}", view.tail(1));
        for f in [log.clone(), rotated(&log)] {
            let len = std::fs::metadata(&f).expect("console file").len();
            assert!(len <= CONSOLE_FILE_CAP, "{}: {len}", f.display());
        }
        let text = std::fs::read_to_string(&log).expect("read");
        assert!(text.ends_with("last words\n"));
    }

    #[tokio::test]
    async fn only_the_vmm_process_is_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        // This process is not "the VMM" (pid 1 is): its connection is closed.
        let accept = tokio::spawn(accept_from(listener, path.clone(), 1));
        let mut intruder = UnixStream::connect(&path).await.expect("connect");
        let mut buf = [0u8; 1];
        let n = tokio::io::AsyncReadExt::read(&mut intruder, &mut buf)
            .await
            .unwrap_or(0);
        assert_eq!(n, 0, "the intruder's connection is closed");
        assert!(!accept.is_finished());
        accept.abort();

        // Our own pid is accepted, and the socket file goes away.
        let listener = {
            std::fs::remove_file(&path).expect("rm");
            UnixListener::bind(&path).expect("bind")
        };
        let accept = tokio::spawn(accept_from(listener, path.clone(), std::process::id()));
        let _vmm = UnixStream::connect(&path).await.expect("connect");
        accept.await.expect("join").expect("accepted");
        assert!(!path.exists());
    }
}
