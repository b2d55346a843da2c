//! Copies a process's stdio between containerd's FIFOs and the guest: on a vsock connection
//! per stream that the process holds as its fd (`protocol::stdio_stream`, opened by
//! [`connect`] before the process is created), else through the agent's stream RPCs.
//! Output: the connection until EOF, or ReadStdout/ReadStderr until empty data; each chunk
//! written (awaited) to the FIFO before the next read: no unbounded buffering. The output FIFOs are held open for
//! reading too, as runc's shim does, so a reader that comes and goes (`ctr task attach`,
//! containerd restarting) finds the output waiting instead of lost. Input: the stdin FIFO to
//! the connection, closed at EOF; or to WriteStdin, then CloseStdin at EOF.

use std::fs::OpenOptions as StdOpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::agent as pb;
use tokio::io::Interest;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{TaskError, TaskResult};
use crate::guest::vsock::VsockStream;
use crate::guest::{GuestAgent, StdioConnection};
use protocol::stdio_stream::{StdioStream, StreamHeader};

/// Bytes asked for per ReadStdout/ReadStderr and sent per WriteStdin.
const CHUNK: usize = protocol::STDIO_CHUNK;

/// containerd's stdio for one process; empty strings mean "not connected".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// How far the stdin copier should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum StdinStop {
    /// Keep copying until EOF.
    No,
    /// CloseIO: give up waiting for a writer to appear; once open, still read to EOF.
    Soft,
    /// The process is gone: stop now.
    Hard,
}

/// The running copiers of one process.
pub struct Copiers {
    outputs: Vec<JoinHandle<()>>,
    stdin: Option<(watch::Sender<StdinStop>, JoinHandle<()>)>,
}

impl Copiers {
    /// Whether a stdin copier runs (it sends CloseStdin itself at EOF).
    pub fn has_stdin(&self) -> bool {
        self.stdin.is_some()
    }

    /// CloseIO: the stdin copier finishes at EOF (or now, if its FIFO never got a writer).
    pub fn close_stdin(&self) {
        if let Some((tx, _)) = &self.stdin {
            tx.send_if_modified(|s| raise(s, StdinStop::Soft));
        }
    }

    /// The process is gone: stops the stdin copier, then waits until stdout/stderr reached
    /// EOF and everything was written to the FIFOs.
    pub async fn finish(&mut self) {
        if let Some((tx, h)) = self.stdin.as_mut() {
            tx.send_if_modified(|s| raise(s, StdinStop::Hard));
            let _ = h.await;
            self.stdin = None;
        }
        // Each handle leaves only once finished: one cut short stays for `abort`.
        while let Some(h) = self.outputs.first_mut() {
            let _ = h.await;
            self.outputs.remove(0);
        }
    }

    /// Stops the copiers still running (their output has nowhere to go: nobody reads the
    /// FIFO), so none stays blocked for the rest of the shim's life.
    pub fn abort(&mut self) {
        for h in self.outputs.drain(..) {
            h.abort();
        }
        if let Some((_, h)) = self.stdin.take() {
            h.abort();
        }
    }
}

fn raise(s: &mut StdinStop, to: StdinStop) -> bool {
    if *s < to {
        *s = to;
        true
    } else {
        false
    }
}

type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// Where a process's output goes.
enum Output {
    None,
    File(tokio::fs::File),
    Fifo(pipe::Sender),
}

/// Opens an output destination (a FIFO path or a `file://` URI), so that Start fails on a
/// bad one.
async fn open_output(target: &str) -> TaskResult<Output> {
    if let Some(path) = target.strip_prefix("file://") {
        let f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(|e| TaskError::invalid(format!("opening log file {path}: {e}")))?;
        return Ok(Output::File(f));
    }
    if target.contains("://") {
        return Err(TaskError::invalid(format!(
            "stdio {target}: only FIFO paths and file:// URIs are supported"
        )));
    }
    // Read-write (Linux): the open never waits for a reader, and no write fails because a
    // reader left; while none reads, output waits in the pipe and, once it is full, in the
    // guest (back-pressure).
    let tx = pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(target)
        .map_err(|e| TaskError::invalid(format!("opening stdio FIFO {target}: {e}")))?;
    widen(&tx);
    Ok(Output::Fifo(tx))
}

