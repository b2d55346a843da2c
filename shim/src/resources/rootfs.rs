//! Host side of a container's filesystems: containerd's rootfs mounts and the spec's host bind
//! mounts are mounted in the sandbox's share (paths from `share`), where the guest finds them.
//! `MountPlan::new` only computes paths (pure, unit-tested); `LinuxMounter` does the mount(2)s.

use std::io;
use std::path::{Path, PathBuf};

use containerd_shim_protos::ttrpc::Code;
use nix::mount::MsFlags;
use oci_spec::runtime::Spec;

use super::beneath::{self, Dir, Kind, Node};
use super::share::{self, Share, ROOTFS_NAME, SHARE_MOUNT_FLAGS};
use super::spec;
use crate::error::{TaskError, TaskResult};

/// The rootfs directory in a bundle (containerd's layout), when no mounts are given.
const BUNDLE_ROOTFS: &str = "rootfs";
/// Mode of the directories the host creates in the share (the guest sees them, read-only).
const DIR_MODE: u32 = 0o755;
/// Mode of the empty files the host creates as targets of file bind mounts.
const FILE_MODE: u32 = 0o644;

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
    /// Its entry in the container's `<cid>-mounts` (`N-<source's name>`).
    pub name: String,
    /// `<mounts>/<cid>-mounts/<name>` (for messages: the host resolves `name` beneath).
    pub host_target: PathBuf,
    pub guest_path: String,
    pub readonly: bool,
    pub recursive: bool,
}

/// Everything mounted on the host for one container. Every target is an entry of `base`,
/// created and resolved beneath it without following a symlink (`beneath`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    pub container_id: String,
    pub rootfs: RootfsSource,
    /// The share's host-only `mounts/`.
    pub base: PathBuf,
    /// `<cid>` in `base`; the rootfs is [`ROOTFS_NAME`] in it.
    pub container_entry: String,
    /// `<cid>-mounts` in `base`: the binds' entries.
    pub mounts_entry: String,
    /// `<base>/<cid>/rootfs` (for messages).
    pub rootfs_target: PathBuf,
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
            let root = spec::root_path(spec).unwrap_or(Path::new(BUNDLE_ROOTFS));
            RootfsSource::Dir(bundle.join(root))
        } else {
            RootfsSource::Mounts(rootfs)
        };
        let binds = spec::host_binds(spec)
            .into_iter()
            .enumerate()
            .map(|(n, b)| {
                let source = PathBuf::from(&b.source);
                let base = source
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "root".to_string());
                let name = format!("{n}-{base}");
                let (host_target, guest_path) = share.bind_paths(cid, &name);
                BindPlan {
                    index: b.index,
                    name,
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
            base: share.mounts_root().to_path_buf(),
            container_entry: share::container_entry(cid),
            mounts_entry: share::mounts_entry(cid),
            rootfs_target: share.rootfs_dir(cid),
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

/// Mounts containerd's rootfs and the spec's bind sources, beneath the share's `mounts/`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxMounter;

fn internal(e: io::Error) -> TaskError {
    TaskError::internal(e.to_string())
}

/// Binds `source` (a path the spec or containerd names, not under the share: resolved as
/// usual, opened once) onto `target`, with [`SHARE_MOUNT_FLAGS`] and `flags`' read-only and
/// noexec, on every submount too when `recursive`.
fn bind_source(source: &Node, target: &Node, flags: MsFlags, recursive: bool) -> TaskResult<()> {
    let attrs = beneath::mount_attrs(flags | SHARE_MOUNT_FLAGS);
    beneath::bind(source, target, recursive, attrs).map_err(internal)
}

/// One of containerd's rootfs mounts onto the rootfs target.
fn mount_rootfs_layer(m: &RootfsMount, target: &Node) -> TaskResult<()> {
    let (mut flags, data) = parse_options(&m.options);
    if m.fstype == "bind" || m.fstype == "rbind" {
        flags.insert(MsFlags::MS_BIND);
    }
    if m.fstype == "rbind" {
        flags.insert(MsFlags::MS_REC);
    }
    if flags.contains(MsFlags::MS_BIND) {
        let source = Node::open_source(Path::new(&m.source))
            .map_err(|e| TaskError::invalid(format!("rootfs mount source: {e}")))?;
        return bind_source(&source, target, flags, flags.contains(MsFlags::MS_REC));
    }
    let data = (!data.is_empty()).then_some(data.as_str());
    beneath::mount_fs(
        &m.source,
        target,
        &m.fstype,
        flags | SHARE_MOUNT_FLAGS,
        data,
    )
    .map_err(internal)
}

impl LinuxMounter {
    fn mount_all(plan: &MountPlan) -> TaskResult<()> {
        let base = Dir::open(&plan.base).map_err(internal)?;
        let container = base
            .create_dir(&plan.container_entry, DIR_MODE)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => TaskError::already_exists(format!(
                    "{e}: container {:?} is already in this sandbox",
                    plan.container_id
                )),
                _ => internal(e),
            })?;
        let rootfs = container
            .create_dir(ROOTFS_NAME, DIR_MODE)
            .map_err(internal)?;
        match &plan.rootfs {
            RootfsSource::Dir(dir) => {
                let source = Node::open_source(dir)
                    .map_err(|e| TaskError::invalid(format!("container rootfs: {e}")))?;
                if source.kind() != Kind::Dir {
                    return Err(TaskError::invalid(format!(
                        "container rootfs {} is {}, not a directory",
                        dir.display(),
                        source.kind()
                    )));
                }
                bind_source(&source, rootfs.node(), MsFlags::empty(), true)?;
            }
            RootfsSource::Mounts(mounts) => {
                for m in mounts {
                    mount_rootfs_layer(m, rootfs.node())?;
                }
            }
        }
        if plan.binds.is_empty() {
            return Ok(());
        }
        let binds = base
            .ensure_dir(&plan.mounts_entry, DIR_MODE)
            .map_err(internal)?;
        for b in &plan.binds {
            let source = Node::open_source(&b.source)
                .map_err(|e| TaskError::invalid(format!("bind mount source: {e}")))?;
            let target = if source.kind() == Kind::Dir {
                binds.ensure_dir(&b.name, DIR_MODE).map(Dir::into_node)
            } else {
                binds.ensure_file(&b.name, FILE_MODE)
            }
            .map_err(internal)?;
            let flags = if b.readonly {
                MsFlags::MS_RDONLY
            } else {
                MsFlags::empty()
            };
            bind_source(&source, &target, flags, b.recursive)?;
        }
        Ok(())
    }
}

