//! Removing a VM's directory: after a normal stop, and after a shim that died (its leftover
//! processes killed first).

use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{validate_vm_id, VmError};
use crate::hypervisor::layout::run_root;
use crate::hypervisor::VmPaths;
use crate::resources::beneath::Dir;
use crate::resources::mount_table;

/// Unmounts everything under `dir` and removes it.
pub(super) async fn remove_vm_dir(dir: &Path) -> Result<(), VmError> {
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || unmount_and_remove(&d))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|source| VmError::Dir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Blocking part of [`remove_vm_dir`]. The removal resolves beneath the run root, follows no
/// symlink, and stops at anything still mounted rather than deleting inside it.
fn unmount_and_remove(dir: &Path) -> std::io::Result<()> {
    let errors = mount_table::unmount_all_under(dir);
    if !errors.is_empty() {
        return Err(std::io::Error::other(errors.join("; ")));
    }
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name().and_then(|n| n.to_str()))
    else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} names no VM directory to remove", dir.display()),
        ));
    };
    match Dir::open(parent) {
        Ok(root) => root.remove_tree(name),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// For a shim that died: kill the processes recorded in the VM dir's pid files (only if
/// they still are ours: their command line names the dir), unmount and remove the dir.
pub async fn cleanup_vm_dir(vm_id: &str) -> Result<(), VmError> {
    validate_vm_id(vm_id)?;
    cleanup_dir(&run_root().join(vm_id)).await
}

/// [`cleanup_vm_dir`] for an explicit directory.
pub async fn cleanup_dir(dir: &Path) -> Result<(), VmError> {
    if !dir.exists() {
        return Ok(());
    }
    tracing::warn!("{} was left behind by its shim; removing it", dir.display());
    let paths = VmPaths::new(dir);
    // A pooled VM's processes were started under its first directory's name.
    let origin = pooled_origin(&paths).await;
    let mut needles = vec![dir.to_path_buf()];
    needles.extend(origin.clone());
    for name in ["qemu", "virtiofsd", "vhost-device-vsock"] {
        let pidfile = paths.pidfile(name);
        let Ok(text) = tokio::fs::read_to_string(&pidfile).await else {
            continue;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            continue;
        };
        if pid <= 1 {
            continue;
        }
        // Only a process whose command line mentions this dir is ours (pids get reused).
        let cmdline = tokio::fs::read(format!("/proc/{pid}/cmdline"))
            .await
            .unwrap_or_default();
        let ours = needles.iter().any(|n| {
            let needle = n.as_os_str().as_encoded_bytes();
            cmdline.windows(needle.len()).any(|w| w == needle)
        });
        if ours {
            tracing::warn!(dir = %dir.display(), name, pid, "{name} was left behind by its shim; killing it");
            let p = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            wait_gone(pid).await;
        }
    }
    remove_vm_dir(dir).await?;
    if let Some(origin) = origin {
        remove_alias(&origin).await;
    }
    Ok(())
}

/// The first directory of a pooled VM now in `paths`, if it was one: only a sibling of it
/// (both in the run root), so the record cannot point cleanup anywhere else.
async fn pooled_origin(paths: &VmPaths) -> Option<PathBuf> {
    let text = tokio::fs::read(paths.origin_record()).await.ok()?;
    let origin = PathBuf::from(std::ffi::OsString::from_vec(text));
    (origin.parent() == paths.dir.parent() && origin != paths.dir).then_some(origin)
}

/// Removes a pooled VM's old name: only a symlink.
pub(super) async fn remove_alias(alias: &Path) {
    match tokio::fs::symlink_metadata(alias).await {
        Ok(m) if m.file_type().is_symlink() => {
            if let Err(e) = tokio::fs::remove_file(alias).await {
                tracing::warn!("removing {}: {e}", alias.display());
            }
        }
        _ => {}
    }
}

/// Waits (bounded) until /proc/<pid> is gone or a zombie: a killed process we are not the
/// parent of has no event to wait on.
async fn wait_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tokio::fs::read_to_string(format!("/proc/{pid}/stat")).await {
            Err(_) => return,
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                return
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cleanup_kills_only_our_leftovers_and_removes_the_dir() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("s1");
        std::fs::create_dir(&dir).expect("dir");
        let paths = VmPaths::new(&dir);
        // A leftover "QEMU": its command line names the sandbox dir.
        let mut ours = std::process::Command::new("sh")
            .arg("-c")
            .arg("sleep 100")
            .arg(&dir)
            .spawn()
            .expect("spawn");
        std::fs::write(paths.pidfile("qemu"), format!("{}\n", ours.id())).expect("pidfile");
        // A stranger that reused a recorded pid: must survive.
        let mut stranger = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .expect("spawn");
        std::fs::write(paths.pidfile("virtiofsd"), format!("{}\n", stranger.id()))
            .expect("pidfile");
        cleanup_dir(&dir).await.expect("cleanup");
        assert!(!dir.exists());
        let status = ours.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(
            stranger.try_wait().expect("try_wait").is_none(),
            "stranger killed"
        );
        stranger.kill().expect("kill");
        stranger.wait().expect("reap");
        // A second cleanup of a gone dir is fine.
        cleanup_dir(&dir).await.expect("idempotent");
    }

    /// An adopted pooled VM's processes name the directory it was booted in: a dead shim's
    /// cleanup finds them through the recorded first name, and removes its symlink too.
    #[tokio::test]
    async fn cleanup_kills_a_pooled_vms_processes_by_its_first_name() {
        let root = tempfile::tempdir().expect("tempdir");
        let first = root.path().join("pooled-1-0");
        let dir = root.path().join("pod-1");
        std::fs::create_dir(&dir).expect("dir");
        std::os::unix::fs::symlink("pod-1", &first).expect("symlink");
        let paths = VmPaths::new(&dir);
        std::fs::write(paths.origin_record(), first.as_os_str().as_encoded_bytes())
            .expect("origin");
        let mut qemu = std::process::Command::new("sh")
            .arg("-c")
            .arg("sleep 100")
            .arg(first.join("qmp.sock"))
            .spawn()
            .expect("spawn");
        std::fs::write(paths.pidfile("qemu"), format!("{}\n", qemu.id())).expect("pidfile");
        cleanup_dir(&dir).await.expect("cleanup");
        let status = qemu.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(!dir.exists());
        assert!(std::fs::symlink_metadata(&first).is_err(), "alias left");
    }

    /// Needs root (mount). A VM dir holding a mount of a host directory and symlinks to it:
    /// removal unmounts, then removes without following or deleting anything behind them.
    #[tokio::test]
    async fn removal_leaves_what_mounts_and_symlinks_point_at() {
        let root = tempfile::tempdir().expect("tempdir");
        let canary = root.path().join("canary");
        std::fs::create_dir(&canary).expect("canary");
        std::fs::write(canary.join("keep"), "canary").expect("keep");
        let dir = root.path().join("s2");
        let target = dir.join("mounts/c1/rootfs");
        std::fs::create_dir_all(&target).expect("dirs");
        nix::mount::mount(
            Some(&canary),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind");
        std::os::unix::fs::symlink(&canary, dir.join("link")).expect("symlink");
        std::os::unix::fs::symlink(&canary, dir.join("mounts/c1-mounts")).expect("symlink");
        let removed = remove_vm_dir(&dir).await;
        let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
        removed.expect("removed");
        assert!(!dir.exists());
        let left: Vec<_> = std::fs::read_dir(&canary)
            .expect("canary")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, ["keep"]);
    }
}
