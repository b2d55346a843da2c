use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const FULL: &str = r#"
[hypervisor.qemu]
path = "/opt/qemu/bin/qemu-system-x86_64"
kernel = "/opt/k/vmlinux"
initrd = "/opt/k/initrd.img"
machine_type = "q35"
kernel_params = "foo=1 bar"
default_vcpus = 2
default_maxvcpus = 4
default_memory = 1024
memory_slots = 8
shared_fs = "virtio-9p"
virtio_fs_daemon = "/opt/bin/virtiofsd"
virtio_fs_cache = "never"
virtio_fs_extra_args = ["--thread-pool-size=4", "--xattr"]
enable_debug = true
accel = "tcg"
vsock = "vhost-user"
vhost_user_vsock_daemon = "/opt/bin/vhost-device-vsock"
seccompsandbox = "on,spawn=deny"

[agent.kata]
dial_timeout = 12
enable_debug = true
debug_console_enabled = true

[runtime]
enable_debug = true
sandbox_cgroup_only = true
internetworking_model = "none"
enable_annotations = ["default_vcpus", "kernel_.*"]
static_sandbox_resource_mgmt = true

[factory]
vm_cache_number = 3
"#;

fn parse(text: &str) -> Result<(Config, Vec<String>), ConfigError> {
    Config::parse_str_for_host(text, Path::new("/etc/x.toml"), Arch::X86_64)
}

fn err(text: &str) -> String {
    parse(text).expect_err("must be rejected").to_string()
}

#[test]
fn every_key_is_read() {
    let (c, warnings) = parse(FULL).expect("valid");
    assert!(warnings.is_empty(), "{warnings:?}");
    let q = c.vmm.qemu().expect("[hypervisor.qemu]");
    let h = &q.guest;
    assert_eq!(q.path, PathBuf::from("/opt/qemu/bin/qemu-system-x86_64"));
    assert_eq!(h.kernel, PathBuf::from("/opt/k/vmlinux"));
    assert_eq!(h.initrd, PathBuf::from("/opt/k/initrd.img"));
    assert_eq!(q.machine_type, MachineType::Q35);
    assert_eq!(h.kernel_params, "foo=1 bar");
    assert_eq!(h.default_vcpus, 2);
    assert_eq!(h.default_maxvcpus, 4);
    assert_eq!(h.default_memory, 1024);
    assert_eq!(q.memory_slots, 8);
    assert_eq!(h.shared_fs, SharedFs::Virtio9p);
    assert_eq!(h.virtio_fs_daemon, PathBuf::from("/opt/bin/virtiofsd"));
    assert_eq!(h.virtio_fs_cache, VirtioFsCache::Never);
    assert_eq!(h.virtio_fs_extra_args, ["--thread-pool-size=4", "--xattr"]);
    assert!(h.enable_debug);
    assert_eq!(q.accel, AccelMode::Tcg);
    assert_eq!(q.vsock, VsockMode::VhostUser);
    assert_eq!(
        q.vhost_user_vsock_daemon,
        PathBuf::from("/opt/bin/vhost-device-vsock")
    );
    assert_eq!(q.seccomp_sandbox, "on,spawn=deny");
    assert_eq!(c.agent.dial_timeout, Duration::from_secs(12));
    assert!(c.agent.enable_debug);
    assert!(c.agent.debug_console_enabled);
    assert!(c.runtime.enable_debug);
    assert!(c.runtime.sandbox_cgroup_only);
    assert_eq!(c.runtime.internetworking_model, InterNetworkingModel::None);
    assert_eq!(c.runtime.enable_annotations, ["default_vcpus", "kernel_.*"]);
    assert!(c.runtime.static_sandbox_resource_mgmt);
    assert_eq!(c.factory.vm_cache_number, 3);
    assert_eq!(c.source.as_deref(), Some(Path::new("/etc/x.toml")));
}

