//! `kata-ctl env`: the effective configuration, each value with where it came from, and the
//! decisions the runtime derives from the host (accelerator, vsock transport).

use std::path::Path;

use crate::config::{AccelMode, Arch, Config, DEFAULT_CONFIG_PATHS, ENV_CONFIG_FILE};
use crate::hypervisor::accel;
use crate::hypervisor::host;
use crate::hypervisor::qemu::vsock_device::{self, VHOST_VSOCK_DEV};

/// One effective setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub section: &'static str,
    pub key: &'static str,
    pub value: String,
    /// "file" when the configuration file sets it, else the default it fell back to.
    pub origin: String,
}

fn quoted(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

fn list(v: &[String]) -> String {
    format!("{v:?}")
}

/// Every key of the configuration with its effective value: the selected hypervisor's
/// section, `[agent.kata]`, `[runtime]`, `[factory]`.
pub fn values(c: &Config) -> Vec<(&'static str, &'static str, String)> {
    let sec = c.vmm.section();
    let g = c.vmm.guest();
    let q = c.vmm.qemu();
    let a = &c.agent;
    let r = &c.runtime;
    const AGENT: &str = "agent.kata";
    const RUNTIME: &str = "runtime";
    let mut v = vec![
        (sec, "path", quoted(c.vmm.path())),
        (sec, "kernel", quoted(&g.kernel)),
        (sec, "initrd", quoted(&g.initrd)),
    ];
    if let Some(q) = q {
        v.push((
            sec,
            "machine_type",
            format!("{:?}", q.machine_type.as_str()),
        ));
    }
    v.extend([
        (sec, "kernel_params", format!("{:?}", g.kernel_params)),
        (sec, "default_vcpus", g.default_vcpus.to_string()),
        (sec, "default_maxvcpus", g.default_maxvcpus.to_string()),
        (sec, "default_memory", g.default_memory.to_string()),
    ]);
    if let Some(q) = q {
        v.push((sec, "memory_slots", q.memory_slots.to_string()));
    }
    v.extend([
        (sec, "shared_fs", format!("{:?}", g.shared_fs.as_str())),
        (sec, "virtio_fs_daemon", quoted(&g.virtio_fs_daemon)),
        (
            sec,
            "virtio_fs_cache",
            format!("{:?}", g.virtio_fs_cache.as_str()),
        ),
        (sec, "virtio_fs_extra_args", list(&g.virtio_fs_extra_args)),
        (sec, "enable_debug", g.enable_debug.to_string()),
    ]);
    if let Some(q) = q {
        v.extend([
            (sec, "accel", format!("{:?}", q.accel.as_str())),
            (sec, "vsock", format!("{:?}", q.vsock.as_str())),
            (
                sec,
                "vhost_user_vsock_daemon",
                quoted(&q.vhost_user_vsock_daemon),
            ),
            (sec, "seccompsandbox", format!("{:?}", q.seccomp_sandbox)),
        ]);
    }
    v.extend([
        (AGENT, "dial_timeout", a.dial_timeout.as_secs().to_string()),
        (AGENT, "enable_debug", a.enable_debug.to_string()),
        (
            AGENT,
            "debug_console_enabled",
            a.debug_console_enabled.to_string(),
        ),
        (RUNTIME, "enable_debug", r.enable_debug.to_string()),
        (
            RUNTIME,
            "sandbox_cgroup_only",
            r.sandbox_cgroup_only.to_string(),
        ),
        (
            RUNTIME,
            "internetworking_model",
            format!("{:?}", r.internetworking_model.as_str()),
        ),
        (RUNTIME, "enable_annotations", list(&r.enable_annotations)),
        (
            RUNTIME,
            "static_sandbox_resource_mgmt",
            r.static_sandbox_resource_mgmt.to_string(),
        ),
        (
            "factory",
            "vm_cache_number",
            c.factory.vm_cache_number.to_string(),
        ),
    ]);
    v
}

/// Whether the TOML text sets `[section] key` (section written dotted, e.g. "hypervisor.qemu").
pub fn file_sets(doc: &toml::Value, section: &str, key: &str) -> bool {
    let mut node = Some(doc);
    for part in section.split('.') {
        node = node.and_then(|n| n.get(part));
    }
    node.and_then(|n| n.get(key)).is_some()
}

/// The effective settings of `config`, read from `file_text`, with their origins.
pub fn entries(config: &Config, file_text: &str) -> Vec<Entry> {
    let doc: toml::Value = file_text
        .parse()
        .unwrap_or(toml::Value::Table(Default::default()));
    let default_origin = format!("default for {}", config.vmm.arch().name());
    values(config)
        .into_iter()
        .map(|(section, key, value)| Entry {
            section,
            key,
            value,
            origin: if file_sets(&doc, section, key) {
                "file".to_string()
            } else {
                default_origin.clone()
            },
        })
        .collect()
}

/// Why this configuration file was the one chosen (the runtime's lookup order).
pub fn file_reason(explicit: bool) -> String {
    if explicit {
        "given with --config".to_string()
    } else if std::env::var_os(ENV_CONFIG_FILE).is_some_and(|v| !v.is_empty()) {
        format!("from ${ENV_CONFIG_FILE}")
    } else {
        format!("first existing of {}", DEFAULT_CONFIG_PATHS.join(", "))
    }
}

/// The whole report as text.
pub fn render(config: &Config, path: &Path, file_text: &str, explicit: bool) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "# configuration file: {} ({})\n",
        path.display(),
        file_reason(explicit)
    ));
    let mut section = "";
    for e in entries(config, file_text) {
        if e.section != section {
            section = e.section;
            out.push_str(&format!("\n[{section}]\n"));
        }
        out.push_str(&format!("{} = {}    # {}\n", e.key, e.value, e.origin));
    }
    // cloud-hypervisor has no accel or vsock key: KVM only (`auto` tells whether it is
    // usable), and its own hybrid vsock.
    let q = config.vmm.qemu();
    let accel_mode = q.map_or(AccelMode::Auto, |q| q.accel);
    let accel = accel::choose(accel_mode, config.vmm.arch(), Arch::host(), Path::new("/"));
    out.push_str("\n# derived from this host\n");
    out.push_str(&format!(
        "# accelerator: {:?} ({})\n",
        accel.accel, accel.reason
    ));
    match q.map(|q| vsock_device::choose(q.vsock, Path::new(VHOST_VSOCK_DEV))) {
        Some(Ok((kind, why))) => out.push_str(&format!("# vsock: {kind:?} ({why})\n")),
        Some(Err(e)) => out.push_str(&format!("# vsock: unusable: {e}\n")),
        None => out.push_str("# vsock: hybrid vsock built into cloud-hypervisor\n"),
    }
    match host::tsc_khz() {
        Some(k) => out.push_str(&format!("# host TSC: {k} kHz (passed to microvm guests)\n")),
        None => out.push_str("# host TSC: unknown\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_say_file_or_default() {
        let text = "[hypervisor.qemu]\ndefault_memory = 1024\n[agent.kata]\ndial_timeout = 5\n";
        let (config, _) = Config::parse_str_for_host(text, Path::new("/tmp/t.toml"), Arch::X86_64)
            .expect("valid config");
        let e = entries(&config, text);
        let get = |s: &str, k: &str| {
            e.iter()
                .find(|e| e.section == s && e.key == k)
                .cloned()
                .expect("entry present")
        };
        let mem = get("hypervisor.qemu", "default_memory");
        assert_eq!((mem.value.as_str(), mem.origin.as_str()), ("1024", "file"));
        let dial = get("agent.kata", "dial_timeout");
        assert_eq!((dial.value.as_str(), dial.origin.as_str()), ("5", "file"));
        let vcpus = get("hypervisor.qemu", "default_vcpus");
        assert_eq!(vcpus.origin, "default for x86_64");
        // Every key appears once.
        let mut keys: Vec<(&str, &str)> = e.iter().map(|e| (e.section, e.key)).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), e.len());
    }

    #[test]
    fn a_clh_file_lists_its_own_section() {
        let text = "[hypervisor.clh]\ndefault_memory = 1024\n";
        let (config, _) = Config::parse_str_for_host(text, Path::new("/tmp/t.toml"), Arch::X86_64)
            .expect("valid config");
        let e = entries(&config, text);
        let mem = e
            .iter()
            .find(|e| e.section == "hypervisor.clh" && e.key == "default_memory")
            .expect("entry present");
        assert_eq!((mem.value.as_str(), mem.origin.as_str()), ("1024", "file"));
        assert!(e.iter().all(|e| e.section != "hypervisor.qemu"), "{e:?}");
        // Exactly the keys the shipped clh file documents.
        let shipped: toml::Value =
            toml::from_str(include_str!("../../../configs/configuration-clh.toml"))
                .expect("valid TOML");
        let mut documented: Vec<&str> = shipped["hypervisor"]["clh"]
            .as_table()
            .expect("[hypervisor.clh]")
            .keys()
            .map(String::as_str)
            .collect();
        let mut listed: Vec<&str> = e
            .iter()
            .filter(|e| e.section == "hypervisor.clh")
            .map(|e| e.key)
            .collect();
        documented.sort_unstable();
        listed.sort_unstable();
        assert_eq!(listed, documented);
        let r = render(&config, Path::new("/tmp/t.toml"), text, true);
        assert!(
            r.contains("# vsock: hybrid vsock built into cloud-hypervisor"),
            "{r}"
        );
    }

    #[test]
    fn render_names_the_file_and_host_decisions() {
        let text = "[hypervisor.qemu]\naccel = \"tcg\"\n";
        let (config, _) = Config::parse_str_for_host(text, Path::new("/x/c.toml"), Arch::X86_64)
            .expect("valid config");
        let r = render(&config, Path::new("/x/c.toml"), text, true);
        assert!(r.contains("# configuration file: /x/c.toml (given with --config)"));
        assert!(r.contains("accel = \"tcg\"    # file"));
        assert!(r.contains("# accelerator: Tcg (accel=tcg: TCG as configured)"));
    }
}

#[cfg(test)]
mod doc_tests {
    use super::*;

    /// docs/configuration.md's table must list every key with the code's default, so the
    /// reference cannot drift from the runtime.
    #[test]
    fn configuration_reference_lists_every_key_with_its_default() {
        let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let doc = std::fs::read_to_string(&doc_path).expect("docs/configuration.md is readable");
        let defaults = Config::defaults_for(Arch::X86_64);
        for (section, key, value) in values(&defaults) {
            let row = format!("| {section} | {key} | {value} |");
            assert!(
                doc.contains(&row),
                "{} lacks the row starting {row:?}",
                doc_path.display()
            );
        }
    }
}
