//! One TOML file -> validated `Config`.
//!
//! The file is first read into "raw" structs where every key is optional and enum-like values
//! are plain strings, so that a bad value is reported by us with its key and allowed values
//! (not as a serde type error). Keys we do not know are collected as warnings: real Kata files
//! carry many keys this runtime does not implement.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::qemu::check_seccomp_sandbox;
use super::{
    one_of, AccelMode, AgentConfig, Arch, ClhConfig, Config, ConfigError, FactoryConfig,
    GuestConfig, InterNetworkingModel, MachineType, QemuConfig, RuntimeConfig, SharedFs,
    VirtioFsCache, Vmm, VsockMode, MAX_MEMORY_MIB, MAX_VCPUS, MAX_VM_CACHE_NUMBER, MIN_MEMORY_MIB,
};

#[derive(Deserialize, Default)]
struct RawFile {
    #[serde(default)]
    hypervisor: RawHypervisor,
    #[serde(default)]
    agent: RawAgentSection,
    #[serde(default)]
    runtime: RawRuntime,
    #[serde(default)]
    factory: RawFactory,
}

#[derive(Deserialize, Default)]
struct RawFactory {
    vm_cache_number: Option<i64>,
}

#[derive(Deserialize, Default)]
struct RawHypervisor {
    qemu: Option<RawVmmSection>,
    /// cloud-hypervisor: the shared keys, same names and meaning; QEMU's own keys are warned
    /// about and ignored.
    clh: Option<RawVmmSection>,
}

/// A `[hypervisor.*]` section as written: the keys of [`GuestConfig`], `path`, and QEMU's own.
#[derive(Deserialize, Default)]
struct RawVmmSection {
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
    seccompsandbox: Option<String>,
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

const QEMU: &str = QemuConfig::SECTION;
const CLH: &str = ClhConfig::SECTION;
const AGENT: &str = "agent.kata";
const RUNTIME: &str = "runtime";
const FACTORY: &str = "factory";
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