#[test]
fn vm_pool_size_defaults_on_and_is_bounded() {
    let (c, _) = parse("[hypervisor.qemu]\n").expect("valid");
    assert_eq!(c.factory.vm_cache_number, DEFAULT_VM_CACHE_NUMBER);
    let (c, _) = parse("[hypervisor.qemu]\n[factory]\nvm_cache_number = 0\n").expect("valid");
    assert_eq!(c.factory.vm_cache_number, 0, "0 turns the pool off");
    let e = err("[hypervisor.qemu]\n[factory]\nvm_cache_number = 17\n");
    assert!(e.contains("[factory] vm_cache_number = 17"), "{e}");
    assert!(e.contains("between 0 and 16"), "{e}");
}

#[test]
fn defaults_x86_64() {
    let (c, w) = parse("[hypervisor.qemu]\n").expect("valid");
    assert!(w.is_empty());
    let q = c.vmm.qemu().expect("[hypervisor.qemu]");
    let h = &q.guest;
    assert_eq!(q.machine_type, MachineType::Microvm);
    assert_eq!(q.path, PathBuf::from("/usr/bin/qemu-system-x86_64"));
    assert_eq!(h.kernel, PathBuf::from(INSTALLED_KERNEL));
    assert_eq!(h.initrd, PathBuf::from(INSTALLED_INITRD));
    assert_eq!(q.arch().console(), "ttyS0");
    assert_eq!(h.default_vcpus, 1);
    assert_eq!(h.default_memory, 512);
    assert_eq!(h.shared_fs, SharedFs::VirtioFs);
    assert_eq!(h.virtio_fs_cache, VirtioFsCache::Auto);
    assert_eq!(q.accel, AccelMode::Auto);
    assert_eq!(q.vsock, VsockMode::Auto);
    assert_eq!(q.seccomp_sandbox, DEFAULT_SECCOMP_SANDBOX);
    assert_eq!(c.agent, AgentConfig::default());
    assert_eq!(c.runtime, RuntimeConfig::default());
}

#[test]
fn defaults_aarch64_host_and_machine_type_decides_arch() {
    let (c, _) = Config::parse_str_for_host("[hypervisor.qemu]\n", Path::new("/x"), Arch::Aarch64)
        .expect("valid");
    let q = c.vmm.qemu().expect("[hypervisor.qemu]");
    assert_eq!(q.machine_type, MachineType::Virt);
    assert_eq!(q.path, PathBuf::from("/usr/bin/qemu-system-aarch64"));
    assert_eq!(q.arch().console(), "ttyAMA0");
    // An arm64 guest config on an x86_64 host: defaults follow the machine type.
    let (c, _) = parse("[hypervisor.qemu]\nmachine_type = \"virt\"\n").expect("valid");
    assert_eq!(c.vmm.path(), Path::new("/usr/bin/qemu-system-aarch64"));
    assert_eq!(c.vmm.arch(), Arch::Aarch64);
}

#[test]
fn unknown_keys_are_warnings() {
    let (_, w) = parse(
        "[hypervisor.qemu]\nblock_device_driver = \"virtio-scsi\"\n[agent.kata]\nkernel_modules = []\n[factory]\nenable_template = false\n",
    )
    .expect("valid");
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(
        w.contains(
            &"/etc/x.toml: unknown key [hypervisor.qemu] block_device_driver (ignored)".to_string()
        ),
        "{w:?}"
    );
    assert!(
        w.iter().any(|l| l.contains("[agent.kata] kernel_modules")),
        "{w:?}"
    );
    assert!(w.iter().any(|l| l.contains("factory")), "{w:?}");
}

