//! One TOML file -> validated `Config`.
//!
//! The file is first read into "raw" structs where every key is optional and enum-like values
//! are plain strings, so that a bad value is reported by us with its key and allowed values
//! (not as a serde type error). Keys we do not know are collected as warnings: real Kata files
//! carry many keys this runtime does not implement.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{
    one_of, AccelMode, Arch, Backend, Config, ConfigError, InterNetworkingModel, MachineType,
    SharedFs, VirtioFsCache, VsockMode, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB,
};

#[derive(Deserialize, Default)]
struct RawFile {
    #[serde(default)]
    hypervisor: RawHypervisor,
    #[serde(default)]
    agent: RawAgentSection,
    #[serde(default)]
    runtime: RawRuntime,
}

#[derive(Deserialize, Default)]
struct RawHypervisor {
    qemu: Option<RawQemu>,
    /// cloud-hypervisor: the keys it shares with QEMU, same names and meaning.
    clh: Option<RawQemu>,
}

#[derive(Deserialize, Default)]
struct RawQemu {
    path: Option<PathBuf>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    machine_type: Option<String>,
    kernel_params: Option<String>,
    default_vcpus: Option<i64>,
    default_maxvcpus: Option<i64>,
    default_memory: Option<i64>,
    memory_slots: Option<i64>,
    shared_fs: Option<String>,
    virtio_fs_daemon: Option<PathBuf>,
    virtio_fs_cache: Option<String>,
    virtio_fs_extra_args: Option<Vec<String>>,
    enable_debug: Option<bool>,
    accel: Option<String>,
    vsock: Option<String>,
    vhost_user_vsock_daemon: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
struct RawAgentSection {
    kata: Option<RawAgent>,
}

#[derive(Deserialize, Default)]
struct RawAgent {
    dial_timeout: Option<i64>,
    enable_debug: Option<bool>,
    debug_console_enabled: Option<bool>,
}

#[derive(Deserialize, Default)]
struct RawRuntime {
    enable_debug: Option<bool>,
    sandbox_cgroup_only: Option<bool>,
    internetworking_model: Option<String>,
    enable_annotations: Option<Vec<String>>,
    static_sandbox_resource_mgmt: Option<bool>,
}

const QEMU: &str = "hypervisor.qemu";
const CLH: &str = "hypervisor.clh";
const AGENT: &str = "agent.kata";
const RUNTIME: &str = "runtime";
/// Longest agent dial timeout we accept, seconds.
const MAX_DIAL_TIMEOUT_SECS: i64 = 600;

pub(super) fn parse(
    text: &str,
    path: &Path,
    host: Arch,
) -> Result<(Config, Vec<String>), ConfigError> {
    let mut warnings = Vec::new();
    let de = toml::Deserializer::new(text);
    let raw: RawFile = serde_ignored::deserialize(de, |ignored| {
        warnings.push(unknown_key_warning(path, &ignored.to_string()));
    })
    .map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })?;

    let (sec, q) =
        match (raw.hypervisor.qemu, raw.hypervisor.clh) {
            (Some(q), None) => (QEMU, q),
            (None, Some(c)) => (CLH, c),
            (Some(_), Some(_)) => return Err(ConfigError::Unsupported {
                path: path.to_path_buf(),
                message:
                    "both [hypervisor.qemu] and [hypervisor.clh]: a file configures one hypervisor"
                        .into(),
            }),
            (None, None) => {
                return Err(ConfigError::Unsupported {
                    path: path.to_path_buf(),
                    message: "no [hypervisor.qemu] or [hypervisor.clh] section".into(),
                })
            }
        };
    let clh = sec == CLH;
    if clh {
        // QEMU-only keys: harmless in a clh file, but they do nothing there.
        for (key, set) in [
            ("machine_type", q.machine_type.is_some()),
            ("accel", q.accel.is_some()),
            ("vsock", q.vsock.is_some()),
            (
                "vhost_user_vsock_daemon",
                q.vhost_user_vsock_daemon.is_some(),
            ),
            ("memory_slots", q.memory_slots.is_some()),
        ] {
            if set {
                warnings.push(format!(
                    "{}: [{CLH}] {key} is not used by cloud-hypervisor (ignored)",
                    path.display()
                ));
            }
        }
    }
    let v = Validator { path };

    // The machine type decides the guest arch, and with it the defaults of every other key.
    let machine_type = match &q.machine_type {
        Some(s) if !clh => Some(v.choice(
            sec,
            "machine_type",
            s,
            MachineType::parse,
            MachineType::ALLOWED,
        )?),
        _ => None,
    };
    let arch = machine_type.map(MachineType::arch).unwrap_or(host);
    let mut config = Config::defaults_for(arch);
    config.source = Some(path.to_path_buf());
    if clh {
        let mut vmm = PathBuf::from(super::DEFAULT_CLH_PATH);
        set_path(&v, sec, "path", q.path.clone(), &mut vmm)?;
        config.backend = Backend::Clh { path: vmm };
    }

    let h = &mut config.hypervisor;
    if let Some(m) = machine_type {
        h.machine_type = m;
    }
    if !clh {
        set_path(&v, sec, "path", q.path, &mut h.path)?;
    }
    set_path(&v, sec, "kernel", q.kernel, &mut h.kernel)?;
    set_path(&v, sec, "initrd", q.initrd, &mut h.initrd)?;
    set_path(
        &v,
        sec,
        "virtio_fs_daemon",
        q.virtio_fs_daemon,
        &mut h.virtio_fs_daemon,
    )?;
    set_path(
        &v,
        sec,
        "vhost_user_vsock_daemon",
        q.vhost_user_vsock_daemon,
        &mut h.vhost_user_vsock_daemon,
    )?;
    if let Some(p) = q.kernel_params {
        h.kernel_params = p;
    }
    if let Some(n) = q.default_vcpus {
        h.default_vcpus = v.range(sec, "default_vcpus", n, 1, MAX_VCPUS.into())?;
    }
    if let Some(n) = q.default_maxvcpus {
        h.default_maxvcpus = v.range(sec, "default_maxvcpus", n, 0, MAX_VCPUS.into())?;
    }
    if h.default_maxvcpus != 0 && h.default_maxvcpus < h.default_vcpus {
        return Err(v.invalid(
            sec,
            "default_maxvcpus",
            h.default_maxvcpus,
            format!(
                "must be 0 (= host CPUs) or at least default_vcpus ({})",
                h.default_vcpus
            ),
        ));
    }
    if let Some(n) = q.default_memory {
        h.default_memory = v.range(
            sec,
            "default_memory",
            n,
            MIN_MEMORY_MIB.into(),
            MAX_MEMORY_MIB.into(),
        )?;
    }
    if let Some(n) = q.memory_slots {
        h.memory_slots = v.range(sec, "memory_slots", n, 0, 256)?;
    }
    if let Some(s) = q.shared_fs {
        h.shared_fs = if clh {
            // cloud-hypervisor has no virtio-9p.
            const CLH_FS: &[&str] = &["virtio-fs", "none"];
            let parse = |s: &str| SharedFs::parse(s).filter(|f| *f != SharedFs::Virtio9p);
            v.choice(sec, "shared_fs", &s, parse, CLH_FS)?
        } else {
            v.choice(sec, "shared_fs", &s, SharedFs::parse, SharedFs::ALLOWED)?
        };
    }
    if let Some(s) = q.virtio_fs_cache {
        h.virtio_fs_cache = v.choice(
            sec,
            "virtio_fs_cache",
            &s,
            VirtioFsCache::parse,
            VirtioFsCache::ALLOWED,
        )?;
    }
    if let Some(args) = q.virtio_fs_extra_args {
        if let Some(bad) = args.iter().find(|a| !a.starts_with('-')) {
            return Err(v.invalid(
                sec,
                "virtio_fs_extra_args",
                format!("[.. \"{bad}\" ..]"),
                "each entry must be one virtiofsd option starting with '-' (e.g. \"--thread-pool-size=1\")",
            ));
        }
        h.virtio_fs_extra_args = args;
    }
    if let Some(b) = q.enable_debug {
        h.enable_debug = b;
    }
    if let Some(s) = q.accel {
        h.accel = v.choice(sec, "accel", &s, AccelMode::parse, AccelMode::ALLOWED)?;
    }
    if let Some(s) = q.vsock {
        h.vsock = v.choice(sec, "vsock", &s, VsockMode::parse, VsockMode::ALLOWED)?;
    }

    if let Some(a) = raw.agent.kata {
        let ag = &mut config.agent;
        if let Some(n) = a.dial_timeout {
            let secs = v.range(AGENT, "dial_timeout", n, 1, MAX_DIAL_TIMEOUT_SECS)?;
            ag.dial_timeout = Duration::from_secs(secs.into());
        }
        if let Some(b) = a.enable_debug {
            ag.enable_debug = b;
        }
        if let Some(b) = a.debug_console_enabled {
            ag.debug_console_enabled = b;
        }
    }

    let r = raw.runtime;
    let rt = &mut config.runtime;
    if let Some(b) = r.enable_debug {
        rt.enable_debug = b;
    }
    if let Some(b) = r.sandbox_cgroup_only {
        rt.sandbox_cgroup_only = b;
    }
    if let Some(s) = r.internetworking_model {
        rt.internetworking_model = v.choice(
            RUNTIME,
            "internetworking_model",
            &s,
            InterNetworkingModel::parse,
            InterNetworkingModel::ALLOWED,
        )?;
    }
    if let Some(list) = r.enable_annotations {
        if let Some(bad) = list.iter().find(|p| p.is_empty()) {
            return Err(v.invalid(
                RUNTIME,
                "enable_annotations",
                format!("[.. \"{bad}\" ..]"),
                "entries must be non-empty annotation names such as \"default_vcpus\"",
            ));
        }
        rt.enable_annotations = list;
    }
    if let Some(b) = r.static_sandbox_resource_mgmt {
        rt.static_sandbox_resource_mgmt = b;
    }
    Ok((config, warnings))
}

