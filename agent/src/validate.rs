//! Checks on every identifier and path a request carries, before anything touches the guest.
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ValidationError {
    #[error("invalid {what} {value:?}: {why}")]
    Id {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("invalid path {path:?}: {why}")]
    Path { path: String, why: String },
}

/// A container, sandbox or exec id (the rule is shared with the host: protocol::rules).
pub fn id(what: &'static str, value: &str) -> Result<(), ValidationError> {
    protocol::rules::check_id(value).map_err(|why| ValidationError::Id {
        what,
        value: value.to_string(),
        why,
    })
}

pub fn container_id(value: &str) -> Result<(), ValidationError> {
    id("container id", value)
}

/// Exec ids may be empty (the container's init process).
pub fn exec_id(value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Ok(());
    }
    id("exec id", value)
}

/// An absolute path without `.`/`..` components, returned normalised (duplicate slashes gone).
pub fn absolute_path(path: &str) -> Result<PathBuf, ValidationError> {
    let fail = |why: &str| {
        Err(ValidationError::Path {
            path: path.to_string(),
            why: why.to_string(),
        })
    };
    if path.is_empty() {
        return fail("empty");
    }
    if path.contains('\0') {
        return fail("contains a NUL byte");
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return fail("not absolute");
    }
    // Path::components silently drops `.`, so look at the raw segments.
    if path.split('/').any(|s| s == "." || s == "..") {
        return fail("'.' and '..' components are not allowed");
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return fail("'.' and '..' components are not allowed")
            }
        }
    }
    Ok(out)
}

/// An absolute, normalised path strictly below `base` (e.g. protocol::GUEST_RUN_DIR).
pub fn path_under(path: &str, base: &str) -> Result<PathBuf, ValidationError> {
    let p = absolute_path(path)?;
    if p == Path::new(base) || !p.starts_with(base) {
        return Err(ValidationError::Path {
            path: path.to_string(),
            why: format!("must lie under {base}"),
        });
    }
    Ok(p)
}

/// Fails if any existing component of `path` below `base` is a symlink (which could point
/// anywhere in the guest).
pub fn no_symlinks_below(path: &Path, base: &str) -> Result<(), ValidationError> {
    let mut prefix = PathBuf::from(base);
    for c in path.strip_prefix(base).unwrap_or(path).components() {
        prefix.push(c);
        if std::fs::symlink_metadata(&prefix).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(ValidationError::Path {
                path: path.display().to_string(),
                why: format!("resolves outside {base}: {} is a symlink", prefix.display()),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(container_id("abc-1_2.3").is_ok());
        assert!(container_id(&"a".repeat(128)).is_ok());
        for bad in [
            "",
            "../x",
            "a/b",
            "..",
            ".x",
            "-x",
            "a b",
            "é",
            &"a".repeat(129),
        ] {
            assert!(container_id(bad).is_err(), "{bad:?} accepted");
        }
        assert!(exec_id("").is_ok());
        assert!(exec_id("../e").is_err());
        let msg = container_id("../x").unwrap_err().to_string();
        assert!(msg.contains("invalid container id \"../x\""), "{msg}");
    }

    #[test]
    fn paths() {
        assert_eq!(absolute_path("/a//b/").unwrap(), PathBuf::from("/a/b"));
        assert!(absolute_path("a/b").is_err());
        assert!(absolute_path("/a/../b").is_err());
        assert!(absolute_path("/a/./b").is_err());
        assert!(absolute_path("").is_err());
        let base = "/run/kata-containers";
        assert!(path_under("/run/kata-containers/x/y", base).is_ok());
        assert!(path_under("/run/kata-containers", base).is_err());
        assert!(path_under("/run/kata-containersX/y", base).is_err());
        assert!(path_under("/run/kata-containers/../etc", base).is_err());
        assert!(path_under("/etc/passwd", base).is_err());
    }

    #[test]
    fn symlinks_below_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_str().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        assert!(no_symlinks_below(&dir.path().join("real/new/file"), base).is_ok());
        let e = no_symlinks_below(&dir.path().join("link/passwd"), base).unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
    }
}
