//! Host side of the guest's vsock: the kernel's AF_VSOCK (vhost-vsock) or a "hybrid vsock" unix
//! socket (vhost-device-vsock, cloud-hypervisor, Firecracker): connect, send `CONNECT <port>\n`,
//! read `OK <host port>\n`, then the stream carries raw bytes.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;

/// Longest hybrid handshake reply we accept ("OK 4294967295\n" is 14 bytes).
const MAX_REPLY: usize = 64;
/// How long the hybrid handshake may take once the socket is connected.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// How to reach a port of the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialer {
    /// Kernel vhost-vsock: AF_VSOCK to the guest's context id.
    Vhost { cid: u32 },
    /// Hybrid vsock through a unix socket.
    Hybrid { uds_path: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connect to vsock cid {cid} port {port}: {source}")]
    Vsock {
        cid: u32,
        port: u32,
        source: io::Error,
    },
    #[error("connect to hybrid vsock {}: {source}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("hybrid vsock {} port {port}: {source}", path.display())]
    Handshake {
        path: PathBuf,
        port: u32,
        source: io::Error,
    },
    #[error("hybrid vsock {} port {port}: no reply to CONNECT within {timeout:?}", path.display())]
    HandshakeTimeout {
        path: PathBuf,
        port: u32,
        timeout: Duration,
    },
    #[error("hybrid vsock {} port {port}: refused (reply {reply:?}; is the guest listening?)", path.display())]
    Refused {
        path: PathBuf,
        port: u32,
        reply: String,
    },
}

impl Dialer {
    /// Opens a stream to `port` of the guest.
    pub async fn dial(&self, port: u32) -> Result<VsockStream, DialError> {
        self.dial_with_timeout(port, HANDSHAKE_TIMEOUT).await
    }

    pub async fn dial_with_timeout(
        &self,
        port: u32,
        handshake_timeout: Duration,
    ) -> Result<VsockStream, DialError> {
        match self {
            Dialer::Vhost { cid } => {
                let addr = tokio_vsock::VsockAddr::new(*cid, port);
                tokio_vsock::VsockStream::connect(addr)
                    .await
                    .map(VsockStream::Vsock)
                    .map_err(|source| DialError::Vsock {
                        cid: *cid,
                        port,
                        source,
                    })
            }
            Dialer::Hybrid { uds_path } => {
                let mut s =
                    UnixStream::connect(uds_path)
                        .await
                        .map_err(|source| DialError::Connect {
                            path: uds_path.clone(),
                            source,
                        })?;
                match tokio::time::timeout(handshake_timeout, hybrid_handshake(&mut s, port)).await
                {
                    Err(_) => Err(DialError::HandshakeTimeout {
                        path: uds_path.clone(),
                        port,
                        timeout: handshake_timeout,
                    }),
                    Ok(Err(HandshakeError::Io(source))) => Err(DialError::Handshake {
                        path: uds_path.clone(),
                        port,
                        source,
                    }),
                    Ok(Err(HandshakeError::Refused(reply))) => Err(DialError::Refused {
                        path: uds_path.clone(),
                        port,
                        reply,
                    }),
                    Ok(Ok(())) => Ok(VsockStream::Unix(s)),
                }
            }
        }
    }
}

enum HandshakeError {
    Io(io::Error),
    Refused(String),
}

/// Sends `CONNECT <port>\n` and reads the reply line byte by byte, so no byte of the stream
/// that follows is consumed.
async fn hybrid_handshake(s: &mut UnixStream, port: u32) -> Result<(), HandshakeError> {
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(HandshakeError::Io)?;
    let mut line = Vec::with_capacity(16);
    loop {
        let mut b = [0u8; 1];
        let n = s.read(&mut b).await.map_err(HandshakeError::Io)?;
        if n == 0 {
            return Err(HandshakeError::Refused(format!(
                "connection closed after {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > MAX_REPLY {
            return Err(HandshakeError::Refused(format!(
                "over-long reply {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
    }
    let reply = String::from_utf8_lossy(&line).into_owned();
    let mut words = reply.split_whitespace();
    match (
        words.next(),
        words.next().map(str::parse::<u32>),
        words.next(),
    ) {
        (Some("OK"), Some(Ok(_)), None) => Ok(()),
        _ => Err(HandshakeError::Refused(reply)),
    }
}

/// A connected stream to a guest port.
#[derive(Debug)]
pub enum VsockStream {
    Unix(UnixStream),
    Vsock(tokio_vsock::VsockStream),
}

impl VsockStream {
    /// The stream as a ttrpc transport.
    pub fn into_ttrpc_socket(self) -> ttrpc::r#async::transport::Socket {
        match self {
            VsockStream::Unix(s) => ttrpc::r#async::transport::Socket::from(s),
            VsockStream::Vsock(s) => ttrpc::r#async::transport::Socket::from(s),
        }
    }
}

impl AsyncRead for VsockStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            VsockStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            VsockStream::Vsock(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for VsockStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            VsockStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            VsockStream::Vsock(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            VsockStream::Unix(s) => Pin::new(s).poll_flush(cx),
            VsockStream::Vsock(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            VsockStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            VsockStream::Vsock(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixListener;

    /// A fake hybrid-vsock server answering the handshake with `reply` (None = never answer).
    fn serve(reply: Option<&'static str>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).await.expect("read CONNECT");
            assert_eq!(line, "CONNECT 1024\n");
            let mut s = r.into_inner();
            match reply {
                Some(reply) => {
                    // The reply and the first payload bytes in one write: the dialer must not
                    // swallow the payload.
                    s.write_all(format!("{reply}payload").as_bytes())
                        .await
                        .expect("write");
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest).await;
                }
                None => {
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest).await;
                }
            }
        });
        (dir, path)
    }

    #[tokio::test]
    async fn hybrid_ok_keeps_following_bytes() {
        let (_dir, path) = serve(Some("OK 1073741824\n"));
        let d = Dialer::Hybrid { uds_path: path };
        let mut s = d.dial(1024).await.expect("dial");
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.expect("payload");
        assert_eq!(&buf, b"payload");
    }

    #[tokio::test]
    async fn hybrid_error_reply() {
        let (_dir, path) = serve(Some("ERR no listener\n"));
        let d = Dialer::Hybrid { uds_path: path };
        let err = d.dial(1024).await.expect_err("must fail");
        assert!(matches!(err, DialError::Refused { .. }), "{err}");
        assert!(err.to_string().contains("ERR no listener"), "{err}");
    }

    #[tokio::test]
    async fn hybrid_timeout() {
        let (_dir, path) = serve(None);
        let d = Dialer::Hybrid { uds_path: path };
        let err = d
            .dial_with_timeout(1024, Duration::from_millis(100))
            .await
            .expect_err("must time out");
        assert!(matches!(err, DialError::HandshakeTimeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn hybrid_no_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = Dialer::Hybrid {
            uds_path: dir.path().join("missing.sock"),
        };
        let err = d.dial(1024).await.expect_err("must fail");
        assert!(matches!(err, DialError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("missing.sock"), "{err}");
    }
}
