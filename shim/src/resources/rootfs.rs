//! Host side of a container's filesystems: containerd's rootfs mounts and the spec's host bind
//! mounts are mounted in the sandbox's share (paths from `share`), where the guest finds them.
//! `MountPlan::new` only computes paths (pure, unit-tested); `LinuxMounter` does the mount(2)s.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::Spec;

use super::share::Share;
use super::spec;
use crate::error::{TaskError, TaskResult};

/// One mount of the container's rootfs as containerd hands it over (`type`, `source`, `options`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    pub fstype: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Where the rootfs comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsSource {
    /// containerd's snapshot mounts (usually one overlay), mounted in order on the target.
    Mounts(Vec<RootfsMount>),
    /// No mounts given: the bundle's own rootfs directory, bind-mounted.
    Dir(PathBuf),
}

/// A host bind mount of the spec, placed in the share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindPlan {
    /// Index in the spec's `mounts`.
    pub index: usize,
    pub source: PathBuf,
    pub host_target: PathBuf,
    pub guest_path: String,
    pub readonly: bool,
    pub recursive: bool,
}

/// Everything mounted on the host for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    pub container_id: String,
    pub rootfs: RootfsSource,
    /// `<shared>/<cid>`
    pub container_dir: PathBuf,
    /// `<shared>/<cid>/rootfs`
    pub rootfs_target: PathBuf,
    /// `<shared>/<cid>-mounts`
    pub mounts_dir: PathBuf,
    pub binds: Vec<BindPlan>,
}

impl MountPlan {
    pub fn new(
        share: &Share,
        cid: &str,
        rootfs: Vec<RootfsMount>,
        bundle: &Path,
        spec: &Spec,
    ) -> TaskResult<Self> {
        let rootfs = if rootfs.is_empty() {
            let root = spec::root_path(spec).unwrap_or(Path::new("rootfs"));
            RootfsSource::Dir(bundle.join(root))
        } else {
            RootfsSource::Mounts(rootfs)
        };
        let container_dir = share.container_dir(cid);
        let mounts_dir = share.mounts_dir(cid);
        let binds = spec::host_binds(spec)
            .into_iter()
            .enumerate()
            .map(|(n, b)| {
                let source = PathBuf::from(&b.source);
                let base = source
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "root".to_string());
                let (host_target, guest_path) = share.bind_paths(cid, &format!("{n}-{base}"));
                BindPlan {
                    index: b.index,
                    host_target,
                    guest_path,
                    source,
                    readonly: b.readonly,
                    recursive: b.recursive,
                }
            })
            .collect();
        Ok(Self {
            container_id: cid.to_string(),
            rootfs,
            rootfs_target: share.rootfs_dir(cid),
            container_dir,
            mounts_dir,
            binds,
        })
    }

    /// (spec mount index, guest source) pairs for `spec::rewrite_for_guest`.
    pub fn guest_sources(&self) -> Vec<(usize, String)> {
        self.binds
            .iter()
            .map(|b| (b.index, b.guest_path.clone()))
            .collect()
    }
}

/// Host mounts of a container's rootfs and bind-mount sources into the shared directory.
/// Blocking calls (mount(2)); the task layer runs them on the blocking pool.
pub trait HostMounter: Send + Sync + 'static {
    /// Mount everything in the plan. On error nothing of the plan stays mounted.
    fn mount(&self, plan: &MountPlan) -> TaskResult<()>;
    /// Unmount and remove everything the plan created (best effort, idempotent).
    fn unmount(&self, plan: &MountPlan) -> TaskResult<()>;
}

/// Splits mount options into flags and the filesystem-specific data string.
fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        if let Some((set, clear)) = protocol::rules::mount_flag_option(o) {
            flags.insert(MsFlags::from_bits_truncate(set));
            flags.remove(MsFlags::from_bits_truncate(clear));
            continue;
        }
        let (set, clear) = match o.as_str() {
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            // Propagation is the host's business; the share is private to this sandbox.
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => {
                (MsFlags::empty(), MsFlags::empty())
            }
            other => {
                data.push(other.to_string());
                (MsFlags::empty(), MsFlags::empty())
            }
        };
        flags.insert(set);
        flags.remove(clear);
    }
    (flags, data.join(","))
}

