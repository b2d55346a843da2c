//! The agent's vsock ports answer the host only. A connection whose peer is not the host
//! (VMADDR_CID_HOST) is a process of this guest, a container through vsock loopback or the
//! guest's own cid: it is closed before a byte is read. The guest kernel has no vsock loopback
//! transport either (guest-kernel/fragments/common.config); this holds without it.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_vsock::{VsockAddr, VsockListener, VsockStream};
use tracing::{debug, warn};

/// Whether a connection came from the host.
pub fn is_host(peer: &VsockAddr) -> bool {
    peer.cid() == libc::VMADDR_CID_HOST
}

/// A vsock listener on every cid of the guest that hands out host connections only.
pub struct HostListener {
    inner: VsockListener,
    port: u32,
    refused: AtomicU64,
}

impl HostListener {
    pub fn bind(port: u32) -> io::Result<Self> {
        Ok(Self {
            inner: VsockListener::bind(VsockAddr::new(libc::VMADDR_CID_ANY, port))?,
            port,
            refused: AtomicU64::new(0),
        })
    }

    /// The next connection from the host; others are closed (the first refusal of a port is
    /// a warning, later ones debug lines, so a guest process cannot flood the log).
    pub async fn accept(&self) -> io::Result<(VsockStream, VsockAddr)> {
        loop {
            let (stream, peer) = self.inner.accept().await?;
            if is_host(&peer) {
                return Ok((stream, peer));
            }
            drop(stream);
            let n = self.refused.fetch_add(1, Ordering::Relaxed);
            if n == 0 {
                warn!(
                    port = self.port,
                    cid = peer.cid(),
                    "vsock connection from inside the guest refused: only the host may connect"
                );
            } else {
                debug!(
                    port = self.port,
                    cid = peer.cid(),
                    refused = n + 1,
                    "vsock connection from inside the guest refused"
                );
            }
        }
    }

    /// The same, as the listener of a ttrpc server.
    pub fn into_ttrpc(self) -> ttrpc::r#async::transport::Listener {
        let incoming = futures::stream::unfold(self, |listener| async move {
            let next = listener.accept().await.map(|(stream, _)| stream);
            Some((next, listener))
        });
        ttrpc::r#async::transport::Listener::new(incoming)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_host_cid_is_the_host() {
        assert!(is_host(&VsockAddr::new(libc::VMADDR_CID_HOST, 1024)));
        // Loopback, the guest's own cid (3 with hybrid vsock), and any other.
        for cid in [libc::VMADDR_CID_LOCAL, 3, 4, libc::VMADDR_CID_ANY] {
            assert!(!is_host(&VsockAddr::new(cid, 1024)), "cid {cid}");
        }
    }
}
