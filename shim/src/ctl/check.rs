//! `kata-ctl check`: can this host run VM sandboxes, and is containerd routed to us?
//!
//! Every decision reuses the runtime's own code (accelerator and vsock choice, QEMU version
//! parsing, config loading), so `check` says exactly what the shim would do.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::containerd;
pub use super::finding::{Finding, Status};
use crate::config::{
    Arch, Config, ConfigError, Loaded, QemuConfig, SharedFs, Vmm, DEFAULT_CONFIG_PATHS,
    ENV_CONFIG_FILE,
};
use crate::hypervisor::accel::{self, Accel};
use crate::hypervisor::host;
use crate::hypervisor::qemu::vsock_device::{self, VsockKind, VHOST_VSOCK_DEV};

/// Oldest QEMU the command lines are written and tested for.
pub const MIN_QEMU: (u32, u32) = (7, 2);

/// What `check` looks at besides the runtime configuration.
#[derive(Debug, Clone)]
pub struct CheckInputs {
    /// Filesystem root for /dev and /sys (tests point it elsewhere).
    pub root: PathBuf,
    /// containerd's configuration file.
    pub containerd_config: PathBuf,
}

impl Default for CheckInputs {
    fn default() -> Self {
        CheckInputs {
            root: PathBuf::from("/"),
            containerd_config: PathBuf::from("/etc/containerd/config.toml"),
        }
    }
}

/// The configuration `check` uses: the file the shim would load or, when none is installed
/// yet, the built-in defaults (which name the paths `make install` installs to), so every
/// host check still runs. The finding says which; a file that is there but bad stops `check`
/// (`None`): checking defaults would describe a runtime the shim does not run.
pub fn configuration(loaded: Result<Loaded, ConfigError>) -> (Option<Config>, Finding) {
    const WHAT: &str = "configuration";
    match loaded {
        Ok(l) => (
            Some(l.config),
            Finding::ok(WHAT, l.path.display().to_string()),
        ),
        Err(ConfigError::NotFound { tried }) => (
            Some(Config::default()),
            Finding::fail(
                WHAT,
                format!(
                    "no configuration file found (looked at {tried}), so the shim refuses \
                     sandboxes; the checks below use the built-in defaults"
                ),
                format!(
                    "`make install` installs {}, or point --config / ${ENV_CONFIG_FILE} at a \
                     configuration",
                    DEFAULT_CONFIG_PATHS[0]
                ),
            ),
        ),
        Err(e) => (
            None,
            Finding::fail(
                WHAT,
                e.to_string(),
                "correct the file, or point --config / $KATA_CONF_FILE at a valid one",
            ),
        ),
    }
}

/// `kata-ctl check`: the configuration finding, then every host check (with the built-in
/// defaults when no configuration file is installed yet).
pub async fn run_all(loaded: Result<Loaded, ConfigError>, inputs: &CheckInputs) -> Vec<Finding> {
    let (config, first) = configuration(loaded);
    let mut out = vec![first];
    if let Some(config) = config {
        out.extend(run(&config, inputs).await);
    }
    out
}

/// Runs every check against `config` (already loaded and validated by the caller).
pub async fn run(config: &Config, inputs: &CheckInputs) -> Vec<Finding> {
    let mut out = Vec::new();
    match &config.vmm {
        Vmm::Qemu(q) => {
            out.push(check_accel(q, &inputs.root));
            out.push(check_vsock(config, q, &inputs.root));
            out.extend(check_qemu(config, q).await);
        }
        Vmm::Clh(c) => {
            out.push(check_clh_kvm(config, &inputs.root));
            out.push(Finding::ok(
                "vsock",
                "hybrid vsock built into cloud-hypervisor (no daemon needed)",
            ));
            out.push(check_clh_binary(config, &c.path).await);
        }
    }
    if config.vmm.guest().shared_fs == SharedFs::VirtioFs {
        out.push(check_virtiofsd(config).await);
    }
    out.push(check_host_kernel());
    out.extend(super::cgroups::findings(&inputs.containerd_config));
    out.push(check_kernel(config));
    out.push(check_initrd(config));
    let (binary, major) = check_containerd_binary().await;
    out.push(binary);
    out.extend(containerd::config_findings(
        &inputs.containerd_config,
        major,
    ));
    out
}

