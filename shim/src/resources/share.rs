//! The share: the one place that knows where the host's files for a sandbox live and where the
//! guest sees them, laid out so that the host never follows what the guest can write.
//!
//! Two directories under the VM's dir. `mounts/` is the host's: every host-side mount (a
//! container's rootfs, its volumes) goes there, never exported. `shared/` is what virtio-fs or
//! 9p exports, mounted by the agent at `protocol::GUEST_SHARED_DIR`: a read-only, nosuid,
//! nodev bind of `mounts/` that receives its later mounts as a slave. The guest can write only
//! inside the mounts that are writable themselves, never next to them, so it cannot plant a
//! symlink where the host will create or mount something next.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use protocol::agent::Storage;

use super::beneath::{self, Dir};
use crate::config::SharedFs;

/// The exported directory inside a VM's directory.
const EXPORT_DIR_NAME: &str = "shared";
/// The host-only directory the host mounts into, inside a VM's directory.
const MOUNTS_DIR_NAME: &str = "mounts";
/// A container's rootfs, inside its directory in `mounts/`.
pub const ROOTFS_NAME: &str = "rootfs";

/// Flags every host-side mount of the share gets (recursively): nothing in it is a setuid
/// program or a device node to the host, whatever the image or the guest put there.
pub const SHARE_MOUNT_FLAGS: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

/// One sandbox's share, host and guest side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The VM's directory, which holds both.
    dir: PathBuf,
    /// What the host mounts into (host-only).
    mounts: PathBuf,
    /// What the guest sees (the export).
    export: PathBuf,
    kind: SharedFs,
}

/// Guest path of container `cid`'s rootfs.
pub fn guest_rootfs(cid: &str) -> String {
    format!(
        "{}/{}/{ROOTFS_NAME}",
        protocol::GUEST_SHARED_DIR,
        container_entry(cid)
    )
}

/// Name in `mounts/` of container `cid`'s directory (its rootfs is [`ROOTFS_NAME`] in it).
pub fn container_entry(cid: &str) -> String {
    cid.to_string()
}

/// Name in `mounts/` of container `cid`'s bind mounts directory (volumes, resolv.conf, ...).
pub fn mounts_entry(cid: &str) -> String {
    format!("{cid}-mounts")
}

impl Share {
    /// The share of the VM whose directory is `vm_dir`, reaching the guest as `kind`.
    pub fn in_vm_dir(vm_dir: &Path, kind: SharedFs) -> Share {
        Share {
            dir: vm_dir.to_path_buf(),
            mounts: vm_dir.join(MOUNTS_DIR_NAME),
            export: vm_dir.join(EXPORT_DIR_NAME),
            kind,
        }
    }

    /// The host directory exported to the guest, seen there at `protocol::GUEST_SHARED_DIR`
    /// (read-only: the host never writes through it).
    pub fn host_dir(&self) -> &Path {
        &self.export
    }

