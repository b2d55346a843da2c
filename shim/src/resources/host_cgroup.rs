//! The pod's cgroup on the host, named by the sandbox spec's `cgroupsPath`: where the VM's host
//! processes (QEMU, virtiofsd, the vsock daemon; the shim too under `sandbox_cgroup_only`) are
//! accounted, so kubelet's pod limits cover them: the path in either driver's form, and its
//! directories on cgroup v1 (one per controller hierarchy) and v2 (unified). A systemd-form
//! path's scope is started by systemd first (`systemd.rs`, driven by `pod_cgroup.rs`).

use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use super::systemd::{Scope, SystemdError};

/// Where the host's cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// cgroup v1 reports "no limit" as a huge page-rounded number (v2 says `max`): anything from
/// 2^62 bytes up is no limit.
const UNLIMITED_BYTES: u64 = 1 << 62;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroupsPath {path:?}: {reason}")]
    BadPath { path: String, reason: String },
    #[error(
        "cgroupsPath {path:?} is in systemd's slice:prefix:name form (the systemd cgroup driver, \
         containerd's SystemdCgroup = true), but systemd is not PID 1 on this host; use the \
         cgroupfs driver (SystemdCgroup = false, kubelet's cgroupDriver: cgroupfs)"
    )]
    SystemdNotRunning { path: String },
    #[error("cgroupsPath {path:?}: {source}")]
    Systemd {
        path: String,
        source: Box<SystemdError>,
    },
    #[error("no cgroup hierarchy is mounted under {CGROUP_ROOT}")]
    NoHierarchy,
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CgroupError {
    let context = context.into();
    move |source| CgroupError::Io { context, source }
}

/// A `cgroupsPath` as the OCI spec carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupsPath {
    /// cgroupfs driver: a path below each hierarchy's root (`/kubepods/burstable/pod<uid>/<id>`).
    Fs(PathBuf),
    /// systemd driver: `slice:prefix:name`, as written, and the scope unit it names.
    Systemd { spec: String, scope: Scope },
}

impl CgroupsPath {
    /// Parses and checks a `cgroupsPath`: a cgroupfs path must have only plain components (no
    /// `..`, which would leave the hierarchy).
    pub fn parse(path: &str) -> Result<Self, CgroupError> {
        let bad = |reason: &str| CgroupError::BadPath {
            path: path.to_string(),
            reason: reason.to_string(),
        };
        if path.contains(':') && !path.contains('/') {
            let parts: Vec<&str> = path.split(':').collect();
            let [slice, prefix, name] = parts[..] else {
                return Err(bad("systemd form must be slice:prefix:name"));
            };
            if name.is_empty() {
                return Err(bad("systemd form has an empty unit name"));
            }
            let scope = Scope::new(slice, prefix, name).map_err(|r| bad(&r))?;
            return Ok(CgroupsPath::Systemd {
                spec: path.to_string(),
                scope,
            });
        }
        let mut rel = PathBuf::new();
        for c in Path::new(path).components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(n) => rel.push(n),
                Component::ParentDir => return Err(bad("must not contain \"..\"")),
                Component::Prefix(_) => return Err(bad("not a Linux path")),
            }
        }
        if rel.as_os_str().is_empty() {
            return Err(bad("names the root cgroup"));
        }
        Ok(CgroupsPath::Fs(rel))
    }

    /// The cgroup's directory below each hierarchy's root (for the systemd form, where
    /// systemd makes the scope's).
    pub fn relative(&self) -> &Path {
        match self {
            CgroupsPath::Fs(rel) => rel,
            CgroupsPath::Systemd { scope, .. } => &scope.cgroup,
        }
    }
}