#[test]
fn bad_values_name_file_key_and_allowed_values() {
    let q = |kv: &str| err(&format!("[hypervisor.qemu]\n{kv}\n"));
    assert_eq!(
        q("default_memory = 0"),
        "/etc/x.toml: [hypervisor.qemu] default_memory = 0: must be between 64 and 1048576"
    );
    assert_eq!(
        q("default_vcpus = 0"),
        "/etc/x.toml: [hypervisor.qemu] default_vcpus = 0: must be between 1 and 255"
    );
    assert!(
        q("default_vcpus = 4\ndefault_maxvcpus = 2").contains("default_maxvcpus = 2: must be 0")
    );
    assert_eq!(
        q("shared_fs = \"nfs\""),
        "/etc/x.toml: [hypervisor.qemu] shared_fs = \"nfs\": must be one of \"virtio-fs\", \"virtio-9p\", \"none\""
    );
    assert_eq!(
        q("machine_type = \"pc\""),
        "/etc/x.toml: [hypervisor.qemu] machine_type = \"pc\": must be one of \"microvm\", \"q35\", \"virt\""
    );
    assert!(q("virtio_fs_cache = \"sometimes\"")
        .contains("virtio_fs_cache = \"sometimes\": must be one of \"auto\", \"always\", \"never\", \"metadata\""));
    assert!(
        q("accel = \"hvf\"").contains("accel = \"hvf\": must be one of \"auto\", \"kvm\", \"tcg\"")
    );
    assert!(q("vsock = \"tcp\"")
        .contains("vsock = \"tcp\": must be one of \"auto\", \"vhost\", \"vhost-user\""));
    assert!(q("kernel = \"vmlinux\"")
        .contains("[hypervisor.qemu] kernel = \"vmlinux\": must be an absolute path"));
    assert!(q("virtio_fs_extra_args = [\"cache\"]").contains("virtio_fs_extra_args"));
    // seccompsandbox: "" turns it off; otherwise on/off and the sub-options QEMU knows.
    let (c, _) = parse("[hypervisor.qemu]\nseccompsandbox = \"\"\n").expect("off");
    assert_eq!(c.vmm.qemu().map(|q| q.seccomp_sandbox.as_str()), Some(""));
    assert!(q("seccompsandbox = \"yes\"")
        .contains("seccompsandbox = \"yes\": must be \"\" (no seccomp sandbox) or start with"));
    assert!(q("seccompsandbox = \"on,spawn=maybe\"").contains("spawn= must be one of allow, deny"));
    assert!(q("seccompsandbox = \"on,network=deny\"")
        .contains("unknown sub-option \"network=deny\": the sub-options are obsolete, elevateprivileges, spawn, resourcecontrol"));
    assert!(
        parse("[hypervisor.qemu]\nseccompsandbox = \"on,elevateprivileges=children\"\n").is_ok()
    );
    assert!(err("[hypervisor.qemu]\n[agent.kata]\ndial_timeout = 0\n")
        .contains("[agent.kata] dial_timeout = 0: must be between 1 and 600"));
    assert!(err("[hypervisor.qemu]\n[runtime]\ninternetworking_model = \"bridged\"\n")
        .contains("[runtime] internetworking_model = \"bridged\": must be one of \"tcfilter\", \"macvtap\", \"none\""));
    // Wrong TOML types are syntax errors, still naming the file and showing the line.
    let e = q("default_memory = \"lots\"");
    assert!(e.starts_with("/etc/x.toml: "), "{e}");
    assert!(e.contains("default_memory"), "{e}");
    // No hypervisor section, or two.
    assert!(err("[runtime]\n").contains("no [hypervisor.qemu] or [hypervisor.clh] section"));
    assert!(err("[hypervisor.qemu]\n[hypervisor.clh]\n")
        .contains("both [hypervisor.qemu] and [hypervisor.clh]"));
}

