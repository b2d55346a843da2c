//! The pod's resources as containerd's CRI passes them on the sandbox (annotations it computes
//! from the pod's containers), and the VM size they give: the configured guest size is the
//! base the guest itself needs, the pod's CPU and memory limits are added to it (Kata's
//! `static_sandbox_resource_mgmt`), so a pod limited to 1 GiB gets 1 GiB beyond what its kernel
//! and agent use.

use std::collections::HashMap;

use super::{Config, ConfigError, MAX_MEMORY_MIB};

/// CFS quota of the whole pod (µs per period); 0 or absent = no CPU limit.
pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// CFS period the quota refers to (µs).
pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
/// Memory limit of the whole pod, in bytes; 0 or absent = no memory limit.
pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

const MIB: u64 = 1024 * 1024;

/// What the pod asks for beyond the base guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodResources {
    /// Whole vCPUs covering the pod's CPU limit (rounded up).
    pub vcpus: u32,
    /// MiB covering the pod's memory limit (rounded up).
    pub memory_mib: u32,
}

impl PodResources {
    /// Reads the sandbox annotations; a value that is not a number is an error naming it.
    pub fn from_annotations(annotations: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let quota = number(annotations, SANDBOX_CPU_QUOTA)?;
        let period = number(annotations, SANDBOX_CPU_PERIOD)?;
        let memory = number(annotations, SANDBOX_MEMORY)?;
        let vcpus = match (quota, period) {
            (q, p) if q > 0 && p > 0 => q.div_ceil(p),
            _ => 0,
        };
        let memory_mib = if memory > 0 { memory.div_ceil(MIB) } else { 0 };
        Ok(PodResources {
            vcpus: u32::try_from(vcpus).map_err(|_| too_large(SANDBOX_CPU_QUOTA, quota))?,
            memory_mib: u32::try_from(memory_mib).map_err(|_| too_large(SANDBOX_MEMORY, memory))?,
        })
    }

    /// Adds the pod's share to the configured (base) size. vCPUs beyond the VM's maximum
    /// (`default_maxvcpus`, 0 = `host_cpus`) are capped there, as Kata does, and the cap is
    /// returned so the caller can log it; memory beyond what a VM may have is an error.
    pub fn apply(&self, config: &mut Config, host_cpus: u32) -> Result<Option<u32>, ConfigError> {
        let g = config.vmm.guest_mut();
        let memory = g.default_memory.saturating_add(self.memory_mib);
        if memory > MAX_MEMORY_MIB {
            return Err(ConfigError::Annotation {
                key: SANDBOX_MEMORY.to_string(),
                reason: format!(
                    "the pod's memory limit ({} MiB) plus the guest's base {} MiB is {memory} MiB, \
                     more than a VM may have ({MAX_MEMORY_MIB} MiB)",
                    self.memory_mib, g.default_memory
                ),
            });
        }
        g.default_memory = memory;
        let max = if g.default_maxvcpus == 0 {
            host_cpus.max(1)
        } else {
            g.default_maxvcpus
        };
        if self.vcpus == 0 {
            return Ok(None);
        }
        let wanted = g.default_vcpus.saturating_add(self.vcpus);
        // Never below the configured base, even if that is above the maximum.
        let given = wanted.min(max).max(g.default_vcpus);
        g.default_vcpus = given;
        Ok((wanted > given).then_some(given))
    }
}

fn number(annotations: &HashMap<String, String>, key: &str) -> Result<u64, ConfigError> {
    let Some(v) = annotations.get(key) else {
        return Ok(0);
    };
    let v = v.trim();
    // containerd writes -1 for "no quota" on some paths: no limit, like 0.
    if v.starts_with('-') {
        return v.parse::<i64>().map(|_| 0).map_err(|e| bad(key, v, e));
    }
    v.parse::<u64>().map_err(|e| bad(key, v, e))
}

fn bad(key: &str, value: &str, e: std::num::ParseIntError) -> ConfigError {
    ConfigError::Annotation {
        key: key.to_string(),
        reason: format!("{value:?} is not a whole number: {e}"),
    }
}

fn too_large(key: &str, value: u64) -> ConfigError {
    ConfigError::Annotation {
        key: key.to_string(),
        reason: format!("{value} is too large for a VM"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn base() -> Config {
        let mut c = Config::default();
        let g = c.vmm.guest_mut();
        g.default_memory = 512;
        g.default_vcpus = 1;
        g.default_maxvcpus = 0;
        c
    }

    #[test]
    fn no_annotations_keep_the_configured_size() {
        let r = PodResources::from_annotations(&HashMap::new()).expect("parses");
        assert_eq!(r, PodResources::default());
        let mut c = base();
        assert_eq!(r.apply(&mut c, 8).expect("applies"), None);
        assert_eq!(c.vmm.guest().default_memory, 512);
        assert_eq!(c.vmm.guest().default_vcpus, 1);
    }

    #[test]
    fn limits_are_added_to_the_base_rounded_up() {
        let r = PodResources::from_annotations(&ann(&[
            (SANDBOX_CPU_QUOTA, "150000"),
            (SANDBOX_CPU_PERIOD, "100000"),
            (SANDBOX_MEMORY, &(256 * MIB + 1).to_string()),
        ]))
        .expect("parses");
        assert_eq!(
            r,
            PodResources {
                vcpus: 2,
                memory_mib: 257
            }
        );
        let mut c = base();
        assert_eq!(r.apply(&mut c, 8).expect("applies"), None);
        assert_eq!(c.vmm.guest().default_memory, 512 + 257);
        assert_eq!(c.vmm.guest().default_vcpus, 3);
    }

    #[test]
    fn no_limit_values_add_nothing() {
        let r = PodResources::from_annotations(&ann(&[
            (SANDBOX_CPU_QUOTA, "-1"),
            (SANDBOX_CPU_PERIOD, "100000"),
            (SANDBOX_MEMORY, "0"),
        ]))
        .expect("parses");
        assert_eq!(r, PodResources::default());
    }

    #[test]
    fn vcpus_are_capped_at_the_maximum() {
        let r = PodResources {
            vcpus: 16,
            memory_mib: 0,
        };
        let mut c = base();
        assert_eq!(r.apply(&mut c, 4).expect("applies"), Some(4));
        assert_eq!(c.vmm.guest().default_vcpus, 4);
        let mut c = base();
        c.vmm.guest_mut().default_maxvcpus = 2;
        assert_eq!(r.apply(&mut c, 64).expect("applies"), Some(2));
        assert_eq!(c.vmm.guest().default_vcpus, 2);
    }

    #[test]
    fn bad_values_and_too_much_memory_are_refused_by_name() {
        let e = PodResources::from_annotations(&ann(&[(SANDBOX_MEMORY, "1Gi")]))
            .expect_err("not a number");
        assert!(e.to_string().contains(SANDBOX_MEMORY), "{e}");
        let r = PodResources {
            vcpus: 0,
            memory_mib: MAX_MEMORY_MIB,
        };
        let e = r.apply(&mut base(), 1).expect_err("too large");
        let msg = e.to_string();
        assert!(msg.contains(SANDBOX_MEMORY) && msg.contains("MiB"), "{msg}");
    }
}