/// Gives a FIFO room for one [`CHUNK`], so neither side waits on the other chunk by chunk.
/// Best effort: a smaller FIFO still works, only slower.
fn widen(fifo: &impl AsRawFd) {
    // SAFETY: F_SETPIPE_SZ on a descriptor we hold open, with an int argument.
    if unsafe { libc::fcntl(fifo.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) } < 0 {
        tracing::debug!("F_SETPIPE_SZ {CHUNK}: {}", std::io::Error::last_os_error());
    }
}

/// One splice(2) from the connection into the FIFO.
enum Spliced {
    Moved,
    Eof,
    /// The FIFO is full (the connection has bytes waiting).
    FifoFull,
}

/// Moves `sock`'s bytes into `fifo` with splice(2) until EOF, each side waited on by tokio:
/// no copy through the shim, at most one pipe's worth in flight (back-pressure as before).
async fn splice_all(sock: &UnixStream, fifo: &pipe::Sender) -> std::io::Result<()> {
    use std::io::ErrorKind::WouldBlock;
    loop {
        fifo.writable().await?;
        sock.readable().await?;
        // A WouldBlock out of a try_io clears that side's readiness (unless an event came in
        // meanwhile), so only the side that is really not ready may report it.
        let step =
            fifo.try_io(
                || match sock.try_io(Interest::READABLE, || splice_once(sock, fifo)) {
                    Ok(Spliced::FifoFull) => Err(WouldBlock.into()),
                    Err(e) if e.kind() == WouldBlock => Ok(None),
                    other => other.map(Some),
                },
            );
        match step {
            Ok(Some(Spliced::Eof)) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

fn splice_once(sock: &UnixStream, fifo: &pipe::Sender) -> std::io::Result<Spliced> {
    // SAFETY: splice(2) between two descriptors we hold open, no offsets.
    let n = unsafe {
        libc::splice(
            sock.as_raw_fd(),
            std::ptr::null_mut(),
            fifo.as_raw_fd(),
            std::ptr::null_mut(),
            CHUNK,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    match n {
        0 => Ok(Spliced::Eof),
        n if n > 0 => Ok(Spliced::Moved),
        _ => {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EAGAIN) {
                return Err(e);
            }
            // Which side was not ready: bytes waiting on the socket mean the FIFO is full.
            let mut p = libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd that outlives the call, no waiting.
            let waiting = unsafe { libc::poll(&mut p, 1, 0) } == 1 && p.revents & libc::POLLIN != 0;
            if waiting {
                Ok(Spliced::FifoFull)
            } else {
                Err(std::io::ErrorKind::WouldBlock.into())
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

async fn copy_output(
    agent: Arc<dyn GuestAgent>,
    cid: String,
    exec_id: String,
    stream: Stream,
    target: Output,
    conn: Option<StdioConnection>,
) {
    let (mut out, mut conn): (Option<Writer>, _) = match (target, conn) {
        // The fast path: the kernel moves the connection's bytes into the FIFO.
        (Output::Fifo(fifo), Some(VsockStream::Unix(sock))) => match splice_all(&sock, &fifo).await
        {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!("stdio of {cid}/{exec_id}: splice stopped ({e}); copying");
                (Some(Box::new(fifo)), Some(VsockStream::Unix(sock)))
            }
        },
        (Output::Fifo(fifo), c) => (Some(Box::new(fifo)), c),
        (Output::File(f), c) => (Some(Box::new(f)), c),
        (Output::None, c) => (None, c),
    };
    let mut buf = if conn.is_some() {
        vec![0u8; CHUNK]
    } else {
        Vec::new()
    };
    loop {
        if let Some(c) = conn.as_mut() {
            // The process's own connection: its bytes as they come, EOF once every holder of
            // the fd in the guest closed it.
            let n = match c.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!("stdio of {cid}/{exec_id}: connection read stopped: {e}");
                    break;
                }
            };
            if let Some(w) = out.as_mut() {
                if let Err(e) = w.write_all(&buf[..n]).await {
                    tracing::debug!("stdio of {cid}/{exec_id}: FIFO write failed: {e}");
                    out = None;
                }
            }
            continue;
        }
        let req = pb::ReadStreamRequest {
            container_id: cid.clone(),
            exec_id: exec_id.clone(),
            len: CHUNK as u32,
            ..Default::default()
        };
        let res = match stream {
            Stream::Stdout => agent.read_stdout(req).await,
            Stream::Stderr => agent.read_stderr(req).await,
        };
        let data = match res {
            Ok(r) if r.data.is_empty() => break,
            Ok(r) => r.data,
            Err(e) => {
                tracing::debug!("stdio of {cid}/{exec_id}: read stopped: {e}");
                break;
            }
        };
        if let Some(w) = out.as_mut() {
            if let Err(e) = w.write_all(&data).await {
                // Nobody reads any more; keep draining so the guest process never blocks.
                tracing::debug!("stdio of {cid}/{exec_id}: FIFO write failed: {e}");
                out = None;
            }
        }
    }
    if let Some(mut w) = out {
        let _ = w.flush().await;
    }
}

/// Opens a stdin FIFO for reading, waiting for containerd's writer, unless told to stop.
async fn open_stdin(
    path: PathBuf,
    stop: &mut watch::Receiver<StdinStop>,
) -> Option<pipe::Receiver> {
    let p = path.clone();
    // A blocking open returns once a writer exists, so the first read cannot see a false EOF.
    let mut open = tokio::task::spawn_blocking(move || StdOpenOptions::new().read(true).open(&p));
    // A dropped sender (copiers gone) counts as a stop: no thread may stay blocked in open.
    let stopped = async {
        let _ = stop.wait_for(|s| *s != StdinStop::No).await;
    };
    let file = tokio::select! {
        r = &mut open => r.ok()?.ok()?,
        () = stopped => {
            // Unblock the pending open by being a writer ourselves. A blocking open, because
            // our reader may not have reached open(2) yet (a non-blocking one would fail with
            // ENXIO then); both opens meet whichever comes first.
            let unblock = tokio::task::spawn_blocking(move || {
                StdOpenOptions::new().write(true).open(&path)
            });
            let reader = open.await;
            let _ = unblock.await;
            drop(reader);
            return None;
        }
    };
    match pipe::Receiver::from_file(file) {
        Ok(r) => {
            widen(&r);
            Some(r)
        }
        Err(e) => {
            tracing::warn!("stdin {}: {e}", path.display());
            None
        }
    }
}

async fn copy_stdin(
    agent: Arc<dyn GuestAgent>,
    cid: String,
    exec_id: String,
    path: PathBuf,
    mut stop: watch::Receiver<StdinStop>,
    mut conn: Option<StdioConnection>,
) {
    let hard_stop = |mut stop: watch::Receiver<StdinStop>| async move {
        let _ = stop.wait_for(|s| *s == StdinStop::Hard).await;
    };
    if let Some(mut rx) = open_stdin(path, &mut stop).await {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = tokio::select! {
                r = rx.read(&mut buf) => match r {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!("stdin of {cid}/{exec_id}: {e}");
                        0
                    }
                },
                () = hard_stop(stop.clone()) => 0,
            };
            if n == 0 {
                break;
            }
            if let Some(c) = conn.as_mut() {
                // A process that no longer reads must not hold the copier past its exit.
                let written = tokio::select! {
                    r = c.write_all(&buf[..n]) => r.map_err(|e| e.to_string()),
                    () = hard_stop(stop.clone()) => Err("the process is gone".into()),
                };
                if let Err(e) = written {
                    tracing::debug!("stdin of {cid}/{exec_id}: {e}");
                    return;
                }
                continue;
            }
            let mut sent = 0;
            while sent < n {
                let req = pb::WriteStreamRequest {
                    container_id: cid.clone(),
                    exec_id: exec_id.clone(),
                    data: buf[sent..n].to_vec(),
                    ..Default::default()
                };
                match agent.write_stdin(req).await {
                    Ok(r) if r.len > 0 => sent += r.len as usize,
                    Ok(_) => {
                        tracing::debug!("stdin of {cid}/{exec_id}: agent accepted 0 bytes");
                        sent = n;
                    }
                    Err(e) => {
                        tracing::debug!("stdin of {cid}/{exec_id}: {e}");
                        return;
                    }
                }
            }
        }
    }
    if *stop.borrow() == StdinStop::Hard || stop.has_changed().is_err() {
        return;
    }
    if let Some(c) = conn.take() {
        // EOF for the process: the connection closes (a half close does not reach the guest
        // through every vsock transport).
        let mut c = c;
        let _ = c.flush().await;
        drop(c);
        return;
    }
    let req = pb::CloseStdinRequest {
        container_id: cid.clone(),
        exec_id: exec_id.clone(),
        ..Default::default()
    };
    if let Err(e) = agent.close_stdin(req).await {
        tracing::debug!("closing stdin of {cid}/{exec_id}: {e}");
    }
}

/// A process's stdio connections (see `protocol::stdio_stream`); a stream without one goes
/// through the stream RPCs.
#[derive(Default)]
pub struct Connections {
    stdin: Option<StdioConnection>,
    stdout: Option<StdioConnection>,
    stderr: Option<StdioConnection>,
}

/// Opens the connections for process `exec_id` ("" = the init) of container `cid`, before it
/// is created: one per FIFO containerd gave, none for a terminal (its stdio is a pty the
/// agent reads). A connection that cannot be opened leaves that stream to the RPCs.
pub async fn connect(
    agent: &Arc<dyn GuestAgent>,
    cid: &str,
    exec_id: &str,
    paths: &StdioPaths,
) -> Connections {
    if paths.terminal {
        return Connections::default();
    }
    let open = |stream: StdioStream, path: &str| {
        let header = StreamHeader {
            stream,
            container_id: cid.to_string(),
            exec_id: exec_id.to_string(),
        };
        let wanted = !path.is_empty();
        async move {
            if !wanted {
                return None;
            }
            match agent.open_stdio(&header).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(
                        "{:?} of {cid}/{exec_id}: no stdio connection ({e}); using the stream calls",
                        header.stream
                    );
                    None
                }
            }
        }
    };
    let (stdin, stdout, stderr) = tokio::join!(
        open(StdioStream::Stdin, &paths.stdin),
        open(StdioStream::Stdout, &paths.stdout),
        open(StdioStream::Stderr, &paths.stderr),
    );
    Connections {
        stdin,
        stdout,
        stderr,
    }
}

/// Opens the output FIFOs (errors surface in Create/Start) and starts the copiers.
/// `exec_id` is "" for a container's init process.
pub async fn start(
    agent: Arc<dyn GuestAgent>,
    cid: &str,
    exec_id: &str,
    paths: &StdioPaths,
    conns: Connections,
) -> TaskResult<Copiers> {
    let Connections {
        stdin: stdin_conn,
        stdout: stdout_conn,
        stderr: stderr_conn,
    } = conns;
    let stdout = match paths.stdout.as_str() {
        "" => Output::None,
        p => open_output(p).await?,
    };
    // With a terminal, stdout carries the pty; stderr is not used.
    let stderr = match paths.stderr.as_str() {
        "" => Output::None,
        _ if paths.terminal => Output::None,
        p => open_output(p).await?,
    };
    let mut outputs = vec![tokio::spawn(copy_output(
        agent.clone(),
        cid.to_string(),
        exec_id.to_string(),
        Stream::Stdout,
        stdout,
        stdout_conn,
    ))];
    if !paths.terminal {
        outputs.push(tokio::spawn(copy_output(
            agent.clone(),
            cid.to_string(),
            exec_id.to_string(),
            Stream::Stderr,
            stderr,
            stderr_conn,
        )));
    }
    let stdin = (!paths.stdin.is_empty()).then(|| {
        let (tx, rx) = watch::channel(StdinStop::No);
        let h = tokio::spawn(copy_stdin(
            agent,
            cid.to_string(),
            exec_id.to_string(),
            Path::new(&paths.stdin).to_path_buf(),
            rx,
            stdin_conn,
        ));
        (tx, h)
    });
    Ok(Copiers { outputs, stdin })
}