    /// The tag the guest mounts the share by.
    pub fn tag(&self) -> &'static str {
        protocol::SHARED_FS_TAG
    }

    pub fn kind(&self) -> SharedFs {
        self.kind
    }

    /// `mounts/`: the host-only directory every host-side mount goes into; the host resolves
    /// every entry of it beneath it (`beneath`).
    pub fn mounts_root(&self) -> &Path {
        &self.mounts
    }

    /// `mounts/<cid>`: everything of container `cid` that is not a volume.
    pub fn container_dir(&self, cid: &str) -> PathBuf {
        self.mounts.join(container_entry(cid))
    }

    /// `mounts/<cid>/rootfs`, seen by the guest at [`guest_rootfs`].
    pub fn rootfs_dir(&self, cid: &str) -> PathBuf {
        self.container_dir(cid).join(ROOTFS_NAME)
    }

    /// `mounts/<cid>-mounts`: the container's host bind mounts (volumes, resolv.conf, ...).
    pub fn mounts_dir(&self, cid: &str) -> PathBuf {
        self.mounts.join(mounts_entry(cid))
    }

    /// Host and guest path of bind mount `name` of container `cid`.
    pub fn bind_paths(&self, cid: &str, name: &str) -> (PathBuf, String) {
        (
            self.mounts_dir(cid).join(name),
            format!(
                "{}/{}/{name}",
                protocol::GUEST_SHARED_DIR,
                mounts_entry(cid)
            ),
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

impl Share {
    /// Creates `mounts/` and its read-only export `shared/` (blocking; needs root).
    ///
    /// `mounts/` is a bind mount of itself with shared propagation: container rootfs are
    /// mounted there after virtiofsd started, and virtiofsd's `--sandbox=namespace` works on a
    /// copy of the mount tree taken at its start, which receives later mounts only through
    /// propagation. `shared/` is a bind of it, read-only, nosuid and nodev from its start, then
    /// made its slave: mounts reach the export, nothing goes back. Everything is done through
    /// fds beneath the VM's directory (`beneath`). The caller removes both with the VM's
    /// directory (unmounting what is under it) on every path.
    pub fn prepare(&self) -> std::io::Result<()> {
        let vm = Dir::open(&self.dir)?;
        let mounts = vm.create_dir(MOUNTS_DIR_NAME, 0o700)?;
        let export = vm.create_dir(EXPORT_DIR_NAME, 0o700)?;
        let attrs = beneath::mount_attrs(SHARE_MOUNT_FLAGS);
        beneath::bind(mounts.node(), mounts.node(), false, attrs)?;
        // The fd opened before the bind is the directory under it: reopen for the mount.
        let mounts = vm.open_dir(Path::new(MOUNTS_DIR_NAME))?;
        beneath::set_mount_attrs(mounts.node(), false, 0, MsFlags::MS_SHARED)?;
        let read_only = beneath::mount_attrs(SHARE_MOUNT_FLAGS | MsFlags::MS_RDONLY);
        beneath::bind(mounts.node(), export.node(), false, read_only)?;
        let export = vm.open_dir(Path::new(EXPORT_DIR_NAME))?;
        beneath::set_mount_attrs(export.node(), false, 0, MsFlags::MS_SLAVE)
    }
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
            Path::new("/run/k/sb/mounts/c1/rootfs")
        );
        assert_eq!(
            guest_rootfs("c1"),
            format!("{}/c1/rootfs", protocol::GUEST_SHARED_DIR)
        );
        let (host, guest) = share.bind_paths("c1", "0-data");
        assert_eq!(host, Path::new("/run/k/sb/mounts/c1-mounts/0-data"));
        assert_eq!(
            guest,
            format!("{}/c1-mounts/0-data", protocol::GUEST_SHARED_DIR)
        );
    }

    /// Needs root (mount). A mount made in `mounts/` after `prepare` shows in the export; the
    /// export itself takes no writes, a writable mount inside it does.
    #[test]
    fn the_export_is_a_read_only_slave_of_the_host_mounts() {
        let vm = tempfile::tempdir().expect("tempdir");
        let share = Share::in_vm_dir(vm.path(), SharedFs::VirtioFs);
        share.prepare().expect("prepare");
        let src = tempfile::tempdir().expect("tempdir");
        std::fs::write(src.path().join("hello"), "hi").expect("write");
        let rootfs = share.rootfs_dir("c1");
        std::fs::create_dir_all(&rootfs).expect("rootfs dir");
        let none: Option<&str> = None;
        nix::mount::mount(Some(src.path()), &rootfs, none, MsFlags::MS_BIND, none).expect("bind");
        let read = std::fs::read_to_string(share.host_dir().join("c1/rootfs/hello"));
        let planted = std::os::unix::fs::symlink("/etc", share.host_dir().join("c2-mounts"));
        let written = std::fs::write(share.host_dir().join("c1/rootfs/inside"), "ok");
        let errors = crate::resources::mount_table::unmount_all_under(vm.path());
        assert_eq!(read.expect("a later mount reaches the export"), "hi");
        assert_eq!(
            planted
                .expect_err("the export root is read-only")
                .raw_os_error(),
            Some(libc::EROFS)
        );
        written.expect("a writable mount stays writable through the export");
        assert!(errors.is_empty(), "{errors:?}");
    }
}
