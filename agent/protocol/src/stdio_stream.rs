//! A process's stdio carried on a vsock connection of its own (port [`STDIO_PORT`]), instead
//! of ReadStdout/WriteStdin calls: the host connects before it creates the process and sends
//! one header line naming the stream; the agent answers [`ACCEPTED`] and gives the connection
//! to the process as that fd, so its bytes cross the vsock with no copy in the agent.
//! Output ends when the process (and whatever inherited the fd) closes it; stdin ends when the
//! host closes the connection.

use crate::rules::{check_id, MAX_ID_LEN};
pub use crate::STDIO_PORT;
/// The agent's answer once the connection is registered for the process.
pub const ACCEPTED: &[u8] = b"OK\n";
/// Longest header line, newline included.
pub const MAX_HEADER_LEN: usize = 2 * MAX_ID_LEN + 16;

/// Which of a process's stdio fds a connection becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StdioStream {
    Stdin,
    Stdout,
    Stderr,
}

impl StdioStream {
    fn name(self) -> &'static str {
        match self {
            StdioStream::Stdin => "stdin",
            StdioStream::Stdout => "stdout",
            StdioStream::Stderr => "stderr",
        }
    }
}

/// The header: `<stdin|stdout|stderr> <container id> <exec id>\n`, the exec id empty for a
/// container's init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub stream: StdioStream,
    pub container_id: String,
    pub exec_id: String,
}

impl StreamHeader {
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{} {} {}\n",
            self.stream.name(),
            self.container_id,
            self.exec_id
        )
        .into_bytes()
    }

    /// Parses one header line (without its newline), checking both ids.
    pub fn parse(line: &[u8]) -> Result<StreamHeader, String> {
        let line = std::str::from_utf8(line).map_err(|_| "header is not UTF-8".to_string())?;
        let mut f = line.splitn(3, ' ');
        let stream = match f.next() {
            Some("stdin") => StdioStream::Stdin,
            Some("stdout") => StdioStream::Stdout,
            Some("stderr") => StdioStream::Stderr,
            other => return Err(format!("unknown stream {other:?}")),
        };
        let container_id = f.next().unwrap_or_default().to_string();
        check_id(&container_id).map_err(|e| format!("container id {container_id:?}: {e}"))?;
        let exec_id = f.next().unwrap_or_default().to_string();
        if !exec_id.is_empty() {
            check_id(&exec_id).map_err(|e| format!("exec id {exec_id:?}: {e}"))?;
        }
        Ok(StreamHeader {
            stream,
            container_id,
            exec_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_bad_ones_are_refused() {
        for (stream, exec) in [(StdioStream::Stdout, ""), (StdioStream::Stdin, "e1")] {
            let h = StreamHeader {
                stream,
                container_id: "c1".into(),
                exec_id: exec.into(),
            };
            let line = h.encode();
            assert!(line.len() <= MAX_HEADER_LEN);
            assert_eq!(StreamHeader::parse(&line[..line.len() - 1]), Ok(h));
        }
        assert!(StreamHeader::parse(b"stdout ../x ").is_err());
        assert!(StreamHeader::parse(b"stdout c1 a b").is_err());
        assert!(StreamHeader::parse(b"tty c1 ").is_err());
        assert!(StreamHeader::parse(b"stdout").is_err());
    }
}