/// As the spec wrote it (a cgroupfs path from the hierarchy's root).
impl std::fmt::Display for CgroupsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CgroupsPath::Fs(rel) => write!(f, "/{}", rel.display()),
            CgroupsPath::Systemd { spec, .. } => f.write_str(spec),
        }
    }
}

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2 mounted at the root.
    Unified(PathBuf),
    /// cgroup v1: one mount per controller set (`cpu`, `cpu,cpuacct`, `name=systemd`, ...).
    Legacy(Vec<LegacyMount>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyMount {
    pub mount_point: PathBuf,
    pub controllers: Vec<String>,
}

impl Hierarchy {
    /// Reads the layout from a mountinfo text (`/proc/self/mountinfo`).
    pub fn from_mountinfo(mountinfo: &str, root: &Path) -> Result<Self, CgroupError> {
        let mut legacy = Vec::new();
        for line in mountinfo.lines() {
            // id parent maj:min root mount_point options [optional...] - fstype source super
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = left.split_whitespace().nth(4) else {
                continue;
            };
            let mut r = right.split_whitespace();
            let fstype = r.next().unwrap_or_default();
            let super_opts = r.nth(1).unwrap_or_default();
            let mount_point = PathBuf::from(mount_point);
            if !mount_point.starts_with(root) {
                continue;
            }
            match fstype {
                "cgroup2" if mount_point == root => return Ok(Hierarchy::Unified(mount_point)),
                "cgroup" => {
                    let controllers = super_opts
                        .split(',')
                        .filter(|o| {
                            !matches!(*o, "rw" | "ro")
                                && !o.starts_with("relatime")
                                && !o.starts_with("release_agent")
                                && *o != "noprefix"
                                && *o != "clone_children"
                                && *o != "xattr"
                        })
                        .map(str::to_string)
                        .collect();
                    legacy.push(LegacyMount {
                        mount_point,
                        controllers,
                    });
                }
                _ => {}
            }
        }
        if legacy.is_empty() {
            return Err(CgroupError::NoHierarchy);
        }
        Ok(Hierarchy::Legacy(legacy))
    }

    /// This host's layout.
    pub fn detect() -> Result<Self, CgroupError> {
        let text =
            fs::read_to_string("/proc/self/mountinfo").map_err(io("read /proc/self/mountinfo"))?;
        Self::from_mountinfo(&text, Path::new(CGROUP_ROOT))
    }

    /// Each hierarchy's root, in the order [`HostCgroup::leaves`] follows.
    fn roots(&self) -> Vec<PathBuf> {
        match self {
            Hierarchy::Unified(root) => vec![root.clone()],
            Hierarchy::Legacy(mounts) => mounts.iter().map(|m| m.mount_point.clone()).collect(),
        }
    }

    /// Where a process is in each hierarchy (same order as [`Hierarchy::roots`]), read from
    /// its `/proc/<pid>/cgroup` text; a hierarchy it does not list gives its root.
    pub fn dirs_of(&self, proc_cgroup: &str) -> Vec<PathBuf> {
        // id:controllers:path; v2's line is 0::path.
        let lines: Vec<(Vec<&str>, &str)> = proc_cgroup
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
                let mut set: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
                set.sort_unstable();
                Some((set, path))
            })
            .collect();
        let within = |root: &Path, path: &str| root.join(path.trim_start_matches('/'));
        match self {
            Hierarchy::Unified(root) => vec![lines
                .iter()
                .find(|(set, _)| set.is_empty())
                .map_or_else(|| root.clone(), |(_, p)| within(root, p))],
            Hierarchy::Legacy(mounts) => mounts
                .iter()
                .map(|m| {
                    let mut want: Vec<&str> = m.controllers.iter().map(String::as_str).collect();
                    want.sort_unstable();
                    lines
                        .iter()
                        .find(|(set, _)| *set == want)
                        .map_or_else(|| m.mount_point.clone(), |(_, p)| within(&m.mount_point, p))
                })
                .collect(),
        }
    }

    /// "v1" or "v2", for messages and `kata-ctl check`.
    pub fn version(&self) -> &'static str {
        match self {
            Hierarchy::Unified(_) => "v2",
            Hierarchy::Legacy(_) => "v1",
        }
    }
}

/// True when systemd runs as PID 1 (its runtime directory exists), as runc decides.
pub fn systemd_is_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// One pod cgroup: a directory per hierarchy, those of them this shim created (removed again
/// with [`HostCgroup::remove`]), and their `cgroup.procs` files.
#[derive(Debug)]
pub struct HostCgroup {
    path: CgroupsPath,
    /// The root of each hierarchy, in the order of `leaves`.
    roots: Vec<PathBuf>,
    /// The leaf directory in each hierarchy.
    leaves: Vec<PathBuf>,
    /// Directories this shim created, deepest last.
    created: Vec<PathBuf>,
}