/// The host kernel calls the share's safe path operations need (`resources::beneath`).
fn check_host_kernel() -> Finding {
    match crate::resources::beneath::host_kernel_support() {
        Ok(()) => Finding::ok(
            "host kernel",
            "openat2 and the mount API (safe operations in the shared directory)",
        ),
        Err(e) => Finding::fail(
            "host kernel",
            e,
            "run the node on Linux 5.12 or newer; sandboxes cannot be created on this kernel",
        ),
    }
}

fn check_accel(q: &QemuConfig, root: &Path) -> Finding {
    let choice = accel::choose(q.accel, q.arch(), Arch::host(), root);
    match choice.accel {
        Accel::Kvm => Finding::ok("accelerator", format!("KVM ({})", choice.reason)),
        Accel::Tcg => Finding::warn(
            "accelerator",
            format!(
                "TCG software emulation, VMs are slow; {} ({})",
                accel::TCG_IS_NO_ISOLATION_BOUNDARY,
                choice.reason
            ),
            "run on a host with a working KVM (kvm_intel or kvm_amd loaded; nested \
             virtualization enabled on a cloud VM); a kvm_pvm-only host cannot boot a stock guest",
        ),
    }
}

/// cloud-hypervisor has no software emulation: it needs a KVM that can boot a guest.
fn check_clh_kvm(config: &Config, root: &Path) -> Finding {
    let arch = config.vmm.arch();
    let choice = accel::choose(crate::config::AccelMode::Auto, arch, Arch::host(), root);
    match choice.accel {
        Accel::Kvm => Finding::ok("accelerator", format!("KVM ({})", choice.reason)),
        Accel::Tcg => Finding::fail(
            "accelerator",
            format!(
                "cloud-hypervisor needs KVM, which is not usable here ({})",
                choice.reason
            ),
            "run on a host with kvm_intel or kvm_amd, or use the QEMU configuration \
             (configuration-qemu.toml), which falls back to TCG",
        ),
    }
}

async fn check_clh_binary(config: &Config, path: &Path) -> Finding {
    let fix = "install cloud-hypervisor (a static release binary) at the configured path";
    if !is_executable(path) {
        return Finding::fail(
            "cloud-hypervisor",
            format!(
                "{} (from {}) is not an executable file",
                path.display(),
                config.vmm_origin("path")
            ),
            fix,
        );
    }
    match Command::new(path).arg("--version").output().await {
        Ok(o) if o.status.success() => Finding::ok(
            "cloud-hypervisor",
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
        ),
        Ok(o) => Finding::fail(
            "cloud-hypervisor",
            format!(
                "{} --version failed: {}",
                path.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            fix,
        ),
        Err(e) => Finding::fail("cloud-hypervisor", format!("{}: {e}", path.display()), fix),
    }
}

fn check_vsock(config: &Config, q: &QemuConfig, root: &Path) -> Finding {
    let dev = root.join(VHOST_VSOCK_DEV.trim_start_matches('/'));
    match vsock_device::choose(q.vsock, &dev) {
        Err(e) => Finding::fail(
            "vsock",
            e.to_string(),
            "set [hypervisor.qemu] vsock = \"auto\"",
        ),
        Ok((VsockKind::Vhost, why)) => Finding::ok("vsock", why),
        Ok((VsockKind::VhostUser, why)) => {
            let daemon = &q.vhost_user_vsock_daemon;
            if is_executable(daemon) {
                Finding::ok("vsock", format!("{why}; daemon {}", daemon.display()))
            } else {
                Finding::fail(
                    "vsock",
                    format!(
                        "{why}, but {} (from {}) is not an executable file",
                        daemon.display(),
                        config.vmm_origin("vhost_user_vsock_daemon")
                    ),
                    "`make install` (installs vhost-device-vsock 0.3.0), or load the vhost_vsock \
                     kernel module so /dev/vhost-vsock exists",
                )
            }
        }
    }
}

/// QEMU device names the configured machine needs.
pub fn required_devices(q: &QemuConfig) -> Vec<&'static str> {
    let mmio = q.machine_type.uses_mmio();
    let dev =
        |mmio_name: &'static str, pci_name: &'static str| if mmio { mmio_name } else { pci_name };
    let mut need = Vec::new();
    match vsock_device::choose(q.vsock, Path::new(VHOST_VSOCK_DEV)) {
        Ok((VsockKind::Vhost, _)) => need.push(dev("vhost-vsock-device", "vhost-vsock-pci")),
        _ => need.push(dev("vhost-user-vsock-device", "vhost-user-vsock-pci")),
    }
    match q.guest.shared_fs {
        SharedFs::VirtioFs => need.push(dev("vhost-user-fs-device", "vhost-user-fs-pci")),
        SharedFs::Virtio9p => need.push(dev("virtio-9p-device", "virtio-9p-pci")),
        SharedFs::None => {}
    }
    need
}