/// serde_ignored names a key by its dotted path: "hypervisor.qemu.foo" -> "[hypervisor.qemu] foo".
fn unknown_key_warning(path: &Path, dotted: &str) -> String {
    // serde_ignored marks the inside of an Option with a "?" segment: drop it.
    let dotted = dotted.replace(".?.", ".").replace(".?", "");
    let key = match dotted.rsplit_once('.') {
        Some((section, key)) => format!("[{section}] {key}"),
        None => dotted,
    };
    format!("{}: unknown key {key} (ignored)", path.display())
}

fn set_path(
    v: &Validator<'_>,
    section: &str,
    key: &str,
    value: Option<PathBuf>,
    dst: &mut PathBuf,
) -> Result<(), ConfigError> {
    if let Some(p) = value {
        if !p.is_absolute() {
            return Err(v.invalid(
                section,
                key,
                format!("\"{}\"", p.display()),
                "must be an absolute path",
            ));
        }
        *dst = p;
    }
    Ok(())
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn invalid(
        &self,
        section: &str,
        key: &str,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            section: section.into(),
            key: key.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    fn range(
        &self,
        section: &str,
        key: &str,
        n: i64,
        min: i64,
        max: i64,
    ) -> Result<u32, ConfigError> {
        if n < min || n > max {
            return Err(self.invalid(section, key, n, format!("must be between {min} and {max}")));
        }
        u32::try_from(n).map_err(|_| self.invalid(section, key, n, "out of range"))
    }

    fn choice<T>(
        &self,
        section: &str,
        key: &str,
        s: &str,
        parse: fn(&str) -> Option<T>,
        allowed: &[&str],
    ) -> Result<T, ConfigError> {
        parse(s).ok_or_else(|| self.invalid(section, key, format!("\"{s}\""), one_of(allowed)))
    }
}