#[test]
fn shipped_config_is_valid_and_warning_free() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/configuration-qemu.toml");
    let (c, w) = Config::parse_file(&path).expect("shipped config parses");
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(c.vmm.guest().kernel, PathBuf::from(INSTALLED_KERNEL));
    assert_eq!(c.vmm.guest().initrd, PathBuf::from(INSTALLED_INITRD));
    // build-guest.sh rewrites these by key name: each exactly once, uncommented.
    let text = std::fs::read_to_string(&path).expect("read");
    for key in [
        "kernel",
        "initrd",
        "path",
        "virtio_fs_daemon",
        "vhost_user_vsock_daemon",
        "machine_type",
    ] {
        let n = text
            .lines()
            .filter(|l| l.starts_with(&format!("{key} = ")))
            .count();
        assert_eq!(
            n, 1,
            "{key} must appear exactly once at the start of a line"
        );
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn lookup_order() {
    let d = tempfile::tempdir().expect("tempdir");
    let etc = d.path().join("etc");
    let share = d.path().join("share");
    std::fs::create_dir_all(&etc).expect("etc");
    std::fs::create_dir_all(&share).expect("share");
    let etc_file = etc.join("configuration.toml");
    let share_file = write(
        &share,
        "configuration.toml",
        "[hypervisor.qemu]\ndefault_vcpus = 2\n",
    );
    let defaults = [etc_file.as_path(), share_file.as_path()];
    let req = LoadRequest::default();

    // Only the packaged default exists.
    let l = load_from(&req, None, &defaults).expect("share");
    assert_eq!(l.path, share_file);
    assert_eq!(l.config.vmm.guest().default_vcpus, 2);
    // /etc wins over it.
    write(
        &etc,
        "configuration.toml",
        "[hypervisor.qemu]\ndefault_vcpus = 3\n",
    );
    assert_eq!(
        load_from(&req, None, &defaults).expect("etc").path,
        etc_file
    );
    // $KATA_CONF_FILE wins over both.
    let env_file = write(
        d.path(),
        "env.toml",
        "[hypervisor.qemu]\ndefault_vcpus = 4\n",
    );
    let l = load_from(&req, Some(env_file.clone()), &defaults).expect("env");
    assert_eq!(l.path, env_file);
    // containerd's ConfigPath wins over the environment.
    let opt_file = write(
        d.path(),
        "opt.toml",
        "[hypervisor.qemu]\ndefault_vcpus = 5\nbogus = 1\n",
    );
    let req = LoadRequest {
        config_path: Some(opt_file.clone()),
        ..Default::default()
    };
    let l = load_from(&req, Some(env_file), &defaults).expect("opt");
    assert_eq!(l.path, opt_file);
    assert_eq!(l.config.vmm.guest().default_vcpus, 5);
    assert_eq!(l.warnings.len(), 1);
    // An explicitly named file must exist.
    let req = LoadRequest {
        config_path: Some(d.path().join("missing.toml")),
        ..Default::default()
    };
    let e = load_from(&req, None, &defaults)
        .expect_err("missing")
        .to_string();
    assert!(e.contains("missing.toml"), "{e}");
    // Nothing at all.
    let none = [d.path().join("a.toml"), d.path().join("b.toml")];
    let none: Vec<&Path> = none.iter().map(PathBuf::as_path).collect();
    let e = load_from(&LoadRequest::default(), None, &none)
        .expect_err("none")
        .to_string();
    assert!(
        e.contains("no configuration file found") && e.contains("a.toml"),
        "{e}"
    );
}

#[test]
fn config_path_annotation() {
    let d = tempfile::tempdir().expect("tempdir");
    let base = write(d.path(), "configuration.toml", "[hypervisor.qemu]\n");
    let other = write(
        d.path(),
        "other.toml",
        "[hypervisor.qemu]\ndefault_vcpus = 2\n",
    );
    let defaults = [base.as_path()];
    let ann = |p: &Path| LoadRequest {
        annotations: HashMap::from([(ANNOTATION_CONFIG_PATH.to_string(), p.display().to_string())]),
        config_path: None,
    };
    // Not allowed by the operator's file.
    let e = load_from(&ann(&other), None, &defaults)
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains(ANNOTATION_CONFIG_PATH) && e.contains("not allowed"),
        "{e}"
    );
    // Allowed: a file next to the operator's.
    write(
        d.path(),
        "configuration.toml",
        "[hypervisor.qemu]\n[runtime]\nenable_annotations = [\"config_path\"]\n",
    );
    let l = load_from(&ann(&other), None, &defaults).expect("allowed");
    assert_eq!(l.path, other);
    assert_eq!(l.config.vmm.guest().default_vcpus, 2);
    // Never a file elsewhere on the host.
    let e = load_from(&ann(Path::new("/tmp/evil.toml")), None, &defaults)
        .expect_err("outside")
        .to_string();
    assert!(e.contains("not in a configuration directory"), "{e}");
}