/// Mounts containerd's rootfs and the spec's bind sources with mount(2).
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxMounter;

fn io_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> TaskError {
    TaskError::internal(format!("{what}: {e}"))
}

/// Flags every host-side mount of the share gets: nothing in it is a setuid program or a
/// device node to the host, whatever the image or the guest put there.
const SHARE_MOUNT_FLAGS: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

/// mount(2) into the share, with [`SHARE_MOUNT_FLAGS`].
fn do_mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: &str,
) -> TaskResult<()> {
    let flags = flags | SHARE_MOUNT_FLAGS;
    let data = (!data.is_empty()).then_some(data);
    let fstype = (!fstype.is_empty() && !flags.contains(MsFlags::MS_BIND)).then_some(fstype);
    mount(Some(source), target, fstype, flags, data).map_err(|e| {
        io_err(
            format_args!(
                "mounting {source} ({}) on {}",
                fstype.unwrap_or("bind"),
                target.display()
            ),
            e,
        )
    })?;
    // A bind takes its flags (read-only, nosuid, nodev) only from a second, remounting call.
    if flags.contains(MsFlags::MS_BIND) {
        let re = MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | SHARE_MOUNT_FLAGS
            | (flags & MsFlags::MS_RDONLY);
        if let Err(e) = mount(None::<&str>, target, None::<&str>, re, None::<&str>) {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(io_err(
                format_args!("remounting {} ({re:?})", target.display()),
                e,
            ));
        }
    }
    Ok(())
}

/// Unmounts everything stacked on `target`; "not mounted" is success.
fn unmount_all(target: &Path) -> TaskResult<()> {
    loop {
        match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(io_err(format_args!("unmounting {}", target.display()), e)),
        }
    }
}