async fn check_qemu(config: &Config, q: &QemuConfig) -> Vec<Finding> {
    let origin = config.origin(QemuConfig::SECTION, "path");
    if !is_executable(&q.path) {
        return vec![Finding::fail(
            "qemu",
            format!("{} (from {origin}) is not an executable file", q.path.display()),
            "install QEMU (Debian: apt-get install qemu-system-x86 qemu-system-arm) or fix the path",
        )];
    }
    let mut out = Vec::new();
    match host::qemu_version(&q.path).await {
        Ok(v) if v >= MIN_QEMU => out.push(Finding::ok(
            "qemu",
            format!("{} version {}.{}", q.path.display(), v.0, v.1),
        )),
        Ok(v) => out.push(Finding::fail(
            "qemu",
            format!(
                "{} is version {}.{}; at least {}.{} is needed",
                q.path.display(),
                v.0,
                v.1,
                MIN_QEMU.0,
                MIN_QEMU.1
            ),
            "install a newer QEMU",
        )),
        Err(e) => out.push(Finding::fail(
            "qemu",
            format!("{}: {e}", q.path.display()),
            "check that the QEMU binary runs",
        )),
    }
    let devices = help_output(
        &q.path,
        &["-machine", q.machine_type.as_str(), "-device", "help"],
    )
    .await;
    let machines = help_output(&q.path, &["-machine", "help"]).await;
    let missing: Vec<&str> = required_devices(q)
        .into_iter()
        .filter(|d| !devices.contains(&format!("\"{d}\"")))
        .collect();
    let machine_ok = machines
        .lines()
        .any(|l| l.split_whitespace().next() == Some(q.machine_type.as_str()));
    if !machine_ok {
        out.push(Finding::fail(
            "qemu machine",
            format!(
                "{} does not offer machine type {}",
                q.path.display(),
                q.machine_type
            ),
            "pick a machine_type this QEMU supports (microvm or q35 on x86_64, virt on aarch64)",
        ));
    } else if !missing.is_empty() {
        out.push(Finding::fail(
            "qemu devices",
            format!(
                "{} lacks devices {missing:?} for {}",
                q.path.display(),
                q.machine_type
            ),
            "install a QEMU build with vhost-user and virtio-fs support (Debian's has them)",
        ));
    } else {
        out.push(Finding::ok(
            "qemu devices",
            format!("machine {} with {:?}", q.machine_type, required_devices(q)),
        ));
    }
    out
}

async fn help_output(qemu: &Path, args: &[&str]) -> String {
    match Command::new(qemu).args(args).output().await {
        Ok(o) => String::from_utf8_lossy(&o.stdout).to_string(),
        Err(_) => String::new(),
    }
}

async fn check_virtiofsd(config: &Config) -> Finding {
    let q = config.vmm.guest();
    // cloud-hypervisor has no 9p: there the only fix is installing virtiofsd.
    let fix = match config.vmm {
        Vmm::Qemu(_) => {
            "`make install` (installs virtiofsd), Debian: apt-get install virtiofsd, or set \
             shared_fs = \"virtio-9p\""
        }
        Vmm::Clh(_) => "`make install` (installs virtiofsd), Debian: apt-get install virtiofsd",
    };
    if !is_executable(&q.virtio_fs_daemon) {
        return Finding::fail(
            "virtiofsd",
            format!(
                "{} (from {}) is not an executable file",
                q.virtio_fs_daemon.display(),
                config.vmm_origin("virtio_fs_daemon")
            ),
            fix,
        );
    }
    match Command::new(&q.virtio_fs_daemon)
        .arg("--version")
        .output()
        .await
    {
        Ok(o) if o.status.success() => Finding::ok(
            "virtiofsd",
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
        ),
        Ok(o) => Finding::fail(
            "virtiofsd",
            format!(
                "{} --version failed: {}",
                q.virtio_fs_daemon.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            fix,
        ),
        Err(e) => Finding::fail(
            "virtiofsd",
            format!("{}: {e}", q.virtio_fs_daemon.display()),
            fix,
        ),
    }
}

/// The architecture a kernel image was built for, from its header.
pub fn kernel_arch(head: &[u8]) -> Option<Arch> {
    const ELF_MAGIC: &[u8] = b"\x7fELF";
    const EM_X86_64: u16 = 62;
    const EM_AARCH64: u16 = 183;
    if head.starts_with(ELF_MAGIC) && head.len() >= 20 {
        return match u16::from_le_bytes([head[18], head[19]]) {
            EM_X86_64 => Some(Arch::X86_64),
            EM_AARCH64 => Some(Arch::Aarch64),
            _ => None,
        };
    }
    // arm64 Image: "ARM\x64" at offset 56 (Documentation/arm64/booting.rst).
    if head.len() >= 60 && &head[56..60] == b"ARM\x64" {
        return Some(Arch::Aarch64);
    }
    // x86 bzImage: "HdrS" at offset 0x202 (Documentation/x86/boot.rst).
    if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Some(Arch::X86_64);
    }
    None
}

