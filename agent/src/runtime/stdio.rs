//! A process's stdio: the container process's ends and the agent's (pipes, or a pty master).
//! The agent's reads and writes are asynchronous (non-blocking fds on tokio's reactor).
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::pty::Winsize;
use nix::unistd;
use tokio::io::unix::AsyncFd;
use tokio::sync::Mutex;

use protocol::STDIO_CHUNK;

use crate::runtime::stdio_connections::ProcessConnections;

fn nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

fn blocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(())
}

fn async_fd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    nonblocking(&fd)?;
    #[allow(deprecated)] // the fd is owned by the AsyncFd for its whole life
    AsyncFd::new(fd)
}

/// A readable stream; empty data means EOF.
pub struct OutStream {
    fd: Mutex<Option<AsyncFd<OwnedFd>>>,
    eof: AtomicBool,
}

impl OutStream {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            fd: Mutex::new(Some(async_fd(fd)?)),
            eof: AtomicBool::new(false),
        })
    }

    /// A stream that is at EOF from the start (stderr of a terminal process).
    fn closed() -> Self {
        Self {
            fd: Mutex::new(None),
            eof: AtomicBool::new(true),
        }
    }

    /// Whether a reader already got EOF.
    pub fn at_eof(&self) -> bool {
        self.eof.load(Ordering::Relaxed)
    }

    pub async fn read(&self, len: usize) -> io::Result<Vec<u8>> {
        let mut guard = self.fd.lock().await;
        let Some(fd) = guard.as_ref() else {
            return Ok(Vec::new());
        };
        let mut buf = vec![0u8; len.clamp(1, STDIO_CHUNK)];
        loop {
            let mut ready = fd.readable().await?;
            match ready.try_io(|inner| {
                unistd::read(inner.get_ref().as_raw_fd(), &mut buf).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    if n == 0 {
                        *guard = None; // EOF: release the fd
                        self.eof.store(true, Ordering::Relaxed);
                    }
                    buf.truncate(n);
                    return Ok(buf);
                }
                // A pty master reports EIO once every slave fd is closed: that is its EOF.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                    *guard = None;
                    self.eof.store(true, Ordering::Relaxed);
                    return Ok(Vec::new());
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Gives a pipe room for one [`STDIO_CHUNK`], so the writer is not held up while the agent's
/// read travels to the host. Best effort: a smaller pipe still works, only slower.
fn widen(fd: &OwnedFd) {
    if let Err(e) = fcntl(fd.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(STDIO_CHUNK as i32)) {
        tracing::debug!("F_SETPIPE_SZ {STDIO_CHUNK}: {e}");
    }
}

/// The writable end of stdin.
pub struct InStream {
    fd: Mutex<Option<AsyncFd<OwnedFd>>>,
}

impl InStream {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            fd: Mutex::new(Some(async_fd(fd)?)),
        })
    }

    /// Stdin the agent does not write (the process reads a host connection).
    fn closed() -> Self {
        Self {
            fd: Mutex::new(None),
        }
    }

    pub async fn write(&self, data: &[u8]) -> io::Result<usize> {
        let guard = self.fd.lock().await;
        let Some(fd) = guard.as_ref() else {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stdin is closed"));
        };
        let mut written = 0;
        while written < data.len() {
            let mut ready = fd.writable().await?;
            match ready.try_io(|inner| {
                unistd::write(inner.get_ref(), &data[written..]).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => written += n,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(written)
    }

    pub async fn close(&self) {
        self.fd.lock().await.take();
    }
}

/// The container process's ends of its stdio, given to the spawn helper as its fds 0/1/2.
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// The agent side of one process's stdio.
pub struct AgentStdio {
    pub stdin: InStream,
    pub stdout: OutStream,
    pub stderr: OutStream,
    /// The pty master (a dup), for window resizes.
    pub pty: Option<OwnedFd>,
}

impl AgentStdio {
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        let Some(pty) = &self.pty else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the process has no terminal",
            ));
        };
        set_winsize(pty, rows, cols)
    }
}

