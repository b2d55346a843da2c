//! Pod annotations that may override configuration values, Kata style: a pod sets
//! `io.katacontainers.config.hypervisor.<key>`, and it takes effect only when `<key>` matches
//! an entry of `[runtime] enable_annotations` (an exact name, or a pattern where `*` or `.*`
//! matches any run of characters, as in Kata's regular expressions).

use std::collections::HashMap;

use super::{Config, ConfigError, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};

pub const ANNOTATION_PREFIX: &str = "io.katacontainers.config.hypervisor.";
pub const ANNOTATION_CONFIG_PATH: &str = "io.katacontainers.config_path";
/// The name `enable_annotations` must list to allow [`ANNOTATION_CONFIG_PATH`].
pub(crate) const CONFIG_PATH_NAME: &str = "config_path";

/// Values a pod's annotations change (None = keep the configuration's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub default_vcpus: Option<u32>,
    pub default_memory: Option<u32>,
    /// Appended to the configuration's kernel_params.
    pub kernel_params: Option<String>,
    /// `io.katacontainers.config.hypervisor.*` annotations this runtime does not implement
    /// (the caller should log them).
    pub ignored: Vec<String>,
}

impl Overrides {
    /// Changes the selected hypervisor's section.
    pub fn apply(&self, config: &mut Config) {
        let h = config.vmm.guest_mut();
        if let Some(n) = self.default_vcpus {
            h.default_vcpus = n;
            if h.default_maxvcpus != 0 && h.default_maxvcpus < n {
                h.default_maxvcpus = n;
            }
        }
        if let Some(n) = self.default_memory {
            h.default_memory = n;
        }
        if let Some(p) = &self.kernel_params {
            if h.kernel_params.is_empty() {
                h.kernel_params = p.clone();
            } else {
                h.kernel_params = format!("{} {p}", h.kernel_params);
            }
        }
    }
}

/// The overrides `annotations` ask for, or an error naming the first one that is not allowed
/// or has a bad value. `io.katacontainers.config_path` is handled by `config::load`.
pub fn annotation_overrides(
    config: &Config,
    annotations: &HashMap<String, String>,
) -> Result<Overrides, ConfigError> {
    let mut out = Overrides::default();
    let mut keys: Vec<&String> = annotations.keys().collect();
    keys.sort(); // deterministic: the same pod always reports the same first error
    for key in keys {
        let Some(name) = key.strip_prefix(ANNOTATION_PREFIX) else {
            continue;
        };
        let value = &annotations[key];
        let known = matches!(name, "default_vcpus" | "default_memory" | "kernel_params");
        if !known {
            out.ignored.push(key.clone());
            continue;
        }
        if !allowed(config, name) {
            return Err(ConfigError::Annotation {
                key: key.clone(),
                reason: format!(
                    "not allowed: \"{name}\" is not in [runtime] enable_annotations{}",
                    config
                        .source
                        .as_ref()
                        .map(|p| format!(" of {}", p.display()))
                        .unwrap_or_default()
                ),
            });
        }
        let bad = |reason: String| ConfigError::Annotation {
            key: key.clone(),
            reason: format!("\"{value}\": {reason}"),
        };
        match name {
            "default_vcpus" => {
                out.default_vcpus = Some(parse_range(value, 1, MAX_VCPUS).map_err(bad)?);
            }
            "default_memory" => {
                out.default_memory =
                    Some(parse_range(value, MIN_MEMORY_MIB, MAX_MEMORY_MIB).map_err(bad)?);
            }
            _ => out.kernel_params = Some(value.trim().to_string()),
        }
    }
    Ok(out)
}

fn parse_range(value: &str, min: u32, max: u32) -> Result<u32, String> {
    match value.trim().parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("must be a whole number between {min} and {max}")),
    }
}

/// Whether `[runtime] enable_annotations` lets a pod set annotation `name`.
pub(crate) fn allowed(config: &Config, name: &str) -> bool {
    config
        .runtime
        .enable_annotations
        .iter()
        .any(|pattern| pattern_matches(pattern, name))
}

/// Anchored match where `*` (or regex-style `.*`) matches any run of characters.
fn pattern_matches(pattern: &str, name: &str) -> bool {
    let p = pattern
        .trim_start_matches('^')
        .trim_end_matches('$')
        .replace(".*", "*");
    glob_matches(&p, name)
}

/// Anchored match where `*` matches any run of characters (and nothing else is special).
pub fn glob_matches(p: &str, name: &str) -> bool {
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("default_vcpus", "default_vcpus"));
        assert!(!pattern_matches("default_vcpus", "default_vcpus2"));
        assert!(pattern_matches("default_*", "default_memory"));
        assert!(pattern_matches(".*", "kernel_params"));
        assert!(pattern_matches("^kernel_.*$", "kernel_params"));
        assert!(pattern_matches("*_mem*", "default_memory"));
        assert!(!pattern_matches("*_vcpus", "default_memory"));
        assert!(!pattern_matches("ab*ba", "aba"));
    }
}
