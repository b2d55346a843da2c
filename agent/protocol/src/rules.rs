//! Rules the host and the guest apply the same way, defined once.

/// Longest container, sandbox or exec id.
pub const MAX_ID_LEN: usize = 128;

/// Checks a container, sandbox or exec id: 1 to 128 characters of `[A-Za-z0-9_.-]`, starting
/// with a letter or digit, so that it is always one safe path component on host and guest.
/// Returns why it is not acceptable.
pub fn check_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err("must be 1 to 128 characters long");
    }
    if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("must start with a letter or digit");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err("only letters, digits, '_', '.' and '-' are allowed");
    }
    Ok(())
}

/// What a generic mount option (`ro`, `nosuid`, `noatime`, ...) does to mount(2)'s flags:
/// `(set, clear)` as `MS_*` bits. `None` for options outside this table: bind, propagation
/// and filesystem-specific ones, which each side handles in its own way.
pub fn mount_flag_option(name: &str) -> Option<(libc::c_ulong, libc::c_ulong)> {
    use libc::{
        MS_DIRSYNC, MS_MANDLOCK, MS_NOATIME, MS_NODEV, MS_NODIRATIME, MS_NOEXEC, MS_NOSUID,
        MS_RDONLY, MS_RELATIME, MS_REMOUNT, MS_STRICTATIME, MS_SYNCHRONOUS,
    };
    Some(match name {
        "defaults" => (0, 0),
        "ro" => (MS_RDONLY, 0),
        "rw" => (0, MS_RDONLY),
        "nosuid" => (MS_NOSUID, 0),
        "suid" => (0, MS_NOSUID),
        "nodev" => (MS_NODEV, 0),
        "dev" => (0, MS_NODEV),
        "noexec" => (MS_NOEXEC, 0),
        "exec" => (0, MS_NOEXEC),
        "sync" => (MS_SYNCHRONOUS, 0),
        "async" => (0, MS_SYNCHRONOUS),
        "dirsync" => (MS_DIRSYNC, 0),
        "remount" => (MS_REMOUNT, 0),
        "mand" => (MS_MANDLOCK, 0),
        "nomand" => (0, MS_MANDLOCK),
        "atime" => (0, MS_NOATIME),
        "noatime" => (MS_NOATIME, 0),
        "diratime" => (0, MS_NODIRATIME),
        "nodiratime" => (MS_NODIRATIME, 0),
        "relatime" => (MS_RELATIME, 0),
        "norelatime" => (0, MS_RELATIME),
        "strictatime" => (MS_STRICTATIME, 0),
        "nostrictatime" => (0, MS_STRICTATIME),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for good in ["a", "abc-123_x.y", &"x".repeat(MAX_ID_LEN)] {
            assert_eq!(check_id(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            "_x",
            "a/b",
            "a b",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mount_flags() {
        assert_eq!(mount_flag_option("ro"), Some((libc::MS_RDONLY, 0)));
        assert_eq!(mount_flag_option("rw"), Some((0, libc::MS_RDONLY)));
        assert_eq!(mount_flag_option("bind"), None);
        assert_eq!(mount_flag_option("size=64m"), None);
    }
}
