//! The share: the one place that knows where the host's files for a sandbox live and where the
//! guest sees them (a directory under the VM's dir, exported over virtio-fs or 9p, mounted by
//! the agent at `protocol::GUEST_SHARED_DIR`).

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use protocol::agent::Storage;

use crate::config::SharedFs;

/// Name of the shared directory inside a VM's directory.
const SHARE_DIR_NAME: &str = "shared";

/// One sandbox's shared directory, host and guest side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    host: PathBuf,
    kind: SharedFs,
}

/// Guest path of container `cid`'s rootfs.
pub fn guest_rootfs(cid: &str) -> String {
    format!("{}/{cid}/rootfs", protocol::GUEST_SHARED_DIR)
}

impl Share {
    /// The share of the VM whose directory is `vm_dir`, reaching the guest as `kind`.
    pub fn in_vm_dir(vm_dir: &Path, kind: SharedFs) -> Share {
        Share {
            host: vm_dir.join(SHARE_DIR_NAME),
            kind,
        }
    }

    /// The host directory the guest sees at `protocol::GUEST_SHARED_DIR`.
    pub fn host_dir(&self) -> &Path {
        &self.host
    }

    /// The tag the guest mounts the share by.
    pub fn tag(&self) -> &'static str {
        protocol::SHARED_FS_TAG
    }

    pub fn kind(&self) -> SharedFs {
        self.kind
    }

    /// `<share>/<cid>`: everything of container `cid` that is not a volume.
    pub fn container_dir(&self, cid: &str) -> PathBuf {
        self.host.join(cid)
    }

    /// `<share>/<cid>/rootfs`, seen by the guest at [`guest_rootfs`].
    pub fn rootfs_dir(&self, cid: &str) -> PathBuf {
        self.container_dir(cid).join("rootfs")
    }

    /// `<share>/<cid>-mounts`: the container's host bind mounts (volumes, resolv.conf, ...).
    pub fn mounts_dir(&self, cid: &str) -> PathBuf {
        self.host.join(format!("{cid}-mounts"))
    }

    /// Host and guest path of bind mount `name` of container `cid`.
    pub fn bind_paths(&self, cid: &str, name: &str) -> (PathBuf, String) {
        (
            self.mounts_dir(cid).join(name),
            format!("{}/{cid}-mounts/{name}", protocol::GUEST_SHARED_DIR),
        )
    }

    /// The Storage CreateSandbox passes so the agent mounts the share.
    pub fn storage(&self) -> Storage {
        let mut s = Storage::new();
        s.source = self.tag().to_string();
        s.mount_point = protocol::GUEST_SHARED_DIR.to_string();
        match self.kind {
            SharedFs::VirtioFs | SharedFs::None => {
                s.driver = "virtio-fs".into();
                s.fstype = "virtiofs".into();
            }
            SharedFs::Virtio9p => {
                s.driver = "9p".into();
                s.fstype = "9p".into();
                s.options = [
                    "trans=virtio",
                    "version=9p2000.L",
                    "msize=512000",
                    "cache=mmap",
                ]
                .map(String::from)
                .to_vec();
            }
        }
        s
    }
}

/// Makes `dir` a bind mount of itself with shared propagation (blocking).
///
/// Container rootfs are mounted in the share AFTER virtiofsd started, and virtiofsd's default
/// `--sandbox=namespace` works on a private copy of the mount tree taken at its start: with
/// shared propagation the daemon's copy is a slave of the share and receives every later mount.
pub fn make_shared_mount(dir: &Path) -> std::io::Result<()> {
    let none: Option<&str> = None;
    let context = |what: String| {
        move |e: nix::errno::Errno| {
            std::io::Error::new(std::io::Error::from(e).kind(), format!("{what}: {e}"))
        }
    };
    mount(Some(dir), dir, none, MsFlags::MS_BIND, none)
        .map_err(context(format!("bind-mount {} onto itself", dir.display())))?;
    mount(none, dir, none, MsFlags::MS_SHARED, none)
        .map_err(context(format!("make {} a shared mount", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storages() {
        let share = Share::in_vm_dir(Path::new("/run/k/s1"), SharedFs::VirtioFs);
        assert_eq!(share.host_dir(), Path::new("/run/k/s1/shared"));
        let s = share.storage();
        assert_eq!(s.driver, "virtio-fs");
        assert_eq!(s.fstype, "virtiofs");
        assert_eq!(s.source, protocol::SHARED_FS_TAG);
        assert_eq!(s.mount_point, protocol::GUEST_SHARED_DIR);
        assert!(s.options.is_empty());
        let s = Share::in_vm_dir(Path::new("/x"), SharedFs::Virtio9p).storage();
        assert_eq!(s.driver, "9p");
        assert_eq!(s.fstype, "9p");
        assert_eq!(
            s.options,
            [
                "trans=virtio",
                "version=9p2000.L",
                "msize=512000",
                "cache=mmap"
            ]
        );
    }

    #[test]
    fn container_paths() {
        let share = Share::in_vm_dir(Path::new("/run/k/sb"), SharedFs::VirtioFs);
        assert_eq!(
            share.rootfs_dir("c1"),
            Path::new("/run/k/sb/shared/c1/rootfs")
        );
        assert_eq!(
            guest_rootfs("c1"),
            format!("{}/c1/rootfs", protocol::GUEST_SHARED_DIR)
        );
        let (host, guest) = share.bind_paths("c1", "0-data");
        assert_eq!(host, Path::new("/run/k/sb/shared/c1-mounts/0-data"));
        assert_eq!(
            guest,
            format!("{}/c1-mounts/0-data", protocol::GUEST_SHARED_DIR)
        );
    }
}