/// Unmounts everything at `name` in `dir`, then removes the entry.
fn unmount_entry(dir: &Dir, name: &str) -> io::Result<()> {
    dir.unmount_all(name)?;
    dir.remove(name)
}

/// The directory at `name` in `base`, if it is one; a symlink or anything else there is not the
/// host's, and nothing of the plan was mounted through it.
fn open_own_dir(base: &Dir, name: &str) -> io::Result<Option<Dir>> {
    match base.kind(name)? {
        Some(Kind::Dir) => base.open_dir(Path::new(name)).map(Some),
        _ => Ok(None),
    }
}

impl HostMounter for LinuxMounter {
    fn mount(&self, plan: &MountPlan) -> TaskResult<()> {
        Self::mount_all(plan).inspect_err(|e| {
            // A container already there is not this plan's to take down.
            if e.code != Code::ALREADY_EXISTS {
                let _ = self.unmount(plan);
            }
        })
    }

    fn unmount(&self, plan: &MountPlan) -> TaskResult<()> {
        let base = match Dir::open(&plan.base) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(internal(e)),
        };
        let mut first_err: Option<io::Error> = None;
        let mut note = |r: io::Result<()>| {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        };
        match open_own_dir(&base, &plan.mounts_entry) {
            Ok(Some(binds)) => {
                for b in plan.binds.iter().rev() {
                    note(unmount_entry(&binds, &b.name));
                }
            }
            Ok(None) => {}
            Err(e) => note(Err(e)),
        }
        note(base.remove(&plan.mounts_entry));
        match open_own_dir(&base, &plan.container_entry) {
            Ok(Some(container)) => note(unmount_entry(&container, ROOTFS_NAME)),
            Ok(None) => {}
            Err(e) => note(Err(e)),
        }
        note(base.remove(&plan.container_entry));
        first_err.map_or(Ok(()), |e| Err(internal(e)))
    }
}