pub fn set_winsize(fd: &impl AsFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize struct passed by pointer.
    if unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ as _, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// Pipes for a process without a terminal: the child's ends and the agent's.
pub fn pipes() -> io::Result<(ChildStdio, AgentStdio)> {
    pipes_or_connections(ProcessConnections::default())
}

/// A process's stdio without a terminal: each stream the host connected is that connection
/// (the process holds it, the agent's side is closed: nothing to copy); the others are pipes
/// to the agent, widened to one [`STDIO_CHUNK`].
pub fn pipes_or_connections(conns: ProcessConnections) -> io::Result<(ChildStdio, AgentStdio)> {
    // Accepted through tokio, the sockets are non-blocking: a process expects blocking stdio.
    let connected = |c: OwnedFd| blocking(&c).map(|()| c);
    let (stdin, agent_stdin) = match conns.stdin {
        Some(c) => (connected(c)?, InStream::closed()),
        None => {
            let (r, w) = pipe()?;
            widen(&w);
            (r, InStream::new(w)?)
        }
    };
    let output = |conn: Option<OwnedFd>| -> io::Result<(OwnedFd, OutStream)> {
        match conn {
            Some(c) => Ok((connected(c)?, OutStream::closed())),
            None => {
                let (r, w) = pipe()?;
                widen(&r);
                Ok((w, OutStream::new(r)?))
            }
        }
    };
    let (stdout, agent_stdout) = output(conns.stdout)?;
    let (stderr, agent_stderr) = output(conns.stderr)?;
    let child = ChildStdio {
        stdin,
        stdout,
        stderr,
    };
    let agent = AgentStdio {
        stdin: agent_stdin,
        stdout: agent_stdout,
        stderr: agent_stderr,
        pty: None,
    };
    Ok((child, agent))
}

/// Placeholder stdio for a terminal process until it opens its own pty in the container.
pub fn null_child() -> io::Result<ChildStdio> {
    let null = || -> io::Result<OwnedFd> {
        Ok(std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?
            .into())
    };
    Ok(ChildStdio {
        stdin: null()?,
        stdout: null()?,
        stderr: null()?,
    })
}

/// The agent side of a terminal process: the pty master for stdin, stdout and resizes.
pub fn from_pty(master: OwnedFd, size: Option<(u16, u16)>) -> io::Result<AgentStdio> {
    if let Some((rows, cols)) = size {
        set_winsize(&master, rows, cols)?;
    }
    Ok(AgentStdio {
        stdin: InStream::new(master.try_clone()?)?,
        pty: Some(master.try_clone()?),
        stdout: OutStream::new(master)?,
        stderr: OutStream::closed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pipes_round_trip_and_eof() {
        let (child, agent) = pipes().unwrap();
        agent.stdin.write(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        assert_eq!(unistd::read(child.stdin.as_raw_fd(), &mut buf).unwrap(), 5);
        assert_eq!(&buf, b"hello");
        unistd::write(&child.stdout, b"out").unwrap();
        drop(child);
        assert_eq!(agent.stdout.read(100).await.unwrap(), b"out");
        assert!(agent.stdout.read(100).await.unwrap().is_empty());
        assert!(agent.stderr.read(100).await.unwrap().is_empty());
        agent.stdin.close().await;
        assert!(agent.stdin.write(b"x").await.is_err());
    }

    #[tokio::test]
    async fn a_widened_pipe_holds_a_chunk_for_one_read() {
        let (child, agent) = pipes().unwrap();
        // A write the pipe cannot hold fails instead of blocking the test.
        nonblocking(&child.stdout).unwrap();
        for _ in 0..4 {
            unistd::write(&child.stdout, &[7u8; 64 * 1024]).unwrap();
        }
        // Beyond a default pipe's 64 KiB: the pipe was widened.
        assert_eq!(
            agent.stdout.read(STDIO_CHUNK).await.unwrap().len(),
            256 * 1024
        );
        unistd::write(&child.stdout, b"tail").unwrap();
        drop(child);
        assert_eq!(agent.stdout.read(STDIO_CHUNK).await.unwrap(), b"tail");
        assert!(agent.stdout.read(STDIO_CHUNK).await.unwrap().is_empty());
    }
}
