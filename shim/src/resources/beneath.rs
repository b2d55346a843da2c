//! Host file operations under a directory the guest may write: beneath a verified fd, no symlink.
//!
//! A [`Dir`] is an open directory reached without following a symlink (`openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`); everything below it is named relative to its fd:
//! creating (`mkdirat`, `O_CREAT|O_EXCL`), removing (`unlinkat`), unmounting (through the fd,
//! with `UMOUNT_NOFOLLOW`). A [`Node`] is what a mount goes onto: an `O_PATH` fd that was
//! verified once, handed to the kernel as the fd itself (`move_mount`) or as its
//! `/proc/self/fd/N` link (`mount(2)`), so the kernel never walks a path the guest can change.
//! Binds are made with the mount API (`open_tree`, `mount_setattr`, `move_mount`): a bind gets
//! its flags (read-only, nosuid, nodev; recursively for an rbind) while still detached, so every
//! copy that propagation makes of it (the guest's view) carries them too. That needs Linux 5.12
//! (`mount_setattr`); an older host kernel gets an error saying so, never a weaker mount.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

/// How deep [`Dir::remove_tree`] descends before it refuses (the shim's own trees are shallow).
const MAX_TREE_DEPTH: usize = 32;
/// How many stacked mounts [`Dir::unmount_all`] takes off one name before it gives up.
const MAX_STACKED_MOUNTS: usize = 64;
/// How often an `openat2` that the kernel asks to retry (EAGAIN: a rename raced it) is retried.
const OPENAT2_RETRIES: usize = 8;
/// The host kernel this module needs, named in the error an older one gets.
const NEEDED_KERNEL: &str = "Linux 5.12 (openat2, open_tree, move_mount, mount_setattr)";

/// What an entry is, seen without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// A socket, FIFO or device node.
    Special,
}

impl Kind {
    fn of(st: &FileStat) -> Kind {
        match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFLNK => Kind::Symlink,
            _ => Kind::Special,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Dir => "a directory",
            Kind::File => "a file",
            Kind::Symlink => "a symlink",
            Kind::Special => "a special file",
        })
    }
}

/// An open file or directory (an `O_PATH` fd, or a directory's), reached without following a
/// symlink (or, for [`Node::open_source`], by a trusted path); `path` only names it in messages.
#[derive(Debug)]
pub struct Node {
    fd: OwnedFd,
    path: PathBuf,
    kind: Kind,
}

impl Node {
    fn new(fd: OwnedFd, path: PathBuf) -> io::Result<Node> {
        let st = nix::sys::stat::fstat(fd.as_raw_fd())
            .map_err(|e| os_err(e, format!("stat {}", path.display())))?;
        Ok(Node {
            kind: Kind::of(&st),
            fd,
            path,
        })
    }

