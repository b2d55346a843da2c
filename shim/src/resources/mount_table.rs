//! The host mount table: finding and unmounting whatever is left under a directory.

use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};

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
/// detached (MNT_DETACH) as a last resort. Returns the errors it could not get past.
pub fn unmount_all_under(dir: &Path) -> Vec<String> {
    let mut errors = Vec::new();
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
            if umount2(&m, MntFlags::empty()).is_err() {
                if let Err(e) = umount2(&m, MntFlags::MNT_DETACH) {
                    if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
                        errors.push(format!("unmount {}: {e}", m.display()));
                    }
                }
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
