//! Mounts: the container rootfs (run in the spawn helper's child, inside its new mount
//! namespace, every destination resolved beneath the root) and mount option parsing.
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::SFlag;
use nix::unistd;
use oci_spec::runtime::{Mount, Spec};

use crate::runtime::beneath::{fd_path, BeneathError, Root};

/// Device nodes every container gets when its /dev is a fresh tmpfs (bound from the guest /dev).
const DEFAULT_DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Parsed OCI/fstab mount options.
#[derive(Debug, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// MS_SHARED/MS_PRIVATE/... applied with a separate mount call.
    pub propagation: MsFlags,
    pub bind: bool,
    /// Filesystem-specific options passed as mount data.
    pub data: String,
}

pub fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        bind: false,
        data: String::new(),
    };
    let mut data = Vec::new();
    for opt in options {
        if let Some((set, clear)) = protocol::rules::mount_flag_option(opt) {
            o.flags.insert(MsFlags::from_bits_truncate(set));
            o.flags.remove(MsFlags::from_bits_truncate(clear));
            continue;
        }
        let (set, clear) = match opt.as_str() {
            "bind" => {
                o.bind = true;
                (MsFlags::MS_BIND, MsFlags::empty())
            }
            "rbind" => {
                o.bind = true;
                (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
            }
            p @ ("private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave"
            | "unbindable" | "runbindable") => {
                let mut f = match p.trim_start_matches('r') {
                    "private" => MsFlags::MS_PRIVATE,
                    "shared" => MsFlags::MS_SHARED,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                if p.starts_with('r') {
                    f |= MsFlags::MS_REC;
                }
                o.propagation |= f;
                continue;
            }
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        o.flags.insert(set);
        o.flags.remove(clear);
    }
    o.data = data.join(",");
    o
}

fn mnt(
    src: Option<&Path>,
    dst: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    mount(src, dst, fstype, flags, data).map_err(|e| {
        format!(
            "mounting {} on {} (type {}, flags {flags:?}, data {:?}): {e}",
            src.map_or("none".into(), |s| s.display().to_string()),
            dst.display(),
            fstype.unwrap_or("none"),
            data.unwrap_or("")
        )
    })
}

/// mount(2) onto a path resolved beneath a container root: through the fd's
/// `/proc/self/fd/N` name, so the path is not walked again. Errors name `shown`, the path in
/// the container.
fn mnt_on(
    src: Option<&Path>,
    target: &OwnedFd,
    shown: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    mount(src, &fd_path(target), fstype, flags, data).map_err(|e| {
        format!(
            "mounting {} on {} in the container (type {}, flags {flags:?}, data {:?}): {e}",
            src.map_or("none".into(), |s| s.display().to_string()),
            shown.display(),
            fstype.unwrap_or("none"),
            data.unwrap_or("")
        )
    })
}

fn beneath_err(e: BeneathError) -> String {
    e.to_string()
}

/// Builds the container's root filesystem (the spec's mounts, /dev) in the container init's
/// fresh mount namespace, before any user or capability change. Every destination is
/// resolved beneath the root (see [`beneath`]). Returns the root, held open for
/// [`finalize_rootfs`].
/// `cgroup` is the container's cgroup directory, shown at a cgroup mount when the spec asks
/// for no cgroup namespace.
pub fn setup_rootfs(spec: &Spec, root: &Path, cgroup: Option<&Path>) -> Result<Root, String> {
    if !root.is_dir() {
        return Err(format!("rootfs {} does not exist", root.display()));
    }
    let linux = spec.linux().as_ref();
    let cgroupns = linux
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|n| {
            n.iter()
                .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Cgroup)
        });
    let own_cgroup = cgroup.filter(|_| !cgroupns);
    // Nothing done here may propagate back to the agent's namespace.
    mnt(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None,
    )?;
    mnt(
        Some(root),
        root,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    // Opened on the bind just made: what is mounted beneath it moves with pivot_root.
    let root = Root::open(root).map_err(beneath_err)?;

    let mut dev_is_tmpfs = false;
    for m in spec.mounts().iter().flatten() {
        if m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs") {
            dev_is_tmpfs = true;
        }
        mount_one(&root, m, own_cgroup)?;
    }
    setup_dev(&root, spec, dev_is_tmpfs)?;
    Ok(root)
}