    /// Opens a path that is not under a directory the guest can write (a bind source named by
    /// the spec, a bundle's rootfs): resolved as usual, opened once, so what is checked is
    /// what is mounted.
    pub fn open_source(path: &Path) -> io::Result<Node> {
        let fd = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| os_err(e, format!("opening {}", path.display())))?;
        // SAFETY: open returned a new descriptor that nothing else owns.
        Node::new(unsafe { OwnedFd::from_raw_fd(fd) }, path.to_path_buf())
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fd's `/proc/self/fd/N` link: a path the kernel resolves to this very file.
    fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// An open directory reached without following a symlink; every operation below it is relative
/// to its fd and resolves beneath it.
#[derive(Debug)]
pub struct Dir(Node);

impl Dir {
    /// Opens a directory the host owns (the run root, a sandbox's dir, a bundle: its path is
    /// the host's, not the guest's). Its last component is still not followed if a symlink.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(path, flags, Mode::empty()).map_err(|e| {
            let link = nix::sys::stat::lstat(path).map(|st| Kind::of(&st) == Kind::Symlink);
            match (e, link) {
                (Errno::ELOOP | Errno::ENOTDIR, Ok(true)) => not_followed(path, e),
                (e, _) => os_err(e, format!("opening {}", path.display())),
            }
        })?;
        // SAFETY: open returned a new descriptor that nothing else owns.
        let node = Node::new(unsafe { OwnedFd::from_raw_fd(fd) }, path.to_path_buf())?;
        Ok(Dir(node))
    }

    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// This directory as a mount target.
    pub fn node(&self) -> &Node {
        &self.0
    }

    pub fn into_node(self) -> Node {
        self.0
    }

    fn raw(&self) -> RawFd {
        self.0.fd.as_raw_fd()
    }

    /// `openat2(self, rel, flags)` beneath this directory, never through a symlink.
    fn resolve(&self, rel: &Path, flags: OFlag, extra: ResolveFlag) -> Result<OwnedFd, Errno> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | extra);
        let mut tries = 0;
        loop {
            match nix::fcntl::openat2(self.raw(), rel, how) {
                // SAFETY: openat2 returned a new descriptor that nothing else owns.
                Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
                Err(Errno::EAGAIN) if tries < OPENAT2_RETRIES => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Why `rel` could not be resolved beneath this directory, naming the path and the cause.
    fn explain(&self, rel: &Path, e: Errno) -> io::Error {
        let full = self.path().join(rel);
        match e {
            Errno::ELOOP | Errno::ENOTDIR => {
                // Name the first component that is a symlink (lstat, prefix by prefix: the ones
                // before it were just seen not to be symlinks).
                let mut prefix = PathBuf::new();
                for c in rel.components() {
                    prefix.push(c);
                    match self.lstat(&prefix) {
                        Ok(st) if Kind::of(&st) == Kind::Symlink => {
                            return not_followed(&self.path().join(&prefix), e)
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                os_err(e, format!("resolving {}", full.display()))
            }
            Errno::EXDEV => io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} leads outside {}: refusing to resolve it",
                    full.display(),
                    self.path().display()
                ),
            ),
            Errno::ENOSYS => kernel_too_old("openat2", &full),
            e => os_err(e, format!("resolving {}", full.display())),
        }
    }

    fn lstat(&self, rel: &Path) -> Result<FileStat, Errno> {
        nix::sys::stat::fstatat(
            Some(self.raw()),
            rel,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
    }

    /// Opens directory `rel` beneath this one.
    pub fn open_dir(&self, rel: &Path) -> io::Result<Dir> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
        let fd = self
            .resolve(rel, flags, ResolveFlag::empty())
            .map_err(|e| self.explain(rel, e))?;
        Ok(Dir(Node::new(fd, self.path().join(rel))?))
    }

    /// Opens `rel` beneath this directory as an `O_PATH` node of any kind but a symlink.
    pub fn open_node(&self, rel: &Path) -> io::Result<Node> {
        let full = self.path().join(rel);
        let fd = self
            .resolve(rel, OFlag::O_PATH | OFlag::O_NOFOLLOW, ResolveFlag::empty())
            .map_err(|e| self.explain(rel, e))?;
        let node = Node::new(fd, full)?;
        if node.kind == Kind::Symlink {
            return Err(not_followed(&node.path, Errno::ELOOP));
        }
        Ok(node)
    }

    /// What `name` (one entry of this directory) is, without following it; `None` if absent.
    pub fn kind(&self, name: impl AsRef<OsStr>) -> io::Result<Option<Kind>> {
        let name = name.as_ref();
        check_name(self, name)?;
        match self.lstat(Path::new(name)) {
            Ok(st) => Ok(Some(Kind::of(&st))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(os_err(
                e,
                format!("stat {}", self.path().join(name).display()),
            )),
        }
    }

    /// Creates directory `name`; it must not exist as a directory yet ("already exists").
    /// Anything else found there is removed first (see [`Dir::ensure_dir`]).
    pub fn create_dir(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<Dir> {
        let name = name.as_ref();
        self.make_dir(name, mode, false)
    }

    /// Directory `name`, created if absent. A symlink or other non-directory there is not the
    /// host's (something planted it): it is removed, never followed, with a warning.
    pub fn ensure_dir(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<Dir> {
        let name = name.as_ref();
        self.make_dir(name, mode, true)
    }

    fn make_dir(&self, name: &OsStr, mode: u32, reuse: bool) -> io::Result<Dir> {
        let full = self.path().join(name);
        match self.kind(name)? {
            Some(Kind::Dir) if reuse => return self.open_dir(Path::new(name)),
            Some(Kind::Dir) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} already exists", full.display()),
                ))
            }
            Some(k) => self.remove_stale(name, k, "a directory")?,
            None => {}
        }
        nix::sys::stat::mkdirat(Some(self.raw()), name, Mode::from_bits_truncate(mode))
            .map_err(|e| os_err(e, format!("creating directory {}", full.display())))?;
        self.open_dir(Path::new(name))
    }

    /// Regular file `name`, created empty if absent (a mount target for a file bind). A
    /// symlink, special file or empty directory there is removed first, with a warning.
    pub fn ensure_file(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<Node> {
        let name = name.as_ref();
        let full = self.path().join(name);
        match self.kind(name)? {
            Some(Kind::File) => {}
            found => {
                if let Some(k) = found {
                    self.remove_stale(name, k, "a file")?;
                }
                let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW;
                let how = OpenHow::new()
                    .flags(flags | OFlag::O_CLOEXEC)
                    .mode(Mode::from_bits_truncate(mode))
                    .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
                let fd = nix::fcntl::openat2(self.raw(), name, how)
                    .map_err(|e| os_err(e, format!("creating file {}", full.display())))?;
                // SAFETY: openat2 returned a new descriptor that nothing else owns; closed here.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        let node = self.open_node(Path::new(name))?;
        if node.kind != Kind::File {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is {}, not a file", full.display(), node.kind),
            ));
        }
        Ok(node)
    }

    /// Removes what is at `name` where the host is about to create `wanted`: never followed,
    /// a directory only if empty.
    fn remove_stale(&self, name: &OsStr, found: Kind, wanted: &str) -> io::Result<()> {
        let full = self.path().join(name);
        tracing::warn!(
            path = %full.display(),
            "{found} is where the host creates {wanted} (planted by the guest?): removing it, not following it"
        );
        let flag = if found == Kind::Dir {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        nix::unistd::unlinkat(Some(self.raw()), name, flag)
            .map_err(|e| os_err(e, format!("removing {found} at {}", full.display())))
    }

    /// Removes entry `name` (a file, symlink or empty directory; never followed, never
    /// recursive: a directory still mounted on is refused by the kernel). Absent is fine.
    pub fn remove(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let name = name.as_ref();
        let flag = match self.kind(name)? {
            None => return Ok(()),
            Some(Kind::Dir) => UnlinkatFlags::RemoveDir,
            Some(_) => UnlinkatFlags::NoRemoveDir,
        };
        match nix::unistd::unlinkat(Some(self.raw()), name, flag) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(os_err(
                e,
                format!("removing {}", self.path().join(name).display()),
            )),
        }
    }

    /// Removes `name` and everything under it, never following a symlink (a symlink is removed
    /// itself) and never crossing into a mount: a mount point anywhere in the tree stops the
    /// removal with an error, before anything inside that mount is touched. Absent is fine.
    pub fn remove_tree(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let name = name.as_ref();
        self.remove_tree_at(name, 0)
    }

    fn remove_tree_at(&self, name: &OsStr, depth: usize) -> io::Result<()> {
        if self.kind(name)? != Some(Kind::Dir) {
            return self.remove(name);
        }
        let full = self.path().join(name);
        if depth >= MAX_TREE_DEPTH {
            return Err(io::Error::other(format!(
                "{} is nested deeper than {MAX_TREE_DEPTH} directories: refusing to remove it",
                full.display()
            )));
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
        let fd = match self.resolve(Path::new(name), flags, ResolveFlag::RESOLVE_NO_XDEV) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EXDEV) => {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "{} is a mount point (still mounted): refusing to remove what is there",
                        full.display()
                    ),
                ))
            }
            Err(e) => return Err(self.explain(Path::new(name), e)),
        };
        let child = Dir(Node::new(fd, full.clone())?);
        for entry in child.entries()? {
            child.remove_tree_at(&entry, depth + 1)?;
        }
        self.remove(name)
    }

    /// The names in this directory (without `.` and `..`).
    fn entries(&self) -> io::Result<Vec<OsString>> {
        let err = |e| os_err(e, format!("listing {}", self.path().display()));
        let dup = nix::unistd::dup(self.raw()).map_err(err)?;
        let mut d = nix::dir::Dir::from_fd(dup).map_err(err)?;
        let mut names = Vec::new();
        for e in d.iter() {
            let e = e.map_err(err)?;
            let name = e.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_os_string());
            }
        }
        Ok(names)
    }

    /// umount2 of the top mount at `name` (an entry of this directory): true if one was
    /// unmounted, false if nothing is mounted there. The kernel walks from this directory's fd
    /// and does not follow `name` if it is a symlink (`UMOUNT_NOFOLLOW`).
    pub fn unmount(&self, name: impl AsRef<OsStr>, flags: MntFlags) -> io::Result<bool> {
        let name = name.as_ref();
        check_name(self, name)?;
        let at = self.0.proc_path().join(name);
        match nix::mount::umount2(&at, flags | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => Ok(true),
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(os_err(
                e,
                format!("unmounting {}", self.path().join(name).display()),
            )),
        }
    }

    /// Takes every mount stacked at `name` off (detaching a busy one); "not mounted" is success.
    pub fn unmount_all(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let name = name.as_ref();
        for _ in 0..MAX_STACKED_MOUNTS {
            if !self.unmount(name, MntFlags::MNT_DETACH)? {
                return Ok(());
            }
        }
        Err(io::Error::other(format!(
            "{} still mounted after {MAX_STACKED_MOUNTS} unmounts",
            self.path().join(name).display()
        )))
    }
}

