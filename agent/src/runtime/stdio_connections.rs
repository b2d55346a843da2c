//! The stdio connections the host opened for processes it is about to create (see
//! `protocol::stdio_stream`), held until the CreateContainer or ExecProcess that names them.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use protocol::stdio_stream::{StdioStream, StreamHeader};

/// Connections waiting for their process, at most: a host that opens more (or never creates
/// the process) is refused, so it cannot grow the agent's memory or fd table.
const MAX_WAITING: usize = 48;

/// One process's connections, each to become that fd of the process.
#[derive(Default)]
pub struct ProcessConnections {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

#[derive(Default)]
pub struct StdioConnections {
    waiting: Mutex<HashMap<(String, String, StdioStream), OwnedFd>>,
}

impl StdioConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String, StdioStream), OwnedFd>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `conn` (a blocking socket) for the process the header names; a newer
    /// connection for the same stream replaces the older.
    pub fn register(&self, header: StreamHeader, conn: OwnedFd) -> Result<(), String> {
        let mut w = self.lock();
        let key = (header.container_id, header.exec_id, header.stream);
        if !w.contains_key(&key) && w.len() >= MAX_WAITING {
            return Err(format!(
                "{MAX_WAITING} stdio connections already wait for their processes"
            ));
        }
        w.insert(key, conn);
        Ok(())
    }

    /// Takes the connections waiting for process `exec_id` ("" = the init) of container `cid`.
    pub fn take(&self, cid: &str, exec_id: &str) -> ProcessConnections {
        let mut w = self.lock();
        let mut take = |s| w.remove(&(cid.to_string(), exec_id.to_string(), s));
        ProcessConnections {
            stdin: take(StdioStream::Stdin),
            stdout: take(StdioStream::Stdout),
            stderr: take(StdioStream::Stderr),
        }
    }

    /// Drops whatever still waits for container `cid`'s processes (it is removed).
    pub fn forget_container(&self, cid: &str) {
        self.lock().retain(|(c, _, _), _| c != cid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(cid: &str, exec: &str, stream: StdioStream) -> StreamHeader {
        StreamHeader {
            stream,
            container_id: cid.into(),
            exec_id: exec.into(),
        }
    }

    fn fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn connections_wait_for_their_process_within_a_bound() {
        let c = StdioConnections::default();
        c.register(header("a", "", StdioStream::Stdout), fd())
            .unwrap();
        c.register(header("a", "e", StdioStream::Stdin), fd())
            .unwrap();
        let init = c.take("a", "");
        assert!(init.stdout.is_some() && init.stdin.is_none() && init.stderr.is_none());
        assert!(c.take("a", "").stdout.is_none(), "taken once");
        c.forget_container("a");
        assert!(c.take("a", "e").stdin.is_none());
        for i in 0..MAX_WAITING {
            c.register(header(&format!("c{i}"), "", StdioStream::Stdout), fd())
                .unwrap();
        }
        assert!(c
            .register(header("x", "", StdioStream::Stdout), fd())
            .is_err());
    }
}
