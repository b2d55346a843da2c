//! kata-ctl against this host and the built guest: `check` passes for a containerd config that
//! routes to us by both handlers (the shipped configs/containerd file) and fails (exit 1, with
//! a fix) for one that does not; with no configuration file installed it still checks the
//! host, on the built-in defaults; `env` shows every value with its origin.

use kata_e2e::*;

fn kata_ctl(args: &[&str]) -> std::process::Output {
    let bin = top_dir().join("target/release/kata-ctl");
    require_built(&[bin.clone(), top_dir().join("build/configuration-qemu.toml")]);
    bounded(bin, QUICK_LIMIT)
        .args(args)
        .output()
        .expect("running kata-ctl")
}

fn write_containerd_config(name: &str, body: &str) -> String {
    let dir = top_dir().join("build/e2e");
    std::fs::create_dir_all(&dir).expect("mkdir build/e2e");
    let p = dir.join(name);
    std::fs::write(&p, body).expect("writing containerd config");
    p.to_string_lossy().to_string()
}

#[test]
fn check_passes_on_a_routed_host_and_names_fixes_otherwise() {
    let cfg = top_dir()
        .join("build/configuration-qemu.toml")
        .to_string_lossy()
        .to_string();
    let snippet = std::fs::read_to_string(top_dir().join("configs/containerd/containerd-1.x.toml"))
        .expect("configs/containerd/containerd-1.x.toml");
    let routed =
        write_containerd_config("containerd-routed.toml", &format!("version = 2\n{snippet}"));
    let out = kata_ctl(&["--config", &cfg, "check", "--containerd-config", &routed]);
    let report = text(&out.stdout);
    println!("{report}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "check should pass here:\n{report}"
    );
    for what in [
        "accelerator",
        "vsock",
        "qemu",
        "guest kernel",
        "guest initrd",
        "containerd kata",
        "containerd untrusted",
    ] {
        let has_line = report.lines().any(|l| {
            l.starts_with('[')
                && l.split_once(']')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with(&format!("{what}:")))
        });
        assert!(has_line, "report has a line for {what}:\n{report}");
    }

    let unrouted = write_containerd_config("containerd-unrouted.toml", "version = 2\n");
    let out = kata_ctl(&["--config", &cfg, "check", "--containerd-config", &unrouted]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "check should fail:\n{report}");
    assert!(report.contains("[FAIL] containerd kata"), "{report}");
    assert!(
        report.contains("runtimes.kata]"),
        "the fix shows the snippet: {report}"
    );

    // Only `kata`: the untrusted-workload route is named as missing.
    let kata_only = write_containerd_config(
        "containerd-kata-only.toml",
        "version = 3\n[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.kata]\n  runtime_type = \"io.containerd.kata.v2\"\n",
    );
    let out = kata_ctl(&["--config", &cfg, "check", "--containerd-config", &kata_only]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "check should fail:\n{report}");
    assert!(
        report.contains("[FAIL] containerd untrusted")
            && report.contains("no runtime handler \"untrusted\""),
        "{report}"
    );
}

#[test]
fn check_without_a_configuration_file_checks_the_host_on_the_defaults() {
    let installed: Vec<_> = kata_shim::config::DEFAULT_CONFIG_PATHS
        .iter()
        .filter(|p| std::path::Path::new(p).exists())
        .collect();
    if !installed.is_empty() {
        // Nothing is missing here: this host was set up by hand. CI machines are fresh, so
        // there the same state means a test left an installed configuration behind.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "a configuration is installed on this CI machine ({installed:?}): \
             the no-configuration check cannot run"
        );
        println!("not run: this host has a configuration installed ({installed:?})");
        return;
    }
    let bin = top_dir().join("target/release/kata-ctl");
    require_built(std::slice::from_ref(&bin));
    let out = bounded(bin, QUICK_LIMIT)
        .arg("check")
        .env_remove("KATA_CONF_FILE")
        .output()
        .expect("running kata-ctl");
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let first = report.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("[FAIL] configuration: no configuration file found")
            && first.contains("built-in defaults"),
        "{report}"
    );
    for what in [
        "accelerator: ",
        "qemu: ",
        "host kernel: ",
        "guest kernel: ",
        "containerd: ",
    ] {
        let checked = report.lines().any(|l| {
            l.split_once(']')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(what))
        });
        assert!(checked, "{what} checked:\n{report}");
    }
    assert!(
        report.contains("(from built-in default of [hypervisor.qemu] kernel)"),
        "{report}"
    );
}