/// `name` must be one entry: no `/`, not empty, `.` or `..`.
fn check_name(dir: &Dir, name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a single name in {}", dir.path().display()),
        ));
    }
    Ok(())
}

fn os_err(e: Errno, what: String) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

fn not_followed(path: &Path, e: Errno) -> io::Error {
    io::Error::new(
        io::Error::from(e).kind(),
        format!("{} is a symlink: refusing to follow it", path.display()),
    )
}

fn kernel_too_old(syscall: &str, path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "{}: the host kernel has no {syscall}; {NEEDED_KERNEL} is needed to keep the guest's paths and mounts from reaching the host",
            path.display()
        ),
    )
}

/// The `MOUNT_ATTR_*` bits for mount(2) flags (read-only, nosuid, nodev, noexec).
pub fn mount_attrs(flags: MsFlags) -> u64 {
    [
        (MsFlags::MS_RDONLY, libc::MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NOSUID, libc::MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, libc::MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, libc::MOUNT_ATTR_NOEXEC),
    ]
    .into_iter()
    .filter(|(f, _)| flags.contains(*f))
    .fold(0, |acc, (_, a)| acc | a)
}

/// Mounts a filesystem (not a bind: `source` is a device or a name like `overlay`) onto
/// `target` through its fd's `/proc/self/fd/N` link.
pub fn mount_fs(
    source: &str,
    target: &Node,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> io::Result<()> {
    let fs = (!fstype.is_empty()).then_some(fstype);
    nix::mount::mount(Some(source), &target.proc_path(), fs, flags, data).map_err(|e| {
        os_err(
            e,
            format!(
                "mounting {source} ({fstype:?}) on {}",
                target.path.display()
            ),
        )
    })
}

/// Binds `source` onto `target` with `attrs` (`MOUNT_ATTR_*`) set on the new mount, and on
/// every submount of it when `recursive` (an rbind): a clone of the source's mount tree is
/// made detached (`open_tree`), given its flags (`mount_setattr`), then attached through the
/// target's fd (`move_mount`). Flags set after attaching would not reach the copies
/// propagation already made (the export, virtiofsd's view).
pub fn bind(source: &Node, target: &Node, recursive: bool, attrs: u64) -> io::Result<()> {
    let what = || {
        format!(
            "binding {} on {}",
            source.path.display(),
            target.path.display()
        )
    };
    let rec = if recursive { libc::AT_RECURSIVE } else { 0 };
    let empty = c"";
    let tree_flags = libc::OPEN_TREE_CLONE
        | libc::OPEN_TREE_CLOEXEC
        | (libc::AT_EMPTY_PATH | rec) as libc::c_uint;
    // SAFETY: open_tree reads a NUL-terminated path and returns a new fd or -1.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            source.fd.as_raw_fd(),
            empty.as_ptr(),
            tree_flags,
        )
    };
    let tree = syscall_result(tree, "open_tree", &source.path).map_err(|e| context(e, what()))?;
    // SAFETY: open_tree returned a new descriptor that nothing else owns; dropping it before
    // move_mount dissolves the detached tree.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as RawFd) };
    set_attrs(&tree, recursive, attrs, 0, &target.path).map_err(|e| context(e, what()))?;
    let flags = libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH;
    // SAFETY: move_mount reads two NUL-terminated paths; both fds are open.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            target.fd.as_raw_fd(),
            empty.as_ptr(),
            flags,
        )
    };
    syscall_result(r, "move_mount", &target.path)
        .map(drop)
        .map_err(|e| context(e, what()))
}

