//! Runtime configuration: Kata-compatible TOML (`[hypervisor.qemu]` or `[hypervisor.clh]`,
//! `[agent.kata]`, `[runtime]`), per-arch defaults, validation with errors naming file, key and
//! allowed values, the lookup order of the configuration file and the annotation allowlist.

mod annotations;
mod clh;
mod file;
mod guest;
mod load;
mod pod_resources;
mod qemu;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use annotations::{
    annotation_overrides, glob_matches, Overrides, ANNOTATION_CONFIG_PATH, ANNOTATION_PREFIX,
};
pub use clh::ClhConfig;
pub use guest::GuestConfig;
pub use load::{load, load_from, LoadRequest, Loaded, DEFAULT_CONFIG_PATHS, ENV_CONFIG_FILE};
pub use pod_resources::{PodResources, SANDBOX_CPU_PERIOD, SANDBOX_CPU_QUOTA, SANDBOX_MEMORY};
pub use qemu::{QemuConfig, DEFAULT_SECCOMP_SANDBOX};

/// Smallest and largest guest memory (MiB) we accept.
pub const MIN_MEMORY_MIB: u32 = 64;
pub const MAX_MEMORY_MIB: u32 = 1024 * 1024;
/// Upper bound of vCPUs (QEMU's x86 microvm/q35 and arm virt limits are higher; this is sane).
pub const MAX_VCPUS: u32 = 255;

/// Architecture of the guest (and of the QEMU binary that runs it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The architecture this shim was built for.
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Serial console device of the guest kernel.
    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }
}

/// Declares a config enum spelled as fixed strings in TOML, with its list of allowed values.
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            pub const ALLOWED: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// QEMU machine type; it also decides the guest architecture.
    MachineType {
        /// x86_64 microvm: virtio-mmio devices, PVH boot, fastest boot.
        Microvm = "microvm",
        /// x86_64 q35: PCI devices (needed for hotplug).
        Q35 = "q35",
        /// aarch64 virt (GICv3): PCI devices.
        Virt = "virt",
    }
);

impl MachineType {
    pub fn arch(self) -> Arch {
        match self {
            MachineType::Microvm | MachineType::Q35 => Arch::X86_64,
            MachineType::Virt => Arch::Aarch64,
        }
    }

    /// Whether devices are virtio-mmio (`-device *-device`) rather than PCI (`*-pci`).
    pub fn uses_mmio(self) -> bool {
        self == MachineType::Microvm
    }
}

string_enum!(
    /// How the sandbox's shared directory reaches the guest.
    SharedFs {
        VirtioFs = "virtio-fs",
        Virtio9p = "virtio-9p",
        None = "none",
    }
);

string_enum!(
    /// virtiofsd `--cache` policy (virtiofsd 1.x accepts exactly these).
    VirtioFsCache {
        Auto = "auto",
        Always = "always",
        Never = "never",
        Metadata = "metadata",
    }
);

string_enum!(
    /// Accelerator choice; `auto` uses KVM only where it can boot a stock guest.
    AccelMode {
        Auto = "auto",
        Kvm = "kvm",
        Tcg = "tcg",
    }
);

string_enum!(
    /// vsock transport: kernel vhost-vsock, or vhost-user (hybrid vsock via a daemon).
    VsockMode {
        Auto = "auto",
        Vhost = "vhost",
        VhostUser = "vhost-user",
    }
);

string_enum!(
    /// How the pod's network namespace is connected to the VM (Kata's names).
    InterNetworkingModel {
        TcFilter = "tcfilter",
        Macvtap = "macvtap",
        None = "none",
    }
);

/// Which VMM runs the sandbox, with its section of the file: a file has either a
/// `[hypervisor.qemu]` or a `[hypervisor.clh]` section.
#[derive(Debug, Clone, PartialEq)]
pub enum Vmm {
    /// `[hypervisor.qemu]`
    Qemu(QemuConfig),
    /// `[hypervisor.clh]`
    Clh(ClhConfig),
}

impl Vmm {
    /// The keys every hypervisor section shares.
    pub fn guest(&self) -> &GuestConfig {
        match self {
            Vmm::Qemu(q) => &q.guest,
            Vmm::Clh(c) => &c.guest,
        }
    }

    pub fn guest_mut(&mut self) -> &mut GuestConfig {
        match self {
            Vmm::Qemu(q) => &mut q.guest,
            Vmm::Clh(c) => &mut c.guest,
        }
    }

    /// "hypervisor.qemu" or "hypervisor.clh": the section, for messages.
    pub fn section(&self) -> &'static str {
        match self {
            Vmm::Qemu(_) => QemuConfig::SECTION,
            Vmm::Clh(_) => ClhConfig::SECTION,
        }
    }

    /// The VMM binary (`path` of the section).
    pub fn path(&self) -> &Path {
        match self {
            Vmm::Qemu(q) => &q.path,
            Vmm::Clh(c) => &c.path,
        }
    }

    /// Architecture of the guest: QEMU's follows its machine type, cloud-hypervisor's is the
    /// host's.
    pub fn arch(&self) -> Arch {
        match self {
            Vmm::Qemu(q) => q.arch(),
            Vmm::Clh(c) => c.arch(),
        }
    }

    pub fn qemu(&self) -> Option<&QemuConfig> {
        match self {
            Vmm::Qemu(q) => Some(q),
            Vmm::Clh(_) => None,
        }
    }

    pub fn qemu_mut(&mut self) -> Option<&mut QemuConfig> {
        match self {
            Vmm::Qemu(q) => Some(q),
            Vmm::Clh(_) => None,
        }
    }

    pub fn clh(&self) -> Option<&ClhConfig> {
        match self {
            Vmm::Clh(c) => Some(c),
            Vmm::Qemu(_) => None,
        }
    }
}

