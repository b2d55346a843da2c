//! Mounts: the container rootfs (run in the spawn helper's child, inside its new mount
//! namespace), mount option parsing, and resolving destinations safely inside a rootfs.
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd;
use oci_spec::runtime::{Mount, Spec};

/// Device nodes every container gets when its /dev is a fresh tmpfs (bound from the guest /dev).
const DEFAULT_DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
const MAX_SYMLINKS: usize = 40;

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

/// Resolves `unsafe_path` inside `root` the way the kernel would if `root` were `/`: symlinks
/// are followed relative to `root` and `..` never climbs above it. The result always lies
/// under `root` (missing trailing components are kept as they are).
pub fn secure_join(root: &Path, unsafe_path: &Path) -> Result<PathBuf, String> {
    let mut rest: VecDeque<OsString> = components(unsafe_path);
    let mut cur = PathBuf::new();
    let mut links = 0;
    while let Some(part) = rest.pop_front() {
        if part == ".." {
            cur.pop();
            continue;
        }
        let full = root.join(&cur).join(&part);
        match fs::symlink_metadata(&full) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(format!(
                        "too many symlinks resolving {} in {}",
                        unsafe_path.display(),
                        root.display()
                    ));
                }
                let target = fs::read_link(&full)
                    .map_err(|e| format!("reading symlink {}: {e}", full.display()))?;
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                let mut next = components(&target);
                next.extend(rest);
                rest = next;
            }
            _ => cur.push(part),
        }
    }
    Ok(root.join(cur))
}

fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
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

/// Builds the container's root filesystem and switches into it. Runs in the container init's
/// fresh mount namespace, before any user or capability change.
/// `cgroup` is the container's cgroup directory, shown at a cgroup mount when the spec asks
/// for no cgroup namespace.
pub fn setup_rootfs(spec: &Spec, root: &Path, cgroup: Option<&Path>) -> Result<(), String> {
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
    let propagation = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        Some("shared") | Some("rshared") => MsFlags::MS_SHARED | MsFlags::MS_REC,
        Some("slave") | Some("rslave") => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        _ => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
    };
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

    let mut dev_is_tmpfs = false;
    for m in spec.mounts().iter().flatten() {
        if m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs") {
            dev_is_tmpfs = true;
        }
        mount_one(root, m, own_cgroup)?;
    }
    setup_dev(root, spec, dev_is_tmpfs)?;
    switch_root(root)?;
    if propagation != (MsFlags::MS_PRIVATE | MsFlags::MS_REC) {
        mnt(None, Path::new("/"), None, propagation, None)?;
    }
    Ok(())
}

/// After hostname and sysctl (which write /proc/sys): masked and read-only paths, read-only
/// root.
pub fn finalize_rootfs(spec: &Spec) -> Result<(), String> {
    if let Some(l) = spec.linux().as_ref() {
        for p in l.masked_paths().iter().flatten() {
            mask_path(Path::new(p))?;
        }
        for p in l.readonly_paths().iter().flatten() {
            readonly_path(Path::new(p))?;
        }
    }
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
    Ok(())
}

