//! Paths under a container root, resolved beneath it by the kernel (openat2 RESOLVE_IN_ROOT).
//!
//! The one place the agent walks a path an image or a container controls. Every lookup is
//! `openat2` from an fd of the root with `RESOLVE_IN_ROOT` (symlinks, absolute
//! ones included, and `..` are resolved as if the root were `/`) and `RESOLVE_NO_MAGICLINKS`
//! (a `/proc/<pid>/root` or `/proc/self/fd/N` on the way is refused, never followed). Missing
//! components are created one at a time under the fd of their parent, each reopened without
//! following anything, so no step re-walks a path string. Callers mount onto the result
//! through [`fd_path`] (`/proc/self/fd/N`), so mount(2) does not walk the path again either.
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use thiserror::Error;

/// Symlinks the agent expands itself while creating a path (the kernel's own limit, 40,
/// applies within each lookup).
const MAX_SYMLINKS: usize = 40;
/// openat2 returns EAGAIN when a rename or mount raced a `..`; it is retried this often.
const EAGAIN_RETRIES: usize = 16;
/// Mode of the directories created for mount points and device parents.
const DIR_MODE: u32 = 0o755;
/// Mode of the empty files created as mount points for file binds.
const FILE_MODE: u32 = 0o644;

/// A path under a container root that cannot be resolved or created beneath it.
#[derive(Debug, Error)]
#[error("{op} {path} in the container root {root}: {why}")]
pub struct BeneathError {
    op: &'static str,
    /// The path as the spec or the image gave it.
    path: PathBuf,
    root: PathBuf,
    why: String,
}

/// What went wrong, in words that name the likely cause.
fn why(e: Errno) -> String {
    match e {
        Errno::ELOOP => "too many symlinks, or a /proc magic link on the way, which is never \
                         followed (ELOOP)"
            .into(),
        Errno::EXDEV => "the path leaves the root (EXDEV)".into(),
        Errno::ENOTDIR => "a component is not a directory (ENOTDIR)".into(),
        Errno::ENOENT => "no such file or directory (ENOENT)".into(),
        e => e.to_string(),
    }
}

/// A container root, held open: every path below is resolved from this fd.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// The `/proc/self/fd/N` name of an fd, for syscalls that take only a path (mount(2)).
pub fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn open_how(flags: OFlag, resolve: ResolveFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(resolve)
}

/// Resolution of a path below the root: IN_ROOT, no magic links.
fn in_root() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

/// One name directly under a directory fd: nothing followed at all.
fn exactly_beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS
}