/// The whole runtime configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The selected hypervisor and its section.
    pub vmm: Vmm,
    pub agent: AgentConfig,
    pub runtime: RuntimeConfig,
    pub factory: FactoryConfig,
    /// The file this configuration was read from (None for built-in defaults); used in errors.
    pub source: Option<PathBuf>,
}

/// `[agent.kata]`
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// How long to keep trying to reach the agent after QEMU started.
    pub dial_timeout: Duration,
    pub enable_debug: bool,
    pub debug_console_enabled: bool,
}

/// `[runtime]`
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    pub enable_debug: bool,
    pub sandbox_cgroup_only: bool,
    pub internetworking_model: InterNetworkingModel,
    /// Annotation names (suffixes after `io.katacontainers.config.hypervisor.`, or
    /// `config_path`) a pod may set; `*` matches any run of characters.
    pub enable_annotations: Vec<String>,
    pub static_sandbox_resource_mgmt: bool,
    /// Root of the per-sandbox directories. Not a TOML key: set by callers (tests); when None,
    /// `$KATA_RS_RUN_DIR` or /run/kata-containers.
    pub run_dir: Option<PathBuf>,
}

/// `[factory]`: the pool of pre-booted VMs (`pool`).
#[derive(Debug, Clone, PartialEq)]
pub struct FactoryConfig {
    /// Idle VMs the pool keeps booted for this configuration (0: no pool). Kata's key.
    pub vm_cache_number: u32,
}

/// Pooled VMs per configuration when the file does not say.
pub const DEFAULT_VM_CACHE_NUMBER: u32 = 2;
/// Most pooled VMs one configuration may ask for.
pub const MAX_VM_CACHE_NUMBER: u32 = 16;

impl Default for FactoryConfig {
    fn default() -> Self {
        FactoryConfig {
            vm_cache_number: DEFAULT_VM_CACHE_NUMBER,
        }
    }
}

/// Installed locations (see INTERFACES.md); build-guest.sh rewrites them for the build tree.
pub const INSTALLED_KERNEL: &str = "/usr/share/kata-containers/vmlinux.container";
pub const INSTALLED_INITRD: &str = "/usr/share/kata-containers/kata-containers-initrd.img";
pub const INSTALLED_VIRTIOFSD: &str = "/usr/libexec/kata-containers/virtiofsd";
pub const INSTALLED_VHOST_USER_VSOCK: &str = "/usr/libexec/kata-containers/vhost-device-vsock";
/// cloud-hypervisor binary when `[hypervisor.clh]` names no path.
pub const DEFAULT_CLH_PATH: &str = "/usr/bin/cloud-hypervisor";

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            dial_timeout: Duration::from_secs(30),
            enable_debug: false,
            debug_console_enabled: false,
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            enable_debug: false,
            sandbox_cgroup_only: false,
            internetworking_model: InterNetworkingModel::TcFilter,
            enable_annotations: Vec::new(),
            static_sandbox_resource_mgmt: false,
            run_dir: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::defaults_for(Arch::host())
    }
}

impl Config {
    pub fn defaults_for(arch: Arch) -> Config {
        Config {
            vmm: Vmm::Qemu(QemuConfig::defaults_for(arch)),
            agent: AgentConfig::default(),
            runtime: RuntimeConfig::default(),
            factory: FactoryConfig::default(),
            source: None,
        }
    }

    /// Reads and validates one file; unknown keys are logged as warnings.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let (config, warnings) = Config::parse_file(path)?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        Ok(config)
    }

    /// Reads and validates one file, returning the unknown-key warnings to the caller.
    pub fn parse_file(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse_str(&text, path)
    }

    /// Parses TOML text; `path` is only used to name the file in errors and warnings.
    pub fn parse_str(text: &str, path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        file::parse(text, path, Arch::host())
    }

    /// Like [`Config::parse_str`], with `host` standing in for the build architecture
    /// (decides defaults when the file names no machine_type).
    pub fn parse_str_for_host(
        text: &str,
        path: &Path,
        host: Arch,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        file::parse(text, path, host)
    }

    /// Debug logging of the agent requested anywhere.
    pub fn agent_debug(&self) -> bool {
        self.agent.enable_debug || self.runtime.enable_debug
    }

    /// "[hypervisor.qemu] kernel in /etc/x.toml": where a value came from, for error messages.
    pub fn origin(&self, section: &str, key: &str) -> String {
        match &self.source {
            Some(p) => format!("[{section}] {key} in {}", p.display()),
            None => format!("built-in default of [{section}] {key}"),
        }
    }

    /// [`Config::origin`] of a key of the selected hypervisor's section.
    pub fn vmm_origin(&self, key: &str) -> String {
        self.origin(self.vmm.section(), key)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("{}: [{section}] {key} = {value}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        section: String,
        key: String,
        value: String,
        reason: String,
    },
    #[error("{}: {message}", path.display())]
    Unsupported { path: PathBuf, message: String },
    #[error("no configuration file found (looked at {tried})")]
    NotFound { tried: String },
    #[error("annotation {key}: {reason}")]
    Annotation { key: String, reason: String },
}

/// `must be one of "a", "b", "c"`
pub(crate) fn one_of(allowed: &[&str]) -> String {
    let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
    format!("must be one of {}", list.join(", "))
}

#[cfg(test)]
mod tests;