/// Removes an (unmounted) file or empty directory; absent is fine. Never recursive: a path
/// that is still a mount point must not have its contents deleted.
fn remove_entry(path: &Path) -> TaskResult<()> {
    let res = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    match res {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io_err(format_args!("removing {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

impl LinuxMounter {
    fn mount_all(plan: &MountPlan) -> TaskResult<()> {
        if plan.container_dir.exists() {
            return Err(TaskError::already_exists(format!(
                "{} already exists: container {:?} is already in this sandbox",
                plan.container_dir.display(),
                plan.container_id
            )));
        }
        fs::create_dir_all(&plan.rootfs_target)
            .map_err(|e| io_err(format_args!("creating {}", plan.rootfs_target.display()), e))?;
        match &plan.rootfs {
            RootfsSource::Dir(dir) => {
                if !dir.is_dir() {
                    return Err(TaskError::invalid(format!(
                        "container rootfs {} is not a directory",
                        dir.display()
                    )));
                }
                do_mount(
                    &dir.to_string_lossy(),
                    &plan.rootfs_target,
                    "",
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    "",
                )?;
            }
            RootfsSource::Mounts(mounts) => {
                for m in mounts {
                    let (mut flags, data) = parse_options(&m.options);
                    if m.fstype == "bind" || m.fstype == "rbind" {
                        flags.insert(MsFlags::MS_BIND);
                    }
                    do_mount(&m.source, &plan.rootfs_target, &m.fstype, flags, &data)?;
                }
            }
        }
        if !plan.binds.is_empty() {
            fs::create_dir_all(&plan.mounts_dir)
                .map_err(|e| io_err(format_args!("creating {}", plan.mounts_dir.display()), e))?;
        }
        for b in &plan.binds {
            let meta = fs::metadata(&b.source).map_err(|e| {
                TaskError::invalid(format!("bind mount source {}: {e}", b.source.display()))
            })?;
            if meta.is_dir() {
                fs::create_dir(&b.host_target)
            } else {
                fs::File::create(&b.host_target).map(drop)
            }
            .map_err(|e| io_err(format_args!("creating {}", b.host_target.display()), e))?;
            let mut flags = MsFlags::MS_BIND;
            if b.recursive {
                flags.insert(MsFlags::MS_REC);
            }
            if b.readonly {
                flags.insert(MsFlags::MS_RDONLY);
            }
            do_mount(&b.source.to_string_lossy(), &b.host_target, "", flags, "")?;
        }
        Ok(())
    }
}

impl HostMounter for LinuxMounter {
    fn mount(&self, plan: &MountPlan) -> TaskResult<()> {
        let existed = plan.container_dir.exists();
        Self::mount_all(plan).inspect_err(|_| {
            if !existed {
                let _ = self.unmount(plan);
            }
        })
    }

    fn unmount(&self, plan: &MountPlan) -> TaskResult<()> {
        let mut first_err = None;
        for b in plan.binds.iter().rev() {
            let r = unmount_all(&b.host_target).and_then(|_| remove_entry(&b.host_target));
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        for step in [
            remove_entry(&plan.mounts_dir),
            unmount_all(&plan.rootfs_target),
            remove_entry(&plan.rootfs_target),
            remove_entry(&plan.container_dir),
        ] {
            if let Err(e) = step {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Best-effort unmount of a bundle's `rootfs` (the shim's `delete` command after a crash).
pub fn unmount_bundle_rootfs(bundle: &Path) -> TaskResult<()> {
    unmount_all(&bundle.join("rootfs"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> Spec {
        serde_json::from_value(v).expect("a valid spec")
    }

    #[test]
    fn targets_are_under_the_share() {
        let spec = spec(json!({
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/resolv.conf", "type": "bind",
                 "source": "/var/lib/c/resolv.conf", "options": ["rbind", "ro"]},
                {"destination": "/data", "type": "bind", "source": "/srv/data/", "options": ["bind"]}
            ]
        }));
        let overlay = RootfsMount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "lowerdir=/l".into(),
                "upperdir=/u".into(),
                "workdir=/w".into(),
            ],
        };
        let plan = MountPlan::new(
            &Share::in_vm_dir(
                Path::new("/run/kata-containers/sb"),
                crate::config::SharedFs::VirtioFs,
            ),
            "c1",
            vec![overlay.clone()],
            Path::new("/b"),
            &spec,
        )
        .unwrap();
        assert_eq!(plan.rootfs, RootfsSource::Mounts(vec![overlay]));
        assert_eq!(
            plan.rootfs_target,
            Path::new("/run/kata-containers/sb/mounts/c1/rootfs")
        );
        assert_eq!(plan.binds.len(), 2);
        assert_eq!(
            plan.binds[0].host_target,
            Path::new("/run/kata-containers/sb/mounts/c1-mounts/0-resolv.conf")
        );
        assert_eq!(
            plan.binds[0].guest_path,
            format!("{}/c1-mounts/0-resolv.conf", protocol::GUEST_SHARED_DIR)
        );
        assert!(plan.binds[0].readonly && plan.binds[0].recursive);
        assert_eq!(plan.binds[1].index, 2);
        assert!(plan.binds[1].guest_path.ends_with("/c1-mounts/1-data"));
        assert!(!plan.binds[1].readonly);
        assert_eq!(
            plan.guest_sources()[1],
            (2, plan.binds[1].guest_path.clone())
        );
    }

    #[test]
    fn without_rootfs_mounts_the_bundle_dir_is_used() {
        let rel = MountPlan::new(
            &Share::in_vm_dir(Path::new("/"), crate::config::SharedFs::VirtioFs),
            "c",
            vec![],
            Path::new("/b"),
            &spec(json!({
                "root": {"path": "myroot"}
            })),
        )
        .unwrap();
        assert_eq!(rel.rootfs, RootfsSource::Dir(PathBuf::from("/b/myroot")));
        let abs = MountPlan::new(
            &Share::in_vm_dir(Path::new("/"), crate::config::SharedFs::VirtioFs),
            "c",
            vec![],
            Path::new("/b"),
            &spec(json!({
                "root": {"path": "/abs/root"}
            })),
        )
        .unwrap();
        assert_eq!(abs.rootfs, RootfsSource::Dir(PathBuf::from("/abs/root")));
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) = parse_options(&[
            "ro".into(),
            "nosuid".into(),
            "index=off".into(),
            "lowerdir=/a:/b".into(),
            "rprivate".into(),
        ]);
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(data, "index=off,lowerdir=/a:/b");
        let (flags, _) = parse_options(&["rbind".into(), "rw".into()]);
        assert!(flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC));
        assert!(!flags.contains(MsFlags::MS_RDONLY));
    }
}