fn mount_one(root: &Path, m: &Mount, own_cgroup: Option<&Path>) -> Result<(), String> {
    let dest = m.destination();
    if !dest.is_absolute() {
        return Err(format!(
            "mount destination {} is not absolute",
            dest.display()
        ));
    }
    let target = secure_join(root, dest)?;
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    let mut fstype = m.typ().clone().unwrap_or_default();
    let is_bind = opts.bind || fstype == "bind";
    let src = m.source().as_deref();

    if is_bind {
        let src = src.ok_or_else(|| format!("bind mount on {} has no source", dest.display()))?;
        let md =
            fs::metadata(src).map_err(|e| format!("bind mount source {}: {e}", src.display()))?;
        create_target(&target, md.is_dir())?;
        bind(src, &target, &opts)?;
    } else if let (true, Some(cg)) = (fstype == "cgroup" || fstype == "cgroup2", own_cgroup) {
        // Without a cgroup namespace a fresh cgroup2 mount would show the whole guest
        // hierarchy: show the container its own cgroup (its limits) instead, like runc.
        create_target(&target, true)?;
        bind(cg, &target, &opts)?;
    } else {
        if fstype == "cgroup" {
            fstype = "cgroup2".into();
        }
        if fstype.is_empty() {
            return Err(format!("mount on {} has no type", dest.display()));
        }
        create_target(&target, true)?;
        let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
        let src = src
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(&fstype));
        match mnt(Some(&src), &target, Some(&fstype), opts.flags, data) {
            Ok(()) => {}
            // A minimal guest kernel may lack POSIX message queues: skip rather than fail.
            Err(_) if fstype == "mqueue" => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    if !opts.propagation.is_empty() {
        mnt(None, &target, None, opts.propagation, None)?;
    }
    Ok(())
}

/// Bind mount; flags other than bind/rec (ro, nosuid, ...) need a remount of the bind.
fn bind(src: &Path, target: &Path, opts: &MountOptions) -> Result<(), String> {
    let base = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
    mnt(Some(src), target, None, base, None)?;
    let extra = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
    if !extra.is_empty() {
        mnt(
            None,
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
            None,
        )?;
    }
    Ok(())
}

fn create_target(target: &Path, dir: bool) -> Result<(), String> {
    if dir {
        fs::create_dir_all(target).map_err(|e| format!("creating {}: {e}", target.display()))
    } else {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        if !target.exists() {
            fs::File::create(target).map_err(|e| format!("creating {}: {e}", target.display()))?;
        }
        Ok(())
    }
}

fn setup_dev(root: &Path, spec: &Spec, dev_is_tmpfs: bool) -> Result<(), String> {
    let dev = root.join("dev");
    if !dev.is_dir() {
        return Ok(());
    }
    if dev_is_tmpfs {
        for name in DEFAULT_DEVICES {
            let target = dev.join(name);
            create_target(&target, false)?;
            mnt(
                Some(&Path::new("/dev").join(name)),
                &target,
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
            let p = dev.join(link);
            if fs::symlink_metadata(&p).is_err() {
                symlink(to, &p).map_err(|e| format!("creating {}: {e}", p.display()))?;
            }
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
    }
    Ok(())
}

fn make_device(root: &Path, d: &oci_spec::runtime::LinuxDevice) -> Result<(), String> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    use oci_spec::runtime::LinuxDeviceType;
    let target = secure_join(root, d.path())?;
    if target.exists() {
        return Ok(());
    }
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => return Err(format!("device {} has type 'a'", d.path().display())),
    };
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    let mode = Mode::from_bits_truncate(d.file_mode().unwrap_or(0o666));
    mknod(
        &target,
        kind,
        mode,
        makedev(d.major() as u64, d.minor() as u64),
    )
    .map_err(|e| format!("mknod {}: {e}", target.display()))?;
    unistd::chown(
        &target,
        d.uid().map(unistd::Uid::from_raw),
        d.gid().map(unistd::Gid::from_raw),
    )
    .map_err(|e| format!("chown {}: {e}", target.display()))
}

/// pivot_root into `root`; when the current root is the initramfs (pivot_root refuses
/// it with EINVAL), move the rootfs over / and chroot instead.
fn switch_root(root: &Path) -> Result<(), String> {
    unistd::chdir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
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
            unistd::chroot(".").map_err(|e| format!("chroot {}: {e}", root.display()))?;
        }
        Err(e) => return Err(format!("pivot_root {}: {e}", root.display())),
    }
    unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))
}

fn mask_path(p: &Path) -> Result<(), String> {
    match fs::metadata(p) {
        Err(_) => Ok(()),
        Ok(md) if md.is_dir() => mnt(
            Some(Path::new("tmpfs")),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None,
        ),
        Ok(_) => mnt(
            Some(Path::new("/dev/null")),
            p,
            None,
            MsFlags::MS_BIND,
            None,
        ),
    }
}

fn readonly_path(p: &Path) -> Result<(), String> {
    if !p.exists() {
        return Ok(());
    }
    mnt(Some(p), p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
    mnt(
        None,
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

    #[test]
    fn secure_join_stays_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../../..", root.join("a/b/up")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/a/b")).unwrap(),
            root.join("a/b")
        );
        assert_eq!(
            secure_join(root, Path::new("/../../etc/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            secure_join(root, Path::new("/abs/shadow")).unwrap(),
            root.join("etc/shadow")
        );
        assert_eq!(
            secure_join(root, Path::new("/a/b/up/x")).unwrap(),
            root.join("x")
        );
        assert!(secure_join(root, Path::new("/loop/x")).is_err());
        assert_eq!(
            secure_join(root, Path::new("/new/dir")).unwrap(),
            root.join("new/dir")
        );
    }
}