/// Sets `attrs` (`MOUNT_ATTR_*`) and, if not 0, `propagation` (`MS_SHARED`, `MS_SLAVE`...)
/// on the mount `fd` is the root of, and on all its submounts when `recursive`.
pub fn set_mount_attrs(
    target: &Node,
    recursive: bool,
    attrs: u64,
    propagation: MsFlags,
) -> io::Result<()> {
    set_attrs(
        &target.fd,
        recursive,
        attrs,
        propagation.bits(),
        &target.path,
    )
}

fn set_attrs(
    fd: &OwnedFd,
    recursive: bool,
    attrs: u64,
    propagation: u64,
    path: &Path,
) -> io::Result<()> {
    let rec = if recursive { libc::AT_RECURSIVE } else { 0 };
    let attr = libc::mount_attr {
        attr_set: attrs,
        attr_clr: 0,
        propagation,
        userns_fd: 0,
    };
    let empty = c"";
    // SAFETY: mount_setattr reads a NUL-terminated path and `size` bytes of `attr`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            (libc::AT_EMPTY_PATH | rec) as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    syscall_result(r, "mount_setattr", path).map(drop)
}

/// Whether the host kernel has every syscall this module needs; `Err` names the first
/// missing one and the kernel needed (for `kata-ctl check`, before any sandbox fails on it).
/// Each is called with arguments it refuses (a bad fd, no flags): only ENOSYS means missing.
pub fn host_kernel_support() -> Result<(), String> {
    let probes: [(&str, libc::c_long); 4] = [
        ("openat2", libc::SYS_openat2),
        ("open_tree", libc::SYS_open_tree),
        ("move_mount", libc::SYS_move_mount),
        ("mount_setattr", libc::SYS_mount_setattr),
    ];
    for (name, nr) in probes {
        // SAFETY: every pointer argument is null and the fd is invalid: the kernel fails the
        // call (EBADF, EFAULT or EINVAL) before touching anything, or says ENOSYS.
        let r = unsafe { libc::syscall(nr, -1, std::ptr::null::<libc::c_char>(), 0, 0, 0) };
        if r < 0 && Errno::last() == Errno::ENOSYS {
            return Err(format!(
                "the host kernel has no {name}: {NEEDED_KERNEL} is needed"
            ));
        }
    }
    Ok(())
}