fn read_head(path: &Path, len: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; len];
    let n = f.read(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

fn check_kernel(config: &Config) -> Finding {
    let q = config.vmm.guest();
    let origin = config.vmm_origin("kernel");
    let want = config.vmm.arch();
    match read_head(&q.kernel, 4096) {
        Err(e) => Finding::fail(
            "guest kernel",
            format!("{} (from {origin}): {e}", q.kernel.display()),
            "`make guest` then `make install`, or point kernel at a built guest kernel",
        ),
        Ok(head) => match kernel_arch(&head) {
            Some(a) if a == want => Finding::ok(
                "guest kernel",
                format!("{} ({})", q.kernel.display(), a.name()),
            ),
            Some(a) => Finding::fail(
                "guest kernel",
                format!(
                    "{} is an {} kernel but {} needs {}",
                    q.kernel.display(),
                    a.name(),
                    match &config.vmm {
                        Vmm::Qemu(q) => format!("machine_type {}", q.machine_type),
                        Vmm::Clh(_) => "cloud-hypervisor".to_string(),
                    },
                    want.name()
                ),
                "use the kernel built for the guest arch (build/guest/<arch>/)",
            ),
            None => Finding::fail(
                "guest kernel",
                format!(
                    "{} is not a kernel image this runtime can boot",
                    q.kernel.display()
                ),
                "use vmlinux (x86_64, PVH) or Image (arm64) from `make guest`",
            ),
        },
    }
}

/// What an initrd file looks like from its first bytes.
pub fn initrd_format(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"070701") || head.starts_with(b"070702") {
        Some("cpio")
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if head.starts_with(&[0x02, 0x21, 0x4c, 0x18])
        || head.starts_with(&[0x04, 0x22, 0x4d, 0x18])
    {
        Some("lz4")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else {
        None
    }
}

fn check_initrd(config: &Config) -> Finding {
    let q = config.vmm.guest();
    let origin = config.vmm_origin("initrd");
    match read_head(&q.initrd, 16) {
        Err(e) => Finding::fail(
            "guest initrd",
            format!("{} (from {origin}): {e}", q.initrd.display()),
            "`make guest` then `make install`, or point initrd at a built initrd",
        ),
        Ok(head) => match initrd_format(&head) {
            Some(f) => {
                let size = std::fs::metadata(&q.initrd).map(|m| m.len()).unwrap_or(0);
                Finding::ok(
                    "guest initrd",
                    format!("{} ({f}, {} KiB)", q.initrd.display(), size / 1024),
                )
            }
            None => Finding::fail(
                "guest initrd",
                format!(
                    "{} is not a cpio archive (plain or compressed)",
                    q.initrd.display()
                ),
                "use initrd.img from `make guest`",
            ),
        },
    }
}

/// `containerd --version`, and the major version it names.
async fn check_containerd_binary() -> (Finding, Option<u32>) {
    match Command::new("containerd").arg("--version").output().await {
        Ok(o) if o.status.success() => {
            let version = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let major = containerd::containerd_major(&version);
            (Finding::ok("containerd", version), major)
        }
        _ => (
            Finding::fail(
                "containerd",
                "containerd is not on PATH",
                "install containerd 1.6 or newer (Debian: apt-get install containerd)",
            ),
            None,
        ),
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MachineType;

    #[test]
    fn tcg_is_named_as_no_isolation_boundary() {
        let root = tempfile::tempdir().expect("tempdir");
        let q = QemuConfig::defaults_for(Arch::host());
        let f = check_accel(&q, root.path());
        assert_eq!(f.status, Status::Warn);
        assert!(
            f.detail.contains("not a hardware isolation boundary"),
            "{}",
            f.detail
        );
    }

    #[test]
    fn kernel_arch_reads_elf_image_and_bzimage_headers() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[18..20].copy_from_slice(&62u16.to_le_bytes());
        assert_eq!(kernel_arch(&elf), Some(Arch::X86_64));
        elf[18..20].copy_from_slice(&183u16.to_le_bytes());
        assert_eq!(kernel_arch(&elf), Some(Arch::Aarch64));
        let mut image = vec![0u8; 64];
        image[56..60].copy_from_slice(b"ARM\x64");
        assert_eq!(kernel_arch(&image), Some(Arch::Aarch64));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(kernel_arch(&bz), Some(Arch::X86_64));
        assert_eq!(kernel_arch(b"hello"), None);
    }

    #[test]
    fn initrd_format_recognises_cpio_and_compression() {
        assert_eq!(initrd_format(b"070701000000"), Some("cpio"));
        assert_eq!(initrd_format(&[0x1f, 0x8b, 8, 0]), Some("gzip"));
        assert_eq!(initrd_format(&[0x02, 0x21, 0x4c, 0x18]), Some("lz4"));
        assert_eq!(initrd_format(b"PK\x03\x04"), None);
    }

    fn not_found(dir: &Path) -> Result<Loaded, ConfigError> {
        let a = dir.join("etc.toml");
        let b = dir.join("defaults.toml");
        crate::config::load_from(&Default::default(), None, &[a.as_path(), b.as_path()])
    }

    #[tokio::test]
    async fn no_configuration_file_runs_every_host_check_with_the_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inputs = CheckInputs {
            root: dir.path().to_path_buf(),
            containerd_config: dir.path().join("containerd.toml"),
        };
        let f = run_all(not_found(dir.path()), &inputs).await;
        let first = &f[0];
        assert_eq!((first.what, first.status), ("configuration", Status::Fail));
        assert!(
            first.detail.contains("no configuration file found")
                && first.detail.contains("etc.toml")
                && first.detail.contains("built-in defaults"),
            "{}",
            first.detail
        );
        assert!(first
            .fix
            .as_deref()
            .unwrap_or_default()
            .contains("make install"));
        let whats: Vec<&str> = f.iter().map(|f| f.what).collect();
        for want in [
            "accelerator",
            "vsock",
            "qemu",
            "host kernel",
            "guest kernel",
            "guest initrd",
            "containerd",
            "containerd config",
        ] {
            assert!(whats.contains(&want), "{want} checked: {whats:?}");
        }
        // Paths come from the defaults, and say so.
        let kernel = f.iter().find(|f| f.what == "guest kernel").expect("kernel");
        assert!(
            kernel.detail.contains(crate::config::INSTALLED_KERNEL)
                && kernel.detail.contains("built-in default"),
            "{}",
            kernel.detail
        );
    }

    #[tokio::test]
    async fn a_bad_configuration_file_stops_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[hypervisor.qemu]\ndefault_vcpus = \"many\"\n").expect("write");
        let loaded = crate::config::load_from(
            &crate::config::LoadRequest {
                config_path: Some(bad),
                ..Default::default()
            },
            None,
            &[],
        );
        let f = run_all(loaded, &CheckInputs::default()).await;
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].status, Status::Fail);
        assert!(f[0].detail.contains("default_vcpus"), "{}", f[0].detail);
    }

    #[test]
    fn required_devices_follow_machine_type_and_shared_fs() {
        let mut c = QemuConfig::defaults_for(Arch::X86_64);
        c.vsock = crate::config::VsockMode::VhostUser;
        c.machine_type = MachineType::Microvm;
        assert_eq!(
            required_devices(&c),
            vec!["vhost-user-vsock-device", "vhost-user-fs-device"]
        );
        c.machine_type = MachineType::Q35;
        c.guest.shared_fs = SharedFs::Virtio9p;
        assert_eq!(
            required_devices(&c),
            vec!["vhost-user-vsock-pci", "virtio-9p-pci"]
        );
    }
}