#[test]
fn env_lists_every_value_with_its_origin() {
    let cfg = top_dir()
        .join("build/configuration-qemu.toml")
        .to_string_lossy()
        .to_string();
    let out = kata_ctl(&["--config", &cfg, "env"]);
    assert!(out.status.success(), "kata-ctl env: {}", text(&out.stderr));
    let env = text(&out.stdout);
    assert!(
        env.contains(&format!("# configuration file: {cfg}")),
        "{env}"
    );
    assert!(
        env.contains("[hypervisor.qemu]")
            && env.contains("[agent.kata]")
            && env.contains("[runtime]")
    );
    assert!(env.contains("# accelerator: "), "{env}");
    let kernel_line = env
        .lines()
        .find(|l| l.starts_with("kernel = "))
        .expect("kernel line");
    assert!(
        kernel_line.contains("build/guest/") && kernel_line.ends_with("# file"),
        "{kernel_line}"
    );
}

#[test]
fn bad_config_is_named() {
    let bad = top_dir().join("build/e2e/kata-ctl-bad.toml");
    std::fs::create_dir_all(bad.parent().expect("parent")).expect("mkdir");
    std::fs::write(&bad, "[hypervisor.qemu]\ndefault_vcpus = \"many\"\n").expect("write");
    let out = kata_ctl(&["--config", &bad.to_string_lossy(), "check"]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        report.contains("kata-ctl-bad.toml") && report.contains("default_vcpus"),
        "{report}"
    );
}

#[test]
fn exec_opens_the_guest_debug_console_only_when_enabled() {
    let ctrd = Containerd::start("kata-ctl");
    let cfg = config_variant("debug-console", "debug_console_enabled", "true");
    let id = unique_id("console");
    let _guard = ctrd.guard(&id);
    ctrd.run_detached_with_config(&id, &cfg, &["sleep", "1000"]);

    // A shell in the guest (not in the container): it sees the agent as PID 1.
    let out = guest_console(&cfg, &id, "echo guest-$((6*7)) $(cat /proc/1/comm); exit\n");
    let console = text(&out.stdout);
    assert!(
        out.status.success(),
        "kata-ctl exec failed: {}",
        text(&out.stderr)
    );
    assert!(
        console.contains("guest-42 init"),
        "debug console output: {console:?}"
    );

    // With the console disabled in the configuration, exec refuses and says how to enable it.
    let plain = top_dir().join("build/configuration-qemu.toml");
    let out = guest_console(&plain, &id, "exit\n");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("debug_console_enabled = true"),
        "{}",
        text(&out.stderr)
    );

    ctrd.force_remove(&id);
    let left = wait_clean(&id, std::time::Duration::from_secs(15));
    assert!(left.is_empty(), "{left:#?}");
}

#[test]
fn check_follows_the_configured_hypervisor() {
    let clh = top_dir().join("configs/configuration-clh.toml");
    let out = kata_ctl(&["--config", &clh.to_string_lossy(), "check"]);
    let report = text(&out.stdout);
    assert!(report.contains("] cloud-hypervisor: "), "{report}");
    assert!(
        report.contains("hybrid vsock built into cloud-hypervisor"),
        "{report}"
    );
    assert!(
        !report.contains("] qemu"),
        "no QEMU checks for a clh configuration: {report}"
    );
    assert!(
        !report.contains("[hypervisor.qemu]"),
        "origins name [hypervisor.clh]: {report}"
    );
}
