//! Which configuration file a sandbox uses.
//!
//! Order: the `io.katacontainers.config_path` annotation (see below), containerd's runtime
//! options `ConfigPath`, `$KATA_CONF_FILE`, /etc/kata-containers/configuration.toml,
//! /usr/share/defaults/kata-containers/configuration.toml.
//!
//! The annotation comes from the pod author, so it is honoured only when the configuration
//! found through the rest of that order (the operator's) lists `config_path` in
//! `[runtime] enable_annotations`, and only for a file in the same directory as that
//! configuration or in one of the two standard directories: a pod can pick among the
//! operator's files, never point the runtime at an arbitrary host file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::annotations::{allowed, ANNOTATION_CONFIG_PATH, CONFIG_PATH_NAME};
use super::{Config, ConfigError};

/// Environment variable naming the configuration file (Kata's name).
pub const ENV_CONFIG_FILE: &str = "KATA_CONF_FILE";
/// Standard locations, most specific first.
pub const DEFAULT_CONFIG_PATHS: [&str; 2] = [
    "/etc/kata-containers/configuration.toml",
    "/usr/share/defaults/kata-containers/configuration.toml",
];

/// What the caller knows about the sandbox being created.
#[derive(Debug, Clone, Default)]
pub struct LoadRequest {
    /// OCI annotations of the sandbox's first container.
    pub annotations: HashMap<String, String>,
    /// containerd runtime options' `ConfigPath`, if set.
    pub config_path: Option<PathBuf>,
}

/// A validated configuration and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub path: PathBuf,
    /// Unknown keys and similar: worth a log line, not a failure.
    pub warnings: Vec<String>,
}

/// Finds, reads and validates the configuration for a sandbox.
pub fn load(req: &LoadRequest) -> Result<Loaded, ConfigError> {
    let env_file = std::env::var_os(ENV_CONFIG_FILE)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let defaults: Vec<&Path> = DEFAULT_CONFIG_PATHS.iter().map(Path::new).collect();
    load_from(req, env_file, &defaults)
}

/// [`load`] with the environment and the standard locations passed in (testable).
pub fn load_from(
    req: &LoadRequest,
    env_file: Option<PathBuf>,
    defaults: &[&Path],
) -> Result<Loaded, ConfigError> {
    let base_path = base_path(req, env_file, defaults)?;
    let (config, warnings) = Config::parse_file(&base_path)?;
    let Some(wanted) = req.annotations.get(ANNOTATION_CONFIG_PATH) else {
        return Ok(Loaded {
            config,
            path: base_path,
            warnings,
        });
    };

    let refuse = |reason: String| ConfigError::Annotation {
        key: ANNOTATION_CONFIG_PATH.into(),
        reason,
    };
    if !allowed(&config, CONFIG_PATH_NAME) {
        return Err(refuse(format!(
            "not allowed: \"{CONFIG_PATH_NAME}\" is not in [runtime] enable_annotations of {}",
            base_path.display()
        )));
    }
    let wanted = PathBuf::from(wanted);
    if !wanted.is_absolute()
        || wanted
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(refuse(format!(
            "\"{}\" must be an absolute path without \"..\"",
            wanted.display()
        )));
    }
    let mut dirs: Vec<&Path> = defaults.iter().filter_map(|p| p.parent()).collect();
    dirs.extend(base_path.parent());
    if !wanted.parent().is_some_and(|d| dirs.contains(&d)) {
        let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(refuse(format!(
            "\"{}\" is not in a configuration directory ({})",
            wanted.display(),
            list.join(", ")
        )));
    }
    let (config, warnings) = Config::parse_file(&wanted)?;
    Ok(Loaded {
        config,
        path: wanted,
        warnings,
    })
}

/// The operator's file: an explicitly named one must exist; otherwise the first standard one.
fn base_path(
    req: &LoadRequest,
    env_file: Option<PathBuf>,
    defaults: &[&Path],
) -> Result<PathBuf, ConfigError> {
    if let Some(p) = req.config_path.clone().or(env_file) {
        return Ok(p);
    }
    defaults
        .iter()
        .find(|p| p.is_file())
        .map(|p| p.to_path_buf())
        .ok_or_else(|| ConfigError::NotFound {
            tried: defaults
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}