fn openat2_fd<P: ?Sized + nix::NixPath>(
    dir: BorrowedFd<'_>,
    path: &P,
    how: OpenHow,
) -> Result<OwnedFd, Errno> {
    let mut tries = 0;
    loop {
        match openat2(dir.as_raw_fd(), path, how) {
            // SAFETY: openat2 returned a fresh fd that nothing else owns.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(Errno::EAGAIN) if tries < EAGAIN_RETRIES => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// The components of a path that matter beneath a root: names and `..` (`/` and `.` add
/// nothing: every path is taken from the root).
fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

fn join(parts: &[OsString]) -> PathBuf {
    let mut p = PathBuf::new();
    for part in parts {
        p.push(part);
    }
    p
}

fn is_type(fd: &OwnedFd, kind: SFlag) -> Result<bool, Errno> {
    let st = fstat(fd.as_raw_fd())?;
    Ok(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == kind)
}

/// What the last component of a created path is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    Dir,
    File,
}

impl Root {
    /// Opens a container root (a directory the agent trusts: the rootfs it was given, or `/`
    /// inside the container's mount namespace).
    pub fn open(path: &Path) -> Result<Root, BeneathError> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| BeneathError {
            op: "opening",
            path: path.to_path_buf(),
            root: path.to_path_buf(),
            why: why(e),
        })?;
        Ok(Root {
            // SAFETY: open returned a fresh fd that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn err(&self, op: &'static str, path: &Path, e: Errno) -> BeneathError {
        BeneathError {
            op,
            path: path.to_path_buf(),
            root: self.path.clone(),
            why: why(e),
        }
    }

    fn fail(&self, op: &'static str, path: &Path, why: String) -> BeneathError {
        BeneathError {
            op,
            path: path.to_path_buf(),
            root: self.path.clone(),
            why,
        }
    }

    fn lookup(&self, path: &Path) -> Result<OwnedFd, Errno> {
        openat2_fd(self.fd(), path, open_how(OFlag::O_PATH, in_root()))
    }

    /// An O_PATH fd of an existing path beneath the root (a symlink at the end is followed,
    /// beneath the root too).
    pub fn resolve(&self, path: &Path) -> Result<OwnedFd, BeneathError> {
        self.lookup(path)
            .map_err(|e| self.err("resolving", path, e))
    }

    /// Like [`Root::resolve`], `None` when the path does not exist.
    pub fn resolve_if_exists(&self, path: &Path) -> Result<Option<OwnedFd>, BeneathError> {
        match self.lookup(path) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(self.err("resolving", path, e)),
        }
    }

    /// Opens an existing file beneath the root with `flags` (close-on-exec added).
    pub fn open_file(&self, path: &Path, flags: OFlag) -> Result<OwnedFd, BeneathError> {
        openat2_fd(self.fd(), path, open_how(flags, in_root()))
            .map_err(|e| self.err("opening", path, e))
    }

    /// An existing directory beneath the root (for chdir).
    pub fn resolve_dir(&self, path: &Path) -> Result<OwnedFd, BeneathError> {
        openat2_fd(
            self.fd(),
            path,
            open_how(OFlag::O_PATH | OFlag::O_DIRECTORY, in_root()),
        )
        .map_err(|e| self.err("resolving", path, e))
    }

    /// `mkdir -p` beneath the root; returns the directory.
    pub fn mkdir_all(&self, path: &Path) -> Result<OwnedFd, BeneathError> {
        let fd = self.create(path, Last::Dir)?;
        match is_type(&fd, SFlag::S_IFDIR) {
            Ok(true) => Ok(fd),
            Ok(false) => Err(self.fail(
                "creating the directory",
                path,
                "it exists and is not a directory".into(),
            )),
            Err(e) => Err(self.err("inspecting", path, e)),
        }
    }

    /// Parent directories and an empty file unless something exists there (a mount point
    /// for a file bind); returns what is there.
    pub fn create_file(&self, path: &Path) -> Result<OwnedFd, BeneathError> {
        self.create(path, Last::File)
    }

    /// The parent directory (created if missing) and the last name of `path`, which must be
    /// a plain name.
    fn parent_and_name<'p>(&self, path: &'p Path) -> Result<(OwnedFd, &'p OsStr), BeneathError> {
        let name = match path.components().next_back() {
            Some(Component::Normal(n)) => n,
            _ => return Err(self.fail("creating", path, "the path does not end in a name".into())),
        };
        let parent = path.parent().unwrap_or(Path::new("/"));
        Ok((self.mkdir_all(parent)?, name))
    }

    /// A device node at `path` unless something exists there; false if it did.
    pub fn mknod(
        &self,
        path: &Path,
        kind: SFlag,
        mode: Mode,
        dev: libc::dev_t,
        owner: (Option<u32>, Option<u32>),
    ) -> Result<bool, BeneathError> {
        let (dir, name) = self.parent_and_name(path)?;
        match nix::sys::stat::mknodat(Some(dir.as_raw_fd()), name, kind, mode, dev) {
            Ok(()) => {}
            Err(Errno::EEXIST) => return Ok(false),
            Err(e) => return Err(self.err("creating the device node", path, e)),
        }
        nix::unistd::fchownat(
            Some(dir.as_raw_fd()),
            name,
            owner.0.map(nix::unistd::Uid::from_raw),
            owner.1.map(nix::unistd::Gid::from_raw),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.err("chown of the device node", path, e))?;
        Ok(true)
    }

    /// A symlink at `path` pointing to `target` unless something exists there.
    pub fn symlink(&self, path: &Path, target: &Path) -> Result<(), BeneathError> {
        let (dir, name) = self.parent_and_name(path)?;
        match nix::unistd::symlinkat(target, Some(dir.as_raw_fd()), name) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(self.err("creating the symlink", path, e)),
        }
    }

    /// Resolves `path` beneath the root, creating what is missing: directories, and at the
    /// end a directory or an empty file. A dangling symlink on the way is followed (beneath
    /// the root) to where its target is created, as `mkdir -p` in a chroot would.
    fn create(&self, path: &Path, last: Last) -> Result<OwnedFd, BeneathError> {
        let mut parts = components(path);
        let mut links = 0;
        'restart: loop {
            // The longest prefix that exists.
            let mut dir = self
                .fd
                .try_clone()
                .map_err(|e| self.fail("resolving", path, format!("dup of the root fd: {e}")))?;
            let mut have = 0;
            while have < parts.len() {
                match self.lookup(&join(&parts[..=have])) {
                    Ok(fd) => {
                        dir = fd;
                        have += 1;
                    }
                    Err(Errno::ENOENT) => break,
                    Err(e) => return Err(self.err("resolving", path, e)),
                }
            }
            // The rest, one name at a time under the fd of its parent.
            for i in have..parts.len() {
                let name = parts[i].clone();
                if name == ".." {
                    return Err(self.fail(
                        "creating",
                        path,
                        format!(
                            "'..' follows {}, which does not exist",
                            join(&parts[..i]).display()
                        ),
                    ));
                }
                let made = if i + 1 == parts.len() && last == Last::File {
                    openat2_fd(
                        dir.as_fd(),
                        name.as_os_str(),
                        open_how(
                            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW,
                            exactly_beneath(),
                        )
                        .mode(Mode::from_bits_truncate(FILE_MODE)),
                    )
                    .map(drop)
                } else {
                    nix::sys::stat::mkdirat(
                        Some(dir.as_raw_fd()),
                        name.as_os_str(),
                        Mode::from_bits_truncate(DIR_MODE),
                    )
                };
                match made {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(self.err("creating", path, e)),
                }
                // What is there now, never followed: what we made, or what beat us to it.
                let next = openat2_fd(
                    dir.as_fd(),
                    name.as_os_str(),
                    open_how(OFlag::O_PATH | OFlag::O_NOFOLLOW, exactly_beneath()),
                )
                .map_err(|e| self.err("opening what was created at", path, e))?;
                if is_type(&next, SFlag::S_IFLNK).map_err(|e| self.err("inspecting", path, e))? {
                    // A dangling symlink (the lookup above found nothing behind it): go where
                    // it points, beneath the root.
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(self.err("creating", path, Errno::ELOOP));
                    }
                    let target = nix::fcntl::readlinkat(Some(next.as_raw_fd()), "")
                        .map_err(|e| self.err("reading a symlink in", path, e))?;
                    let target = Path::new(OsStr::from_bytes(target.as_bytes()));
                    let mut expanded = if target.is_absolute() {
                        Vec::new()
                    } else {
                        parts[..i].to_vec()
                    };
                    expanded.extend(components(target));
                    expanded.extend_from_slice(&parts[i + 1..]);
                    parts = expanded;
                    continue 'restart;
                }
                dir = next;
            }
            return Ok(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// Where an fd points, as the kernel names it.
    fn where_(fd: &OwnedFd) -> PathBuf {
        fs::read_link(fd_path(fd)).unwrap()
    }

    /// Every escape a broken resolver could make from this fixture lands in `outside`, never
    /// elsewhere on the host running the tests.
    struct Fixture {
        _dir: tempfile::TempDir,
        /// The container root.
        root: PathBuf,
        /// A sibling of the root: what an escape would reach.
        outside: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        Fixture {
            root: root.canonicalize().unwrap(),
            outside: outside.canonicalize().unwrap(),
            _dir: dir,
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_plain_path_resolves_and_missing_parents_are_created_beneath() {
        let f = fixture();
        let r = Root::open(&f.root).unwrap();
        assert_eq!(
            where_(&r.resolve(Path::new("/a/b")).unwrap()),
            f.root.join("a/b")
        );
        let made = r.mkdir_all(Path::new("/a/new/deeper")).unwrap();
        assert_eq!(where_(&made), f.root.join("a/new/deeper"));
        assert!(f.root.join("a/new/deeper").is_dir());
        let file = r.create_file(Path::new("/x/y/file")).unwrap();
        assert_eq!(where_(&file), f.root.join("x/y/file"));
        assert!(f.root.join("x/y/file").is_file());
        // Existing: returned as is, nothing recreated.
        fs::write(f.root.join("x/y/file"), "kept").unwrap();
        r.create_file(Path::new("/x/y/file")).unwrap();
        assert_eq!(fs::read_to_string(f.root.join("x/y/file")).unwrap(), "kept");
        assert!(r.resolve_if_exists(Path::new("/nope")).unwrap().is_none());
    }

    #[test]
    fn dotdot_never_climbs_above_the_root() {
        let f = fixture();
        let r = Root::open(&f.root).unwrap();
        let fd = r.resolve(Path::new("/../../../a/../../a/b")).unwrap();
        assert_eq!(where_(&fd), f.root.join("a/b"));
        // Created beneath, not next to the root.
        let fd = r.mkdir_all(Path::new("/../outside/made")).unwrap();
        assert_eq!(where_(&fd), f.root.join("outside/made"));
        assert!(entries(&f.outside).is_empty());
        // A relative symlink climbing out (to the outside directory, a sibling of the root)
        // is clamped at the root too.
        symlink("../../../outside", f.root.join("a/b/up")).unwrap();
        let fd = r.mkdir_all(Path::new("/a/b/up/x")).unwrap();
        assert_eq!(where_(&fd), f.root.join("outside/x"));
        assert!(entries(&f.outside).is_empty());
    }

    #[test]
    fn a_symlink_at_the_last_component_resolves_inside() {
        let f = fixture();
        let r = Root::open(&f.root).unwrap();
        // Absolute, pointing at the outside directory's real path.
        symlink(&f.outside, f.root.join("last")).unwrap();
        let fd = r.create_file(Path::new("/last")).unwrap();
        let inside = f.root.join(f.outside.strip_prefix("/").unwrap());
        assert_eq!(where_(&fd), inside);
        assert!(inside.is_file());
        assert!(entries(&f.outside).is_empty());
        // Opening through an absolute link reaches the root's file of that name, never the
        // outside one.
        fs::write(f.outside.join("secret"), "outside").unwrap();
        symlink(f.outside.join("secret"), f.root.join("ptmx")).unwrap();
        let e = r
            .open_file(Path::new("/ptmx"), OFlag::O_RDONLY)
            .unwrap_err()
            .to_string();
        assert!(e.contains("opening /ptmx in the container root"), "{e}");
        fs::remove_file(f.outside.join("secret")).unwrap();
        // An existing target inside: followed.
        symlink("a/b", f.root.join("rel")).unwrap();
        assert_eq!(
            where_(&r.resolve(Path::new("/rel")).unwrap()),
            f.root.join("a/b")
        );
    }

    #[test]
    fn a_symlink_in_the_middle_resolves_inside() {
        let f = fixture();
        let r = Root::open(&f.root).unwrap();
        symlink("/a", f.root.join("mid")).unwrap();
        let fd = r.mkdir_all(Path::new("/mid/b/c")).unwrap();
        assert_eq!(where_(&fd), f.root.join("a/b/c"));
        // Dangling in the middle: its target is created beneath the root.
        symlink("/dangling/target", f.root.join("dang")).unwrap();
        let fd = r.create_file(Path::new("/dang/file")).unwrap();
        assert_eq!(where_(&fd), f.root.join("dangling/target/file"));
    }

    #[test]
    fn absolute_symlinks_resolve_as_if_the_root_were_slash() {
        let f = fixture();
        let r = Root::open(&f.root).unwrap();
        // `/etc -> /` in an image: the root's own file, not the host's. (Looked up, not
        // created: a broken resolver must not write into the host's /.)
        symlink("/", f.root.join("etc")).unwrap();
        fs::write(f.root.join("only-in-the-root"), "").unwrap();
        let fd = r.resolve(Path::new("/etc/only-in-the-root")).unwrap();
        assert_eq!(where_(&fd), f.root.join("only-in-the-root"));
        // A link to the outside directory's real path lands at that path under the root.
        symlink(&f.outside, f.root.join("data")).unwrap();
        let fd = r.mkdir_all(Path::new("/data/vol")).unwrap();
        let inside = f.root.join(f.outside.strip_prefix("/").unwrap());
        assert_eq!(where_(&fd), inside.join("vol"));
        assert!(entries(&f.outside).is_empty());
    }

    #[test]
    fn a_dev_symlink_in_an_image_stays_in_the_root() {
        let f = fixture();
        let r = Root::open(&f.root).unwrap();
        symlink(&f.outside, f.root.join("dev")).unwrap();
        let dev = r.mkdir_all(Path::new("/dev")).unwrap();
        let inside = f.root.join(f.outside.strip_prefix("/").unwrap());
        assert_eq!(where_(&dev), inside);
        r.create_file(Path::new("/dev/null")).unwrap();
        r.symlink(Path::new("/dev/fd"), Path::new("/proc/self/fd"))
            .unwrap();
        r.symlink(Path::new("/dev/ptmx"), Path::new("pts/ptmx"))
            .unwrap();
        let made = r
            .mknod(
                Path::new("/dev/fifo"),
                SFlag::S_IFIFO,
                Mode::from_bits_truncate(0o600),
                0,
                (Some(1000), Some(1000)),
            )
            .unwrap();
        assert!(made);
        // Again: already there.
        assert!(!r
            .mknod(
                Path::new("/dev/fifo"),
                SFlag::S_IFIFO,
                Mode::from_bits_truncate(0o600),
                0,
                (None, None),
            )
            .unwrap());
        assert_eq!(entries(&inside), ["fd", "fifo", "null", "ptmx"]);
        assert_eq!(
            fs::read_link(inside.join("fd")).unwrap(),
            Path::new("/proc/self/fd")
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::symlink_metadata(inside.join("fifo")).unwrap().uid(),
            1000
        );
        assert!(entries(&f.outside).is_empty(), "written outside the root");
    }

    #[test]
    fn magic_links_are_refused_with_the_path_named() {
        let f = fixture();
        let r = Root::open(&f.root).unwrap();
        // `/data -> /proc/self/fd/N` (N: the outside directory, held open), under a real
        // procfs in the root, as a container has (a bind of the host's here). Like
        // `/proc/1/root`, it would jump out of any root if followed.
        let outside = fs::File::open(&f.outside).unwrap();
        symlink(
            format!("/proc/self/fd/{}", outside.as_raw_fd()),
            f.root.join("data"),
        )
        .unwrap();
        fs::create_dir_all(f.root.join("proc")).unwrap();
        nix::mount::mount(
            Some("/proc"),
            &f.root.join("proc"),
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        let made = r.mkdir_all(Path::new("/data/x"));
        let resolved = r.resolve(Path::new("/data"));
        nix::mount::umount2(&f.root.join("proc"), nix::mount::MntFlags::MNT_DETACH).unwrap();
        let e = made.unwrap_err().to_string();
        assert!(e.contains("/data/x") && e.contains("magic link"), "{e}");
        let e = resolved.unwrap_err().to_string();
        assert!(e.contains("resolving /data in the container root"), "{e}");
        assert!(entries(&f.outside).is_empty(), "written outside the root");
    }

    #[test]
    fn symlink_loops_and_dotdot_after_a_missing_name_fail() {
        let f = fixture();
        let r = Root::open(&f.root).unwrap();
        symlink("loop", f.root.join("loop")).unwrap();
        let e = r.mkdir_all(Path::new("/loop/x")).unwrap_err().to_string();
        assert!(e.contains("/loop/x"), "{e}");
        let e = r
            .mkdir_all(Path::new("/missing/../a"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'..' follows missing"), "{e}");
        fs::write(f.root.join("file"), "").unwrap();
        let e = r.mkdir_all(Path::new("/file")).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }
}