#[test]
fn annotation_overrides_follow_the_allowlist() {
    let (mut c, _) = parse(FULL).expect("valid"); // allows default_vcpus and kernel_.*
    let a = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{ANNOTATION_PREFIX}{k}"), v.to_string()))
            .collect()
    };
    let o = annotation_overrides(&c, &a(&[("default_vcpus", "3"), ("kernel_params", "x=1")]))
        .expect("allowed");
    assert_eq!(o.default_vcpus, Some(3));
    assert_eq!(o.kernel_params.as_deref(), Some("x=1"));
    o.apply(&mut c);
    assert_eq!(c.vmm.guest().default_vcpus, 3);
    assert_eq!(c.vmm.guest().kernel_params, "foo=1 bar x=1");

    let e = annotation_overrides(&c, &a(&[("default_memory", "2048")]))
        .expect_err("not allowed")
        .to_string();
    assert!(
        e.contains("io.katacontainers.config.hypervisor.default_memory")
            && e.contains("not allowed")
            && e.contains("/etc/x.toml"),
        "{e}"
    );
    let e = annotation_overrides(&c, &a(&[("default_vcpus", "lots")]))
        .expect_err("bad value")
        .to_string();
    assert!(
        e.contains("\"lots\": must be a whole number between 1 and 255"),
        "{e}"
    );
    let o = annotation_overrides(&c, &a(&[("enable_iommu", "true")])).expect("ignored");
    assert_eq!(
        o.ignored,
        ["io.katacontainers.config.hypervisor.enable_iommu"]
    );
    // Other annotations are not ours.
    let other = HashMap::from([("io.kubernetes.cri.sandbox-id".to_string(), "x".to_string())]);
    assert_eq!(
        annotation_overrides(&c, &other).expect("fine"),
        Overrides::default()
    );
}

#[test]
fn clh_section_selects_cloud_hypervisor() {
    let (c, w) = parse(
        "[hypervisor.clh]\npath = \"/opt/clh\"\nkernel = \"/k/vmlinux\"\ndefault_memory = 256\nmachine_type = \"q35\"\n",
    )
    .expect("valid");
    let clh = c
        .vmm
        .clh()
        .expect("[hypervisor.clh] selects cloud-hypervisor");
    assert_eq!(clh.path, PathBuf::from("/opt/clh"));
    assert_eq!(clh.guest.kernel, PathBuf::from("/k/vmlinux"));
    assert_eq!(clh.guest.default_memory, 256);
    assert_eq!(
        w,
        ["/etc/x.toml: [hypervisor.clh] machine_type is not used by cloud-hypervisor (ignored)"]
    );
    // Errors name the clh section; 9p is not offered.
    assert_eq!(
        err("[hypervisor.clh]\nshared_fs = \"virtio-9p\"\n"),
        "/etc/x.toml: [hypervisor.clh] shared_fs = \"virtio-9p\": must be one of \"virtio-fs\", \"none\""
    );
    assert!(
        err("[hypervisor.clh]\ndefault_vcpus = 0\n").contains("[hypervisor.clh] default_vcpus = 0")
    );
    // Default binary.
    let (c, _) = parse("[hypervisor.clh]\n").expect("valid");
    assert_eq!(
        c.vmm.clh().map(|c| c.path.as_path()),
        Some(Path::new(super::DEFAULT_CLH_PATH))
    );
    let (c, _) = parse("[hypervisor.qemu]\n").expect("valid");
    assert!(matches!(c.vmm, Vmm::Qemu(_)));
}

#[test]
fn shipped_clh_config_is_valid_and_warning_free() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/configuration-clh.toml");
    let (c, w) = Config::parse_file(&path).expect("shipped clh config parses");
    assert!(w.is_empty(), "{w:?}");
    assert!(matches!(c.vmm, Vmm::Clh(_)));
}

#[test]
fn load_reads_kata_conf_file_from_the_environment() {
    let d = tempfile::tempdir().expect("tempdir");
    let file = write(
        d.path(),
        "env.toml",
        "[hypervisor.qemu]\ndefault_vcpus = 3\n",
    );
    // No other test reads this variable.
    std::env::set_var(ENV_CONFIG_FILE, &file);
    let loaded = load(&LoadRequest::default());
    std::env::remove_var(ENV_CONFIG_FILE);
    let loaded = loaded.expect("loads $KATA_CONF_FILE");
    assert_eq!(loaded.path, file);
    assert_eq!(loaded.config.vmm.guest().default_vcpus, 3);
}