impl HostCgroup {
    /// Creates (or adopts) the cgroup `path` in every hierarchy of `hierarchy`. For a
    /// systemd-form path the scope was started first: this adopts the directories systemd
    /// made and creates those of hierarchies systemd does not manage (v1's cpuset, ...).
    pub fn create(path: &CgroupsPath, hierarchy: &Hierarchy) -> Result<Self, CgroupError> {
        let rel = path.relative();
        let mut cg = HostCgroup {
            path: path.clone(),
            roots: Vec::new(),
            leaves: Vec::new(),
            created: Vec::new(),
        };
        let made = match hierarchy {
            Hierarchy::Unified(root) => cg.make_unified(root, rel),
            Hierarchy::Legacy(mounts) => mounts.iter().try_for_each(|m| {
                let cpuset = m.controllers.iter().any(|c| c == "cpuset");
                cg.make(&m.mount_point, rel, cpuset)
            }),
        };
        if let Err(e) = made {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// [`HostCgroup::make`] on cgroup v2: each parent of a level it creates hands its
    /// controllers down (`cgroup.subtree_control`), or a new level would have none and the
    /// pod's limits would not reach the VM. Best effort per parent: one that holds processes
    /// itself cannot (v2's no-internal-process rule), and kubelet's levels already do.
    fn make_unified(&mut self, root: &Path, rel: &Path) -> Result<(), CgroupError> {
        self.make(root, rel, false)?;
        // Top down: a level's controllers exist once its parent enabled them.
        for dir in &self.created {
            if let Some(parent) = dir.parent() {
                enable_controllers(parent);
            }
        }
        Ok(())
    }

    /// mkdir -p of `rel` under `root`, remembering what it made; a new v1 cpuset level gets
    /// its parent's CPUs and memory nodes (it starts empty, and an empty cpuset takes no task).
    fn make(&mut self, root: &Path, rel: &Path, cpuset: bool) -> Result<(), CgroupError> {
        let mut dir = root.to_path_buf();
        for c in rel.components() {
            let parent = dir.clone();
            dir.push(c);
            match fs::create_dir(&dir) {
                Ok(()) => {
                    self.created.push(dir.clone());
                    if cpuset {
                        for f in ["cpuset.cpus", "cpuset.mems"] {
                            let v = fs::read_to_string(parent.join(f))
                                .map_err(io(format!("read {}", parent.join(f).display())))?;
                            fs::write(dir.join(f), v.trim())
                                .map_err(io(format!("write {}", dir.join(f).display())))?;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(format!("mkdir {}", dir.display()))(e)),
            }
        }
        self.roots.push(root.to_path_buf());
        self.leaves.push(dir);
        Ok(())
    }

    /// A dead shim's cgroup `path` (its leaf only: the parents may be kubelet's or shared),
    /// once the VM's processes are gone (and, for a systemd scope, systemd stopped it);
    /// absent is fine. Says whether there was one to remove.
    pub fn remove_leftover(path: &CgroupsPath, hierarchy: &Hierarchy) -> Result<bool, CgroupError> {
        let mut removed = false;
        for root in hierarchy.roots() {
            let leaf = root.join(path.relative());
            match fs::remove_dir(&leaf) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(format!("rmdir {}", leaf.display()))(e)),
            }
        }
        Ok(removed)
    }

    /// The cgroup as the spec named it.
    pub fn path(&self) -> &CgroupsPath {
        &self.path
    }

    /// The leaf directory in each hierarchy.
    pub fn leaves(&self) -> &[PathBuf] {
        &self.leaves
    }

    /// Each hierarchy's `cgroup.procs`, opened for writing: a child writes `0` to each before
    /// exec and so is accounted here from its first allocation.
    pub fn procs_files(&self) -> Result<Vec<OwnedFd>, CgroupError> {
        self.leaves
            .iter()
            .map(|d| {
                let p = d.join("cgroup.procs");
                fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map(OwnedFd::from)
                    .map_err(io(format!("open {}", p.display())))
            })
            .collect()
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        write_pid(&self.leaves, pid)
    }

    /// The memory limit the VM's processes are under, in MiB: the lowest limit of this cgroup
    /// and its ancestors (kubelet limits the pod's parent cgroup); None when unlimited.
    pub fn memory_limit_mib(&self) -> Option<u64> {
        let mut lowest: Option<u64> = None;
        for (root, leaf) in self.roots.iter().zip(&self.leaves) {
            let mut dir = leaf.as_path();
            loop {
                for file in ["memory.limit_in_bytes", "memory.max"] {
                    if let Some(bytes) = fs::read_to_string(dir.join(file))
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .filter(|b| *b < UNLIMITED_BYTES)
                    {
                        let mib = bytes / (1024 * 1024);
                        lowest = Some(lowest.map_or(mib, |l| l.min(mib)));
                    }
                }
                if dir == root.as_path() {
                    break;
                }
                match dir.parent() {
                    Some(p) => dir = p,
                    None => break,
                }
            }
        }
        lowest
    }

    /// How many processes of this cgroup the kernel's OOM killer took so far (the memory
    /// controller's `oom_kill` count: v1 `memory.oom_control`, v2 `memory.events`); None
    /// where no hierarchy reports it.
    pub fn oom_kills(&self) -> Option<u64> {
        self.leaves.iter().find_map(|leaf| {
            ["memory.oom_control", "memory.events"]
                .iter()
                .find_map(|f| {
                    let text = fs::read_to_string(leaf.join(f)).ok()?;
                    text.lines()
                        .find_map(|l| l.strip_prefix("oom_kill "))
                        .and_then(|n| n.trim().parse().ok())
                })
        })
    }

    /// The pids still in the cgroup (any hierarchy), the shim's own aside (it left before a
    /// drain; if that failed, it must not kill itself).
    fn members(&self) -> Vec<i32> {
        let shim = i32::try_from(std::process::id()).unwrap_or(-1);
        let mut pids: Vec<i32> = self
            .leaves
            .iter()
            .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        pids.retain(|p| *p != shim);
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Waits (blocking, bounded by `grace`) until no process is left in the cgroup: a process
    /// the kernel is still tearing down (an OOM-killed QEMU freeing its guest RAM, a helper's
    /// child) keeps it busy for a moment after its parent saw it exit. Then SIGKILLs what is
    /// left (only the VM's processes were ever put here) and waits again. v1 sends no event
    /// when a cgroup empties, so this polls, with a growing pause.
    pub fn drain(&self, grace: std::time::Duration) {
        let wait = |limit: std::time::Duration| {
            let deadline = std::time::Instant::now() + limit;
            let mut pause = std::time::Duration::from_millis(5);
            loop {
                let left = self.members();
                if left.is_empty() || std::time::Instant::now() >= deadline {
                    return left;
                }
                // A poll, not a fixed delay: v1 has no event for an emptied cgroup.
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(200));
            }
        };
        let left = wait(grace);
        if left.is_empty() {
            return;
        }
        tracing::warn!("cgroup {}: killing what is left in it: {left:?}", self.path);
        for pid in left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let left = wait(grace);
        if !left.is_empty() {
            tracing::warn!("cgroup {}: still holds {left:?}", self.path);
        }
    }

    /// Removes the directories this shim created, deepest first, once their processes are
    /// gone. Best effort: a leaf that cannot go is logged; a parent another sandbox still
    /// uses (created here, shared since) is left quietly.
    pub fn remove(&mut self) {
        for dir in self.created.drain(..).rev() {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) if !self.leaves.contains(&dir) => {
                    tracing::debug!("cgroup {} still in use: {e}", dir.display());
                }
                Err(e) => tracing::warn!("removing cgroup {}: {e}", dir.display()),
            }
        }
    }
}

