//! Forwards the agent's log stream (vsock port protocol::AGENT_LOG_PORT) into tracing.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinHandle;

use crate::vsock::Dialer;

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
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end();
                    if !text.is_empty() {
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
