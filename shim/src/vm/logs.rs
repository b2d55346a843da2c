//! Forwards the agent's log stream (vsock port protocol::AGENT_LOG_PORT) into tracing, line by
//! line, with bounded lines and at the guest line rate (`guest_output`): a flooding guest gets
//! its lines dropped with one warning per flood. (The serial console is read by the
//! hypervisor backend: `guest_output::console`.)

use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::guest::vsock::Dialer;
use crate::guest_output::lines::{next_chunk, LimitedLines, Next, CHUNK};

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
        forward(stream, &sandbox_id).await;
    })
}

/// Logs each line of `stream` the rate allows (lines are re-emitted even if the guest writes
/// invalid UTF-8), until it ends.
async fn forward<S: AsyncRead + Unpin>(mut stream: S, sandbox_id: &str) {
    let mut lines = LimitedLines::new(Instant::now());
    let mut chunk = vec![0u8; CHUNK];
    loop {
        match next_chunk(&mut stream, &mut chunk, lines.gate.deadline()).await {
            Next::Bytes(n) => {
                for l in lines.push(&chunk[..n], Instant::now()) {
                    if l.to_log {
                        tracing::info!(target: "agent", sandbox = %sandbox_id, "{}", l.text);
                    }
                }
            }
            Next::Tick => {}
            Next::Closed(e) => {
                if let Some(e) = e {
                    tracing::debug!(sandbox = %sandbox_id, "agent log stream: {e}");
                }
                break;
            }
        }
        if let Some(report) = lines.gate.check(Instant::now()) {
            tracing::warn!(sandbox = %sandbox_id, "agent log stream: {report}");
        }
    }
    if let Some(report) = lines.gate.finish() {
        tracing::warn!(sandbox = %sandbox_id, "agent log stream: {report}");
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;
    use crate::guest_output::{LINES_PER_SEC, LINE_BURST};

    /// Everything tracing writes, for the test to read.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("capture").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A forged agent: a hybrid-vsock peer that answers `CONNECT 1025` and floods its log
    /// stream as fast as the shim reads. The shim logs at most the burst and the rate, then
    /// one warning with the count; its memory holds at most a chunk and a line.
    #[tokio::test(flavor = "current_thread")]
    async fn a_forged_log_peer_flooding_gets_one_warning_not_its_lines_logged() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer({
                let out = out.clone();
                move || out.clone()
            })
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("vsock.sock");
        let listener = tokio::net::UnixListener::bind(&uds).expect("bind");
        const LINES: usize = 200_000;
        let peer = tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let (r, mut w) = s.into_split();
            let mut hello = String::new();
            BufReader::new(r)
                .read_line(&mut hello)
                .await
                .expect("CONNECT");
            assert_eq!(
                hello.trim(),
                format!("CONNECT {}", protocol::AGENT_LOG_PORT)
            );
            w.write_all(b"OK 1\n").await.expect("OK");
            let line = b"forged agent line\n".repeat(1000);
            for _ in 0..LINES / 1000 {
                w.write_all(&line).await.expect("flood");
            }
        });
        let started = Instant::now();
        forward_agent_logs(Dialer::Hybrid { uds_path: uds }, "sflood".into())
            .await
            .expect("forwarder");
        peer.await.expect("peer");
        let secs = started.elapsed().as_secs() + 1;

        let text = String::from_utf8(out.0.lock().expect("capture").clone()).expect("utf8");
        let logged = text.matches("forged agent line").count() as u64;
        let most = u64::from(LINE_BURST) + u64::from(LINES_PER_SEC) * secs;
        assert!(
            logged <= most,
            "{logged} lines logged in {secs}s, at most {most}"
        );
        assert!(logged >= u64::from(LINE_BURST), "{logged}");
        let warnings: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("lines dropped"))
            .collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("sandbox=sflood"), "{}", warnings[0]);
        assert!(
            warnings[0].contains(&format!("{} lines dropped", LINES as u64 - logged)),
            "{}",
            warnings[0]
        );
    }
}