/// Best-effort unmount of a bundle's `rootfs` (the shim's `delete` command after a crash).
pub fn unmount_bundle_rootfs(bundle: &Path) -> TaskResult<()> {
    match Dir::open(bundle) {
        Ok(dir) => dir.unmount_all(BUNDLE_ROOTFS).map_err(internal),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(internal(e)),
    }
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

    /// Unmounts (detached) when dropped, so a failing test leaves no mount behind.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    /// Needs root (mounts). Names planted at the entries the shim creates next are replaced,
    /// never followed; the container's rootfs and volumes are mounted beneath the share and
    /// reach the export with their flags: a read-only volume is read-only there, in its
    /// submounts too; a writable one stays writable. Unmount leaves nothing.
    #[test]
    fn a_container_mounts_past_planted_names_and_its_read_only_volume_is_read_only_throughout() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let vm = tmp.path().join("vm");
        std::fs::create_dir(&vm).expect("vm dir");
        let share = Share::in_vm_dir(&vm, crate::config::SharedFs::VirtioFs);
        share.prepare().expect("prepare");
        let _share_mounts = Mounted(share.mounts_root().to_path_buf());
        let _export = Mounted(share.host_dir().to_path_buf());

        let canary = tmp.path().join("canary");
        std::fs::create_dir(&canary).expect("canary");
        std::os::unix::fs::symlink(&canary, share.container_dir("c1")).expect("plant");
        std::os::unix::fs::symlink(&canary, share.mounts_dir("c1")).expect("plant");

        let bundle = tmp.path().join("bundle");
        std::fs::create_dir_all(bundle.join("rootfs/tmp")).expect("rootfs");
        let rw = tmp.path().join("rw");
        let ro = tmp.path().join("ro");
        std::fs::create_dir_all(ro.join("nested")).expect("ro/nested");
        std::fs::create_dir(&rw).expect("rw");
        nix::mount::mount(
            Some("tmpfs"),
            &ro.join("nested"),
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("tmpfs in the read-only volume's source");
        let _nested = Mounted(ro.join("nested"));
        let spec = spec(json!({
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/rw", "type": "bind", "source": rw, "options": ["rbind", "rw"]},
                {"destination": "/ro", "type": "bind", "source": ro, "options": ["rbind", "ro"]}
            ]
        }));
        let plan = MountPlan::new(&share, "c1", vec![], &bundle, &spec).expect("plan");
        LinuxMounter
            .mount(&plan)
            .expect("mount past the planted names");

        let export = |rel: String| share.host_dir().join(rel);
        let (rw_name, ro_name) = (&plan.binds[0].name, &plan.binds[1].name);
        let writes = [
            (export(format!("c1/{ROOTFS_NAME}/tmp/w")), true),
            (export(format!("c1-mounts/{rw_name}/w")), true),
            (export(format!("c1-mounts/{ro_name}/w")), false),
            (export(format!("c1-mounts/{ro_name}/nested/w")), false),
            (plan.binds[1].host_target.join("nested/w"), false),
        ]
        .map(|(p, ok)| (std::fs::write(&p, "x"), p, ok));
        let again = LinuxMounter.mount(&plan).expect_err("c1 is there");
        let unmounted = LinuxMounter.unmount(&plan);
        let left: Vec<_> = std::fs::read_dir(share.mounts_root())
            .expect("mounts/")
            .map(|e| e.expect("entry").file_name())
            .collect();
        let planted: Vec<_> = std::fs::read_dir(&canary).expect("canary").collect();

        for (r, p, ok) in writes {
            match (r, ok) {
                (Ok(()), true) => {}
                (Err(e), false) if e.raw_os_error() == Some(libc::EROFS) => {}
                (r, _) => panic!("writing {}: {r:?}, expected writable={ok}", p.display()),
            }
        }
        assert_eq!(again.code, Code::ALREADY_EXISTS, "{again}");
        unmounted.expect("unmount");
        assert!(left.is_empty(), "left in mounts/: {left:?}");
        assert!(
            planted.is_empty(),
            "written through a planted symlink: {planted:?}"
        );
        assert!(
            std::fs::read_dir(&rw).expect("rw").count() == 1,
            "the rw volume got its write"
        );
        let errors = super::super::mount_table::unmount_all_under(&vm);
        assert!(errors.is_empty(), "{errors:?}");
    }
}