/// A raw syscall's result, or an error naming it (and the kernel it needs, for ENOSYS).
fn syscall_result(r: libc::c_long, syscall: &str, path: &Path) -> io::Result<libc::c_long> {
    if r >= 0 {
        return Ok(r);
    }
    let e = Errno::last();
    Err(if e == Errno::ENOSYS {
        kernel_too_old(syscall, path)
    } else {
        os_err(e, syscall.to_string())
    })
}

/// `e` prefixed with what was being done.
fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A base directory holding `a/b/c` and `a/file`, and a canary directory outside it.
    struct Tree {
        _tmp: tempfile::TempDir,
        base: Dir,
        canary: PathBuf,
    }

    fn tree() -> Tree {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("base");
        std::fs::create_dir_all(root.join("a/b/c")).expect("dirs");
        std::fs::write(root.join("a/file"), "x").expect("file");
        let canary = tmp.path().join("canary");
        std::fs::create_dir(&canary).expect("canary");
        std::fs::write(canary.join("keep"), "canary").expect("canary file");
        let base = Dir::open(&root).expect("open base");
        Tree {
            _tmp: tmp,
            base,
            canary,
        }
    }

    impl Tree {
        fn path(&self, rel: &str) -> PathBuf {
            self.base.path().join(rel)
        }

        /// The canary is as it was: one file, unchanged.
        fn assert_canary_untouched(&self) {
            let names: Vec<_> = std::fs::read_dir(&self.canary)
                .expect("read canary")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert_eq!(names, ["keep"], "the canary directory changed");
            let keep = std::fs::read_to_string(self.canary.join("keep")).expect("keep");
            assert_eq!(keep, "canary");
        }
    }

    /// Unmounts (detached, with what is under it) when dropped, so a failing test leaves no
    /// mount behind.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }

    fn tmpfs(at: &Path) -> Mounted {
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("tmpfs on {}: {e}", at.display()));
        Mounted(at.to_path_buf())
    }

    fn err_text<T: std::fmt::Debug>(r: io::Result<T>) -> String {
        r.expect_err("must be refused").to_string()
    }

    #[test]
    fn this_host_kernel_has_the_syscalls() {
        host_kernel_support().expect("the build hosts run Linux 6.x");
    }

    #[test]
    fn a_good_path_resolves() {
        let t = tree();
        let c = t.base.open_dir(Path::new("a/b/c")).expect("a/b/c");
        assert_eq!(c.path(), t.path("a/b/c"));
        let f = t.base.open_node(Path::new("a/file")).expect("a/file");
        assert_eq!(f.kind(), Kind::File);
        // `..` that stays beneath is fine.
        t.base.open_dir(Path::new("a/b/../b")).expect("a/b/../b");
    }

    #[test]
    fn a_symlink_at_the_last_component_is_refused() {
        let t = tree();
        symlink("b", t.path("a/last")).expect("symlink");
        let e = err_text(t.base.open_dir(Path::new("a/last")));
        let want = format!(
            "{} is a symlink: refusing to follow it",
            t.path("a/last").display()
        );
        assert!(e.contains(&want), "{e}");
        let e = err_text(t.base.open_node(Path::new("a/last")));
        assert!(e.contains(&want), "{e}");
    }

    #[test]
    fn a_symlink_in_the_middle_is_refused() {
        let t = tree();
        // Relative and inside the base: still not followed.
        symlink("b", t.path("a/mid")).expect("symlink");
        let e = err_text(t.base.open_node(Path::new("a/mid/c")));
        let want = format!(
            "{} is a symlink: refusing to follow it",
            t.path("a/mid").display()
        );
        assert!(e.contains(&want), "{e}");
    }

    #[test]
    fn dotdot_cannot_escape() {
        let t = tree();
        let e = err_text(t.base.open_dir(Path::new("a/../..")));
        assert!(e.contains("leads outside"), "{e}");
        let e = err_text(t.base.open_node(Path::new("../canary/keep")));
        assert!(e.contains("leads outside"), "{e}");
        let e = err_text(t.base.open_node(&t.canary.join("keep")));
        assert!(e.contains("leads outside"), "an absolute path: {e}");
    }

    #[test]
    fn an_absolute_symlink_is_refused() {
        let t = tree();
        symlink(&t.canary, t.path("a/abs")).expect("symlink");
        let e = err_text(t.base.open_node(Path::new("a/abs/keep")));
        assert!(e.contains("a/abs is a symlink"), "{e}");
        let e = err_text(t.base.open_dir(Path::new("a/abs")));
        assert!(e.contains("a/abs is a symlink"), "{e}");
    }

    #[test]
    fn the_base_itself_is_not_followed() {
        let t = tree();
        let link = t.path("a/to-canary");
        symlink(&t.canary, &link).expect("symlink");
        let e = err_text(Dir::open(&link));
        assert!(e.contains("is a symlink: refusing to follow it"), "{e}");
    }

    #[test]
    fn planted_entries_are_removed_not_followed() {
        let t = tree();
        for name in ["c2", "c2-mounts", "0-file"] {
            symlink(&t.canary, t.path(name)).expect("symlink");
        }
        nix::unistd::mkfifo(&t.path("1-fifo"), Mode::from_bits_truncate(0o600)).expect("fifo");
        let c2 = t
            .base
            .create_dir("c2", 0o755)
            .expect("a planted c2 is replaced");
        assert!(c2.entries().expect("list").is_empty(), "a new, empty dir");
        let mounts = t.base.ensure_dir("c2-mounts", 0o755).expect("c2-mounts");
        drop(mounts);
        let f = t.base.ensure_file("0-file", 0o644).expect("0-file");
        assert_eq!(f.kind(), Kind::File);
        let f = t.base.ensure_file("1-fifo", 0o644).expect("1-fifo");
        assert_eq!(f.kind(), Kind::File);
        for name in ["c2", "c2-mounts"] {
            let m = std::fs::symlink_metadata(t.path(name)).expect("stat");
            assert!(m.is_dir(), "{name} is a real directory now");
        }
        t.assert_canary_untouched();
        // A real directory where a container's goes is that container: not replaced.
        let e = t.base.create_dir("c2", 0o755).expect_err("exists");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        // Reused when it is the host's own directory.
        t.base.ensure_dir("c2-mounts", 0o755).expect("reused");
        // Names are single entries.
        let e = err_text(t.base.ensure_dir("a/b", 0o755));
        assert!(e.contains("not a single name"), "{e}");
        let e = err_text(t.base.ensure_file("..", 0o644));
        assert!(e.contains("not a single name"), "{e}");
    }

    #[test]
    fn removal_follows_no_symlink_and_stops_at_a_mount() {
        let t = tree();
        std::fs::create_dir_all(t.path("vm/x/y")).expect("dirs");
        std::fs::write(t.path("vm/x/y/f"), "f").expect("file");
        symlink(&t.canary, t.path("vm/link")).expect("symlink");
        symlink(&t.canary, t.path("vm/x/link")).expect("symlink");
        std::fs::create_dir(t.path("vm/m")).expect("mount point");
        let m = tmpfs(&t.path("vm/m"));
        std::fs::write(t.path("vm/m/inside"), "kept").expect("write in tmpfs");
        let e = err_text(t.base.remove_tree("vm"));
        assert!(e.contains("vm/m is a mount point"), "{e}");
        assert_eq!(
            std::fs::read_to_string(t.path("vm/m/inside")).expect("still there"),
            "kept",
            "nothing inside a mount is removed"
        );
        drop(m);
        t.base.remove_tree("vm").expect("removed once unmounted");
        assert!(!t.path("vm").exists());
        t.assert_canary_untouched();
        t.base.remove_tree("vm").expect("absent is fine");
    }

    #[test]
    fn unmount_does_not_follow_a_symlink() {
        let t = tree();
        let real = t.path("a/real");
        std::fs::create_dir(&real).expect("dir");
        let m = tmpfs(&real);
        std::fs::write(real.join("inside"), "x").expect("write in tmpfs");
        symlink("real", t.path("a/link")).expect("symlink");
        let a = t.base.open_dir(Path::new("a")).expect("a");
        a.unmount_all("link").expect("a symlink is not mounted");
        assert!(
            real.join("inside").exists(),
            "the mount behind the symlink stays"
        );
        a.unmount_all("real").expect("unmount");
        assert!(!real.join("inside").exists(), "unmounted");
        drop(m);
    }

    /// Needs root. An rbind made read-only is read-only in every submount it carries, and
    /// nosuid, nodev.
    #[test]
    fn a_read_only_rbind_is_read_only_all_the_way_down() {
        let t = tree();
        let src = t.path("src");
        std::fs::create_dir_all(src.join("nested")).expect("dirs");
        let nested = tmpfs(&src.join("nested"));
        std::fs::create_dir(t.path("target")).expect("target");
        let source = Node::open_source(&src).expect("source");
        let target = t.base.open_dir(Path::new("target")).expect("target");
        let attrs = mount_attrs(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
        bind(&source, target.node(), true, attrs).expect("bind");
        let bound = Mounted(t.path("target"));
        let top = std::fs::write(t.path("target/top"), "x");
        let deep = std::fs::write(t.path("target/nested/deep"), "x");
        let flags = nix::sys::statvfs::statvfs(&t.path("target/nested")).expect("statvfs");
        drop(bound);
        std::fs::write(src.join("nested/writable"), "x").expect("the source stays writable");
        drop(nested);
        assert_eq!(
            top.expect_err("read-only").raw_os_error(),
            Some(libc::EROFS)
        );
        assert_eq!(
            deep.expect_err("a submount is read-only too")
                .raw_os_error(),
            Some(libc::EROFS)
        );
        use nix::sys::statvfs::FsFlags;
        assert!(
            flags
                .flags()
                .contains(FsFlags::ST_NOSUID | FsFlags::ST_NODEV),
            "{:?}",
            flags.flags()
        );
    }
}
