//! The stdio port (`protocol::stdio_stream`): takes the host's connections for processes it
//! is about to create, checks each header and holds the connection for its process. Host only,
//! like the API port; a header that is late, too long or names bad ids closes the connection.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use protocol::stdio_stream::{StreamHeader, ACCEPTED, MAX_HEADER_LEN, STDIO_PORT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_vsock::VsockStream;
use tracing::{debug, warn};

use crate::guest::host_vsock::HostListener;
use crate::runtime::sandbox::Sandbox;

/// How long the host has to send its header after connecting.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Listens on [`STDIO_PORT`] for the life of the agent.
pub fn serve(sandbox: Arc<Sandbox>) -> std::io::Result<()> {
    let listener = HostListener::bind(STDIO_PORT)?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(accept(stream, sandbox.clone()));
                }
                Err(e) => {
                    warn!("stdio port {STDIO_PORT}: accept: {e}; no more stdio connections");
                    return;
                }
            }
        }
    });
    Ok(())
}

/// The header line. The host sends nothing after it until the answer, so a read may take
/// the whole line at once; bytes after the newline are refused.
async fn read_header(stream: &mut VsockStream) -> Result<StreamHeader, String> {
    let mut buf = [0u8; MAX_HEADER_LEN];
    let mut len = 0;
    loop {
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| format!("reading the header: {e}"))?;
        if n == 0 {
            return Err("the host closed the connection before its header".into());
        }
        len += n;
        if let Some(end) = buf[..len].iter().position(|b| *b == b'\n') {
            if end + 1 != len {
                return Err("bytes after the header".into());
            }
            return StreamHeader::parse(&buf[..end]);
        }
        if len == buf.len() {
            return Err(format!("header longer than {MAX_HEADER_LEN} bytes"));
        }
    }
}

async fn accept(mut stream: VsockStream, sandbox: Arc<Sandbox>) {
    let header = match tokio::time::timeout(HEADER_TIMEOUT, read_header(&mut stream)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            warn!("stdio connection refused: {e}");
            return;
        }
        Err(_) => {
            warn!("stdio connection refused: no header within {HEADER_TIMEOUT:?}");
            return;
        }
    };
    let what = format!(
        "{:?} of {}/{}",
        header.stream, header.container_id, header.exec_id
    );
    // The process gets its own descriptor of the socket; ours leaves tokio's reactor when
    // `stream` drops below. The answer goes out only once the connection is registered, so
    // the create the host sends next finds it.
    let registered = stream
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| e.to_string())
        .and_then(|fd| sandbox.stdio_connections.register(header, fd));
    let answered = match registered {
        Ok(()) => stream.write_all(ACCEPTED).await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    match answered {
        Ok(()) => debug!("stdio connection for {what}"),
        Err(e) => warn!("stdio connection for {what} refused: {e}"),
    }
}