/// After hostname and sysctl (which write /proc/sys): masked and read-only paths (beneath
/// the root), then the switch into it, the read-only root and its propagation.
pub fn finalize_rootfs(spec: &Spec, root: Root) -> Result<(), String> {
    let linux = spec.linux().as_ref();
    if let Some(l) = linux {
        for p in l.masked_paths().iter().flatten() {
            mask_path(&root, Path::new(p))?;
        }
        for p in l.readonly_paths().iter().flatten() {
            readonly_path(&root, Path::new(p))?;
        }
    }
    switch_root(&root)?;
    drop(root);
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        mnt(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    let propagation = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        Some("shared") | Some("rshared") => MsFlags::MS_SHARED | MsFlags::MS_REC,
        Some("slave") | Some("rslave") => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        _ => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
    };
    if propagation != (MsFlags::MS_PRIVATE | MsFlags::MS_REC) {
        mnt(None, Path::new("/"), None, propagation, None)?;
    }
    Ok(())
}

fn mount_one(root: &Root, m: &Mount, own_cgroup: Option<&Path>) -> Result<(), String> {
    let dest = m.destination();
    if !dest.is_absolute() {
        return Err(format!(
            "mount destination {} is not absolute",
            dest.display()
        ));
    }
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    let mut fstype = m.typ().clone().unwrap_or_default();
    let is_bind = opts.bind || fstype == "bind";
    let src = m.source().as_deref();

    if is_bind {
        let src = src.ok_or_else(|| format!("bind mount on {} has no source", dest.display()))?;
        let md =
            fs::metadata(src).map_err(|e| format!("bind mount source {}: {e}", src.display()))?;
        let target = if md.is_dir() {
            root.mkdir_all(dest)
        } else {
            root.create_file(dest)
        }
        .map_err(beneath_err)?;
        bind(src, root, dest, &target, &opts)?;
    } else if let (true, Some(cg)) = (fstype == "cgroup" || fstype == "cgroup2", own_cgroup) {
        // Without a cgroup namespace a fresh cgroup2 mount would show the whole guest
        // hierarchy: show the container its own cgroup (its limits) instead, like runc.
        let target = root.mkdir_all(dest).map_err(beneath_err)?;
        bind(cg, root, dest, &target, &opts)?;
    } else {
        if fstype == "cgroup" {
            fstype = "cgroup2".into();
        }
        if fstype.is_empty() {
            return Err(format!("mount on {} has no type", dest.display()));
        }
        let target = root.mkdir_all(dest).map_err(beneath_err)?;
        let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
        let src = src
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(&fstype));
        match mnt_on(Some(&src), &target, dest, Some(&fstype), opts.flags, data) {
            Ok(()) => {}
            // A minimal guest kernel may lack POSIX message queues: skip rather than fail.
            Err(_) if fstype == "mqueue" => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    if !opts.propagation.is_empty() {
        // Resolved again: the fd above names the mount point, this reaches the new mount.
        let top = root.resolve(dest).map_err(beneath_err)?;
        mnt_on(None, &top, dest, None, opts.propagation, None)?;
    }
    Ok(())
}

/// Bind mount onto `target` (`dest` resolved beneath `root`); flags other than bind/rec (ro,
/// nosuid, ...) need a remount of the bind, found by resolving `dest` again.
fn bind(
    src: &Path,
    root: &Root,
    dest: &Path,
    target: &OwnedFd,
    opts: &MountOptions,
) -> Result<(), String> {
    let base = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
    mnt_on(Some(src), target, dest, None, base, None)?;
    let extra = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
    if !extra.is_empty() {
        let top = root.resolve(dest).map_err(beneath_err)?;
        mnt_on(
            None,
            &top,
            dest,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
            None,
        )?;
    }
    Ok(())
}

/// The container's /dev when it is a fresh tmpfs: the basic devices (bound from the guest's
/// /dev), the usual symlinks, the spec's devices. All beneath the root, wherever an image's
/// `/dev` symlink points.
fn setup_dev(root: &Root, spec: &Spec, dev_is_tmpfs: bool) -> Result<(), String> {
    let dev = Path::new("/dev");
    if !dev_is_tmpfs || root.resolve_if_exists(dev).map_err(beneath_err)?.is_none() {
        return Ok(());
    }
    for name in DEFAULT_DEVICES {
        let path = dev.join(name);
        let target = root.create_file(&path).map_err(beneath_err)?;
        mnt_on(
            Some(&Path::new("/dev").join(name)),
            &target,
            &path,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        root.symlink(&dev.join(link), Path::new(to))
            .map_err(beneath_err)?;
    }
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
    {
        make_device(root, d)?;
    }
    Ok(())
}

fn make_device(root: &Root, d: &oci_spec::runtime::LinuxDevice) -> Result<(), String> {
    use nix::sys::stat::{makedev, Mode, SFlag};
    use oci_spec::runtime::LinuxDeviceType;
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => return Err(format!("device {} has type 'a'", d.path().display())),
    };
    let mode = Mode::from_bits_truncate(d.file_mode().unwrap_or(0o666));
    root.mknod(
        d.path(),
        kind,
        mode,
        makedev(d.major() as u64, d.minor() as u64),
        (d.uid(), d.gid()),
    )
    .map(drop)
    .map_err(beneath_err)
}

/// pivot_root into `root` (entered through its fd); when the current root is the initramfs
/// (pivot_root refuses it with EINVAL), move the rootfs over / and chroot instead.
fn switch_root(root: &Root) -> Result<(), String> {
    unistd::fchdir(root.fd().as_raw_fd())
        .map_err(|e| format!("chdir {}: {e}", root.path().display()))?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            umount2(".", MntFlags::MNT_DETACH)
                .map_err(|e| format!("detaching the old root: {e}"))?;
        }
        Err(nix::errno::Errno::EINVAL) => {
            mnt(
                Some(Path::new(".")),
                Path::new("/"),
                None,
                MsFlags::MS_MOVE,
                None,
            )?;
            unistd::chroot(".").map_err(|e| format!("chroot {}: {e}", root.path().display()))?;
        }
        Err(e) => return Err(format!("pivot_root {}: {e}", root.path().display())),
    }
    unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))
}

