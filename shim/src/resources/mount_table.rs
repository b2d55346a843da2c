//! The host mount table: finding and unmounting whatever is left under a directory.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};

use super::beneath::Dir;

/// Mount points at or under `dir`, deepest (most recently stacked) first, from mountinfo text.
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    // mountinfo lists parents before children and older before newer: reverse undoes both.
    found.reverse();
    found
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts everything at or under `dir` (blocking: call from spawn_blocking). A busy mount is
/// detached (MNT_DETACH) as a last resort. Each mount point is reached from `dir`'s fd
/// without following a symlink (`beneath`), its last component not followed either
/// (`UMOUNT_NOFOLLOW`). Returns the errors it could not get past.
pub fn unmount_all_under(dir: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    let base = match Dir::open(dir) {
        Ok(d) => d,
        // Nothing is mounted under a directory that is not there.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return errors,
        Err(e) => {
            errors.push(e.to_string());
            return errors;
        }
    };
    // Stacked mounts at one point need one umount each: re-read until nothing is left.
    for _ in 0..16 {
        let info = match std::fs::read_to_string("/proc/self/mountinfo") {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("read /proc/self/mountinfo: {e}"));
                return errors;
            }
        };
        let mounts = mounts_under(&info, dir);
        if mounts.is_empty() {
            return errors;
        }
        for m in mounts {
            if let Err(e) = unmount_beneath(&base, &m) {
                errors.push(e);
            }
        }
        if !errors.is_empty() {
            return errors;
        }
    }
    errors.push(format!(
        "mounts still present under {} after 16 rounds",
        dir.display()
    ));
    errors
}

/// Unmounts the top mount at `mount_point` (at or under `base`), through the fd of its parent
/// directory opened beneath `base`; not mounted is fine.
fn unmount_beneath(base: &Dir, mount_point: &Path) -> Result<(), String> {
    let rel = mount_point.strip_prefix(base.path()).unwrap_or(mount_point);
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        // `base` itself: the host's own path.
        let flags = MntFlags::UMOUNT_NOFOLLOW;
        if umount2(mount_point, flags).is_ok() {
            return Ok(());
        }
        return match umount2(mount_point, flags | MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(format!("unmount {}: {e}", mount_point.display())),
        };
    };
    let opened;
    let parent = if parent.as_os_str().is_empty() {
        base
    } else {
        opened = base.open_dir(parent).map_err(|e| e.to_string())?;
        &opened
    };
    if parent.unmount(name, MntFlags::empty()).is_ok() {
        return Ok(());
    }
    parent
        .unmount(name, MntFlags::MNT_DETACH)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mounts_under_dir_deepest_first() {
        let info = "\
27 1 254:0 / / rw - ext4 /dev/vda rw
50 27 0:40 / /run/kata-containers/s1/shared rw shared:5 - ext4 /dev/vda rw
51 50 0:41 / /run/kata-containers/s1/shared/c1/rootfs rw shared:5 - overlay overlay rw
52 27 0:42 / /run/kata-containers/s10/shared rw - ext4 /dev/vda rw
53 50 0:43 / /run/kata-containers/s1/shared/with\\040space rw - tmpfs tmpfs rw
";
        let m = mounts_under(info, Path::new("/run/kata-containers/s1"));
        assert_eq!(
            m,
            [
                PathBuf::from("/run/kata-containers/s1/shared/with space"),
                PathBuf::from("/run/kata-containers/s1/shared/c1/rootfs"),
                PathBuf::from("/run/kata-containers/s1/shared"),
            ]
        );
    }
}
