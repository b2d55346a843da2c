//! Minimal QMP client: greeting, qmp_capabilities, then one command at a time. Asynchronous
//! events QEMU sends in between are skipped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Default bound on one QMP exchange.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connect {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected message: {0}")]
    Protocol(String),
    #[error("{command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("{0} got no answer within {1:?}")]
    Timeout(String, Duration),
}

pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let (r, w) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "expected the QMP greeting, got {greeting}"
            )));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).await?;
        if n == 0 {
            return Err(QmpError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "QEMU closed the QMP connection",
            )));
        }
        serde_json::from_str(&line).map_err(|e| QmpError::Protocol(format!("{e}: {line:?}")))
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer.write_all(text.as_bytes()).await?;
        loop {
            let reply = self.read_message().await?;
            if reply.get("event").is_some() {
                continue;
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(QmpError::Protocol(format!("reply to {command}: {reply}")));
        }
    }

    pub async fn stop(&mut self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }

    pub async fn cont(&mut self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    /// "running", "paused", ...
    pub async fn query_status(&mut self) -> Result<String, QmpError> {
        let v = self.execute("query-status", None).await?;
        v.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| QmpError::Protocol(format!("query-status returned {v}")))
    }

    /// Asks QEMU to exit. QEMU may close the socket before answering: that counts as success.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) => Ok(()),
            Err(QmpError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// [`Qmp::connect`], retrying while QEMU has created the socket file but not listened on it
/// yet (bind and listen are two steps; the file appearing is all we can wait on).
pub async fn connect_retry(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match Qmp::connect(path).await {
            Err(QmpError::Connect { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionRefused
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            r => return r,
        }
    }
}

/// Connects to `path`, runs `command` and disconnects, all within `timeout`.
pub async fn run_once(path: &Path, command: &str, timeout: Duration) -> Result<Value, QmpError> {
    let fut = async {
        let mut qmp = Qmp::connect(path).await?;
        if command == "quit" {
            qmp.quit().await.map(|_| Value::Null)
        } else {
            qmp.execute(command, None).await
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| QmpError::Timeout(command.to_string(), timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use tokio::net::UnixListener;

    /// A fake QEMU: greeting, then answers each command from `script` in order.
    fn fake_qemu(script: Vec<(&'static str, &'static str)>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .expect("greeting");
            for (expect, reply) in script {
                let mut line = String::new();
                r.read_line(&mut line).await.expect("read");
                let v: Value = serde_json::from_str(&line).expect("json");
                assert_eq!(v["execute"], expect);
                if !reply.is_empty() {
                    w.write_all(reply.as_bytes()).await.expect("reply");
                }
            }
        });
        (dir, path)
    }

    #[tokio::test]
    async fn commands_and_events() {
        let (_d, path) = fake_qemu(vec![
            ("qmp_capabilities", "{\"return\": {}}\n"),
            (
                "stop",
                "{\"event\": \"STOP\", \"timestamp\": {}}\n{\"return\": {}}\n",
            ),
            (
                "query-status",
                "{\"return\": {\"status\": \"paused\", \"running\": false}}\n",
            ),
            (
                "cont",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}}\n",
            ),
            ("quit", ""),
        ]);
        let mut q = Qmp::connect(&path).await.expect("connect");
        q.stop().await.expect("stop");
        assert_eq!(q.query_status().await.expect("status"), "paused");
        let err = q.cont().await.expect_err("cont fails");
        assert_eq!(err.to_string(), "cont failed: GenericError: nope");
        // The fake closes the socket without answering quit: still a success.
        q.quit().await.expect("quit");
    }

    #[tokio::test]
    async fn connect_retry_waits_for_listen_after_bind() {
        use nix::sys::socket::{
            bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        // Bound (the file exists) but not listening yet, as QEMU is for a moment.
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .expect("socket");
        bind(fd.as_raw_fd(), &UnixAddr::new(&path).expect("addr")).expect("bind");
        let p = path.clone();
        let client = tokio::spawn(async move { connect_retry(&p, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        listen(&fd, Backlog::new(1).expect("backlog")).expect("listen");
        let std_listener = std::os::unix::net::UnixListener::from(fd);
        std_listener.set_nonblocking(true).expect("nonblocking");
        let listener = UnixListener::from_std(std_listener).expect("tokio listener");
        let (s, _) = listener.accept().await.expect("accept");
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"{\"QMP\": {}}\n").await.expect("greeting");
        let mut line = String::new();
        r.read_line(&mut line).await.expect("capabilities");
        w.write_all(b"{\"return\": {}}\n").await.expect("reply");
        client.await.expect("join").expect("connected after listen");
        // Nobody ever listens: the refusal comes back at the deadline.
        let dir2 = tempfile::tempdir().expect("tempdir");
        let path2 = dir2.path().join("qmp.sock");
        let fd2 = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .expect("socket");
        bind(fd2.as_raw_fd(), &UnixAddr::new(&path2).expect("addr")).expect("bind");
        let err = connect_retry(&path2, Duration::from_millis(100))
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("refused"), "{err}");
    }

    #[tokio::test]
    async fn connect_error_names_socket() {
        let err = run_once(Path::new("/nonexistent/qmp.sock"), "stop", QMP_TIMEOUT)
            .await
            .expect_err("no socket");
        assert!(err.to_string().contains("/nonexistent/qmp.sock"), "{err}");
    }
}