/// A masked path (resolved beneath the root; absent is fine): an empty read-only tmpfs over
/// a directory, the guest's /dev/null over anything else.
fn mask_path(root: &Root, p: &Path) -> Result<(), String> {
    let Some(fd) = root.resolve_if_exists(p).map_err(beneath_err)? else {
        return Ok(());
    };
    let is_dir = nix::sys::stat::fstat(fd.as_raw_fd())
        .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
        .map_err(|e| format!("masking {}: {e}", p.display()))?;
    if is_dir {
        mnt_on(
            Some(Path::new("tmpfs")),
            &fd,
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None,
        )
    } else {
        mnt_on(
            Some(Path::new("/dev/null")),
            &fd,
            p,
            None,
            MsFlags::MS_BIND,
            None,
        )
    }
}

/// A read-only path (resolved beneath the root; absent is fine): bound onto itself, then the
/// bind (reached by resolving again) remounted read-only.
fn readonly_path(root: &Root, p: &Path) -> Result<(), String> {
    let Some(fd) = root.resolve_if_exists(p).map_err(beneath_err)? else {
        return Ok(());
    };
    mnt_on(
        Some(&fd_path(&fd)),
        &fd,
        p,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    let top = root.resolve(p).map_err(beneath_err)?;
    mnt_on(
        None,
        &top,
        p,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
        None,
    )
}

/// Mounts a Storage from a request at its (already validated) mount point.
pub fn mount_storage(s: &protocol::agent::Storage, mount_point: &Path) -> Result<(), String> {
    let opts = parse_options(&s.options);
    let (fstype, source) = match s.driver.as_str() {
        "virtio-fs" => ("virtiofs", s.source.clone()),
        "9p" => ("9p", s.source.clone()),
        "tmpfs" => ("tmpfs", "tmpfs".to_string()),
        "blk" => (s.fstype.as_str(), s.source.clone()),
        "local" => {
            return fs::create_dir_all(mount_point)
                .map_err(|e| format!("creating {}: {e}", mount_point.display()))
        }
        other => return Err(format!("unsupported storage driver {other:?}")),
    };
    if fstype.is_empty() {
        return Err(format!("storage {:?} has no fstype", s.source));
    }
    if s.driver == "blk" && !s.source.starts_with("/dev/") {
        return Err(format!(
            "block storage source {:?} is not under /dev",
            s.source
        ));
    }
    fs::create_dir_all(mount_point)
        .map_err(|e| format!("creating {}: {e}", mount_point.display()))?;
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    mnt(
        Some(Path::new(&source)),
        mount_point,
        Some(fstype),
        opts.flags,
        data,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options() {
        let o = parse_options(&s(&[
            "nosuid",
            "noexec",
            "nodev",
            "mode=755",
            "size=65536k",
        ]));
        assert_eq!(
            o.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV
        );
        assert_eq!(o.data, "mode=755,size=65536k");
        assert!(!o.bind);

        let o = parse_options(&s(&["rbind", "ro", "rprivate"]));
        assert!(o.bind);
        assert_eq!(
            o.flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY
        );
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);

        let o = parse_options(&s(&["ro", "rw"]));
        assert_eq!(o.flags, MsFlags::empty());
        let o = parse_options(&s(&["trans=virtio", "version=9p2000.L"]));
        assert_eq!(o.data, "trans=virtio,version=9p2000.L");
    }
}