    let v = Validator { path };
    let vmm =
        match (raw.hypervisor.qemu, raw.hypervisor.clh) {
            (Some(q), None) => Vmm::Qemu(qemu_section(&v, q, host)?),
            (None, Some(c)) => Vmm::Clh(clh_section(&v, c, &mut warnings)?),
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
    let mut config = Config {
        vmm,
        agent: AgentConfig::default(),
        runtime: RuntimeConfig::default(),
        factory: FactoryConfig::default(),
        source: Some(path.to_path_buf()),
    };

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
    if let Some(n) = raw.factory.vm_cache_number {
        config.factory.vm_cache_number =
            v.range(FACTORY, "vm_cache_number", n, 0, MAX_VM_CACHE_NUMBER.into())?;
    }
    Ok((config, warnings))
}

/// `[hypervisor.qemu]`.
fn qemu_section(
    v: &Validator<'_>,
    mut raw: RawVmmSection,
    host: Arch,
) -> Result<QemuConfig, ConfigError> {
    // The machine type decides the guest arch, and with it the defaults of every other key.
    let machine_type = match &raw.machine_type {
        Some(s) => Some(v.choice(
            QEMU,
            "machine_type",
            s,
            MachineType::parse,
            MachineType::ALLOWED,
        )?),
        None => None,
    };
    let arch = machine_type.map(MachineType::arch).unwrap_or(host);
    let mut q = QemuConfig::defaults_for(arch);
    if let Some(m) = machine_type {
        q.machine_type = m;
    }
    set_path(v, QEMU, "path", raw.path.take(), &mut q.path)?;
    guest_keys(
        v,
        QEMU,
        &mut raw,
        SharedFs::parse,
        SharedFs::ALLOWED,
        &mut q.guest,
    )?;
    let own = QemuKeys::read(v, QEMU, raw)?;
    if let Some(n) = own.memory_slots {
        q.memory_slots = n;
    }
    if let Some(a) = own.accel {
        q.accel = a;
    }
    if let Some(m) = own.vsock {
        q.vsock = m;
    }
    if let Some(p) = own.vhost_user_vsock_daemon {
        q.vhost_user_vsock_daemon = p;
    }
    if let Some(s) = own.seccompsandbox {
        q.seccomp_sandbox = s;
    }
    Ok(q)
}

/// `[hypervisor.clh]`: QEMU's own keys are harmless there, but they do nothing: a warning
/// each.
fn clh_section(
    v: &Validator<'_>,
    mut raw: RawVmmSection,
    warnings: &mut Vec<String>,
) -> Result<ClhConfig, ConfigError> {
    for (key, set) in [
        ("machine_type", raw.machine_type.is_some()),
        ("accel", raw.accel.is_some()),
        ("vsock", raw.vsock.is_some()),
        (
            "vhost_user_vsock_daemon",
            raw.vhost_user_vsock_daemon.is_some(),
        ),
        ("memory_slots", raw.memory_slots.is_some()),
        ("seccompsandbox", raw.seccompsandbox.is_some()),
    ] {
        if set {
            warnings.push(format!(
                "{}: [{CLH}] {key} is not used by cloud-hypervisor (ignored)",
                v.path.display()
            ));
        }
    }
    let mut c = ClhConfig::default();
    set_path(v, CLH, "path", raw.path.take(), &mut c.path)?;
    guest_keys(
        v,
        CLH,
        &mut raw,
        ClhConfig::parse_shared_fs,
        ClhConfig::SHARED_FS_ALLOWED,
        &mut c.guest,
    )?;
    // Ignored, but a bad value is an error all the same (as it always was).
    QemuKeys::read(v, CLH, raw)?;
    Ok(c)
}

/// The keys every hypervisor section shares, taken out of `raw` into `g`. `shared_fs` takes
/// the values `parse_fs` accepts, `allowed_fs` lists them for the error.
fn guest_keys(
    v: &Validator<'_>,
    sec: &str,
    raw: &mut RawVmmSection,
    parse_fs: fn(&str) -> Option<SharedFs>,
    allowed_fs: &[&str],
    g: &mut GuestConfig,
) -> Result<(), ConfigError> {
    set_path(v, sec, "kernel", raw.kernel.take(), &mut g.kernel)?;
    set_path(v, sec, "initrd", raw.initrd.take(), &mut g.initrd)?;
    set_path(
        v,
        sec,
        "virtio_fs_daemon",
        raw.virtio_fs_daemon.take(),
        &mut g.virtio_fs_daemon,
    )?;
    if let Some(p) = raw.kernel_params.take() {
        g.kernel_params = p;
    }
    if let Some(n) = raw.default_vcpus {
        g.default_vcpus = v.range(sec, "default_vcpus", n, 1, MAX_VCPUS.into())?;
    }
    if let Some(n) = raw.default_maxvcpus {
        g.default_maxvcpus = v.range(sec, "default_maxvcpus", n, 0, MAX_VCPUS.into())?;
    }
    if g.default_maxvcpus != 0 && g.default_maxvcpus < g.default_vcpus {
        return Err(v.invalid(
            sec,
            "default_maxvcpus",
            g.default_maxvcpus,
            format!(
                "must be 0 (= host CPUs) or at least default_vcpus ({})",
                g.default_vcpus
            ),
        ));
    }
    if let Some(n) = raw.default_memory {
        g.default_memory = v.range(
            sec,
            "default_memory",
            n,
            MIN_MEMORY_MIB.into(),
            MAX_MEMORY_MIB.into(),
        )?;
    }
    if let Some(s) = raw.shared_fs.take() {
        g.shared_fs = v.choice(sec, "shared_fs", &s, parse_fs, allowed_fs)?;
    }
    if let Some(s) = raw.virtio_fs_cache.take() {
        g.virtio_fs_cache = v.choice(
            sec,
            "virtio_fs_cache",
            &s,
            VirtioFsCache::parse,
            VirtioFsCache::ALLOWED,
        )?;
    }
    if let Some(args) = raw.virtio_fs_extra_args.take() {
        if let Some(bad) = args.iter().find(|a| !a.starts_with('-')) {
            return Err(v.invalid(
                sec,
                "virtio_fs_extra_args",
                format!("[.. \"{bad}\" ..]"),
                "each entry must be one virtiofsd option starting with '-' (e.g. \"--thread-pool-size=1\")",
            ));
        }
        g.virtio_fs_extra_args = args;
    }
    if let Some(b) = raw.enable_debug {
        g.enable_debug = b;
    }
    Ok(())
}

/// QEMU's own keys, validated (None: not in the file). machine_type is not among them: it
/// decides the defaults, so [`qemu_section`] reads it first.
struct QemuKeys {
    memory_slots: Option<u32>,
    accel: Option<AccelMode>,
    vsock: Option<VsockMode>,
    vhost_user_vsock_daemon: Option<PathBuf>,
    seccompsandbox: Option<String>,
}

impl QemuKeys {
    fn read(v: &Validator<'_>, sec: &str, raw: RawVmmSection) -> Result<QemuKeys, ConfigError> {
        let vhost_user_vsock_daemon = absolute(
            v,
            sec,
            "vhost_user_vsock_daemon",
            raw.vhost_user_vsock_daemon,
        )?;
        let memory_slots = match raw.memory_slots {
            Some(n) => Some(v.range(sec, "memory_slots", n, 0, 256)?),
            None => None,
        };
        let accel = match raw.accel {
            Some(s) => Some(v.choice(sec, "accel", &s, AccelMode::parse, AccelMode::ALLOWED)?),
            None => None,
        };
        let vsock = match raw.vsock {
            Some(s) => Some(v.choice(sec, "vsock", &s, VsockMode::parse, VsockMode::ALLOWED)?),
            None => None,
        };
        if let Some(s) = &raw.seccompsandbox {
            check_seccomp_sandbox(s)
                .map_err(|reason| v.invalid(sec, "seccompsandbox", format!("\"{s}\""), reason))?;
        }
        Ok(QemuKeys {
            memory_slots,
            accel,
            vsock,
            vhost_user_vsock_daemon,
            seccompsandbox: raw.seccompsandbox,
        })
    }
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
    if let Some(p) = absolute(v, section, key, value)? {
        *dst = p;
    }
    Ok(())
}

/// `value`, refused unless it is an absolute path.
fn absolute(
    v: &Validator<'_>,
    section: &str,
    key: &str,
    value: Option<PathBuf>,
) -> Result<Option<PathBuf>, ConfigError> {
    match value {
        Some(p) if !p.is_absolute() => Err(v.invalid(
            section,
            key,
            format!("\"{}\"", p.display()),
            "must be an absolute path",
        )),
        value => Ok(value),
    }
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