/// Enables in `dir`'s children every controller `dir` has (v2), logging what it cannot.
fn enable_controllers(dir: &Path) {
    let Ok(available) = fs::read_to_string(dir.join("cgroup.controllers")) else {
        return;
    };
    let wanted: Vec<String> = available
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return;
    }
    let file = dir.join("cgroup.subtree_control");
    if let Err(e) = fs::write(&file, wanted.join(" ")) {
        tracing::debug!("enabling {} in {}: {e}", wanted.join(" "), file.display());
    }
}

/// Moves process `pid` out of a pod cgroup again, to `dirs` (one per hierarchy, as
/// [`Hierarchy::dirs_of`] gives them), or to a hierarchy's root where that dir is gone.
pub fn return_pid(hierarchy: &Hierarchy, pid: u32, dirs: &[PathBuf]) -> Result<(), CgroupError> {
    let to: Vec<PathBuf> = hierarchy
        .roots()
        .into_iter()
        .zip(dirs.iter().map(Some).chain(std::iter::repeat(None)))
        .map(|(root, dir)| match dir {
            Some(d) if d.is_dir() => d.clone(),
            _ => root,
        })
        .collect();
    write_pid(&to, pid)
}

/// Writes `pid` to `cgroup.procs` in each of `dirs`.
pub(super) fn write_pid(dirs: &[PathBuf], pid: u32) -> Result<(), CgroupError> {
    for d in dirs {
        let p = d.join("cgroup.procs");
        fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|mut f| f.write_all(pid.to_string().as_bytes()))
            .map_err(io(format!("move {pid} to {}", p.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_paths_are_relative_and_never_climb() {
        assert_eq!(
            CgroupsPath::parse("/kubepods/burstable/pod1/abc").expect("parses"),
            CgroupsPath::Fs(PathBuf::from("kubepods/burstable/pod1/abc"))
        );
        for bad in ["/kubepods/../../etc", "/", ""] {
            let e = CgroupsPath::parse(bad).expect_err(bad);
            assert!(e.to_string().contains("cgroupsPath"), "{e}");
        }
    }

    #[test]
    fn systemd_form_names_its_scope_below_the_expanded_slice() {
        let spec = "kubepods-burstable-pod1.slice:cri-containerd:abc";
        let p = CgroupsPath::parse(spec).expect("parses");
        assert_eq!(p.to_string(), spec);
        assert_eq!(
            p.relative(),
            Path::new(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/\
                 cri-containerd-abc.scope"
            )
        );
        for bad in ["a:b", "kubepods:cri:abc", "a.slice:p:x y"] {
            let e = CgroupsPath::parse(bad).expect_err(bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn a_process_leaves_for_where_proc_cgroup_says_it_was() {
        let v1 = Hierarchy::from_mountinfo(V1, Path::new(CGROUP_ROOT)).expect("v1");
        let proc_cgroup = "\
5:memory:/system.slice/containerd.service
4:cpu:/system.slice/containerd.service
1:name=systemd:/system.slice/containerd.service
0::/system.slice/containerd.service
";
        let root = Path::new(CGROUP_ROOT);
        assert_eq!(
            v1.dirs_of(proc_cgroup),
            [
                root.join("cpu/system.slice/containerd.service"),
                root.join("cpuset"),
                root.join("memory/system.slice/containerd.service"),
                root.join("systemd/system.slice/containerd.service"),
            ]
        );
        let v2 = Hierarchy::Unified(root.to_path_buf());
        assert_eq!(
            v2.dirs_of(proc_cgroup),
            [root.join("system.slice/containerd.service")]
        );
    }

    #[test]
    fn v2_parents_of_new_levels_hand_their_controllers_down() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .expect("write");
        let path = CgroupsPath::parse("/kubepods/pod1/sb").expect("parses");
        let mut cg =
            HostCgroup::create(&path, &Hierarchy::Unified(root.to_path_buf())).expect("creates");
        assert_eq!(cg.leaves(), [root.join("kubepods/pod1/sb")]);
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).expect("read"),
            "+cpuset +cpu +io +memory +pids"
        );
        // The fake's new levels have no cgroup.controllers (the kernel would add it): nothing
        // is written there.
        assert!(!root.join("kubepods/cgroup.subtree_control").exists());
        cg.remove();
        assert!(!root.join("kubepods").exists());
    }

    const V1: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
35 30 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn legacy_and_unified_layouts_are_told_apart() {
        let root = Path::new(CGROUP_ROOT);
        match Hierarchy::from_mountinfo(V1, root).expect("v1") {
            Hierarchy::Legacy(m) => {
                let names: Vec<String> = m.iter().map(|m| m.controllers.join(",")).collect();
                assert_eq!(names, ["cpu", "cpuset", "memory", "name=systemd"]);
            }
            other => panic!("not legacy: {other:?}"),
        }
        let v2 = "40 25 0:26 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            Hierarchy::from_mountinfo(v2, root).expect("v2"),
            Hierarchy::Unified(PathBuf::from(CGROUP_ROOT))
        );
        assert!(Hierarchy::from_mountinfo("", root).is_err());
    }

    #[test]
    fn create_makes_each_level_once_and_remove_takes_back_only_what_it_made() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        // A fake v1 layout: a cpuset hierarchy (parent values to inherit) and a memory one.
        let cpuset = root.join("cpuset");
        let memory = root.join("memory");
        fs::create_dir_all(&cpuset).expect("mkdir");
        fs::create_dir_all(memory.join("kubepods")).expect("mkdir");
        fs::write(cpuset.join("cpuset.cpus"), "0-1\n").expect("write");
        fs::write(cpuset.join("cpuset.mems"), "0\n").expect("write");
        let h = Hierarchy::Legacy(vec![
            LegacyMount {
                mount_point: cpuset.clone(),
                controllers: vec!["cpuset".into()],
            },
            LegacyMount {
                mount_point: memory.clone(),
                controllers: vec!["memory".into()],
            },
        ]);
        let path = CgroupsPath::parse("/kubepods/pod1/sb").expect("parses");
        let mut cg = HostCgroup::create(&path, &h).expect("creates");
        assert_eq!(
            cg.leaves(),
            [
                cpuset.join("kubepods/pod1/sb"),
                memory.join("kubepods/pod1/sb")
            ]
        );
        for level in ["kubepods", "kubepods/pod1", "kubepods/pod1/sb"] {
            assert_eq!(
                fs::read_to_string(cpuset.join(level).join("cpuset.cpus")).expect("read"),
                "0-1"
            );
        }
        // tmpfs is not cgroupfs: files made by the test stand in for the kernel's.
        for d in cg.leaves().to_vec() {
            fs::write(d.join("cgroup.procs"), "").expect("write");
        }
        assert_eq!(cg.procs_files().expect("opens").len(), 2);
        for d in cg.leaves().to_vec() {
            fs::remove_file(d.join("cgroup.procs")).expect("rm");
        }
        for level in ["kubepods", "kubepods/pod1", "kubepods/pod1/sb"] {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                fs::remove_file(cpuset.join(level).join(f)).expect("rm");
            }
        }
        // The lowest limit along the path counts (kubelet limits the pod's parent).
        fs::write(
            memory.join("kubepods/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .expect("write");
        assert_eq!(cg.memory_limit_mib(), None, "v1's no-limit value");
        fs::write(
            memory.join("kubepods/pod1/memory.limit_in_bytes"),
            "314572800\n",
        )
        .expect("write");
        fs::write(
            memory.join("kubepods/pod1/sb/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .expect("write");
        assert_eq!(cg.memory_limit_mib(), Some(300));
        assert_eq!(cg.oom_kills(), None);
        let oom = memory.join("kubepods/pod1/sb/memory.oom_control");
        fs::write(&oom, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").expect("write");
        assert_eq!(cg.oom_kills(), Some(2));
        fs::remove_file(oom).expect("rm");
        for level in ["kubepods", "kubepods/pod1", "kubepods/pod1/sb"] {
            fs::remove_file(memory.join(level).join("memory.limit_in_bytes")).expect("rm");
        }
        cg.remove();
        assert!(!cpuset.join("kubepods").exists(), "created levels removed");
        assert!(memory.join("kubepods").exists(), "a level it found is kept");
        assert!(!memory.join("kubepods/pod1").exists());
    }
}
