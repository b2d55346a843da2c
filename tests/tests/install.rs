//! `make install` / `make uninstall` staged under DESTDIR: every file lands where the shipped
//! configuration, containerd and docs/kubernetes.md expect it, and uninstall removes exactly
//! what install added. The installed containerd files, added to a containerd configuration
//! the way docs/kubernetes.md says, load in containerd 1.6 and 2.x with both runtime handlers.

use kata_e2e::*;
use std::path::{Path, PathBuf};

fn install_sh(action: &str, destdir: &Path) -> std::process::Output {
    bounded("bash", SCRIPT_LIMIT)
        .arg(top_dir().join("scripts/install.sh"))
        .args([action, "/usr/local"])
        .env("DESTDIR", destdir)
        .output()
        .expect("running scripts/install.sh")
}

fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(
                    p.strip_prefix(root)
                        .expect("under root")
                        .display()
                        .to_string(),
                );
            }
        }
    }
    out.sort();
    out
}

/// The Kubernetes files `make install` adds, where docs/kubernetes.md says they are.
const KUBERNETES_FILES: [&str; 6] = [
    "usr/share/kata-containers/containerd/containerd-1.x.toml",
    "usr/share/kata-containers/containerd/containerd-2.x.toml",
    "usr/share/kata-containers/crio/50-kata.conf",
    "usr/share/kata-containers/kubernetes/runtimeclass-kata.yaml",
    "usr/share/kata-containers/kubernetes/pod-runtimeclass.yaml",
    "usr/share/kata-containers/kubernetes/pod-untrusted.yaml",
];
const SHIM: &str = "usr/local/bin/containerd-shim-kata-v2";

/// `make install` staged in a new temporary DESTDIR.
fn staged_install() -> (tempfile::TempDir, String) {
    require_built(&[
        top_dir().join("target/release/containerd-shim-kata-v2"),
        top_dir().join("target/release/kata-ctl"),
        top_dir().join("build/guest/x86_64/initrd.img"),
    ]);
    let dest = tempfile::tempdir().expect("tempdir");
    let out = install_sh("install", dest.path());
    assert!(out.status.success(), "install: {}", text(&out.stderr));
    (dest, text(&out.stdout))
}

#[test]
fn install_then_uninstall_leaves_nothing() {
    let (dest, stdout) = staged_install();
    for f in &KUBERNETES_FILES[..2] {
        assert!(
            stdout.contains(&format!("/{f}")),
            "install names {f} for containerd: {stdout}"
        );
    }
    let files = files_under(dest.path());
    for want in [
        SHIM,
        "usr/local/bin/kata-ctl",
        "etc/kata-containers/configuration.toml",
        "usr/share/defaults/kata-containers/configuration.toml",
        "usr/share/kata-containers/vmlinux.container",
        "usr/share/kata-containers/kata-containers-initrd.img",
        "usr/libexec/kata-containers/virtiofsd",
        "usr/libexec/kata-containers/vhost-device-vsock",
        "etc/systemd/system/kata-vm-pool.service",
    ]
    .iter()
    .chain(&KUBERNETES_FILES)
    {
        assert!(
            files.iter().any(|f| f == want),
            "{want} installed; got {files:#?}"
        );
    }
    let unit = std::fs::read_to_string(dest.path().join("etc/systemd/system/kata-vm-pool.service"))
        .expect("pool unit");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/containerd-shim-kata-v2 pool "),
        "the pool unit runs the installed shim: {unit}"
    );
    let out = install_sh("uninstall", dest.path());
    assert!(out.status.success(), "uninstall: {}", text(&out.stderr));
    let left = files_under(dest.path());
    assert!(left.is_empty(), "uninstall left files: {left:#?}");
}

#[test]
fn kubernetes_files_land_where_the_docs_say() {
    let (dest, _) = staged_install();
    let docs = std::fs::read_to_string(top_dir().join("docs/kubernetes.md")).expect("docs");
    for f in KUBERNETES_FILES {
        assert!(
            docs.contains(&format!("/{f}")),
            "docs/kubernetes.md names /{f}"
        );
        let installed = std::fs::read_to_string(dest.path().join(f)).expect("installed");
        let name = Path::new(f).file_name().expect("name").to_string_lossy();
        let dir = Path::new(f)
            .parent()
            .expect("dir")
            .file_name()
            .expect("dir name");
        let source = std::fs::read_to_string(top_dir().join("configs").join(dir).join(&*name))
            .expect("source in configs/");
        if name.ends_with(".conf") {
            // CRI-O starts the shim by path: the installed one.
            let want = format!("runtime_path = \"/{SHIM}\"");
            assert!(installed.contains(&want), "{f}: {installed}");
            assert!(dest.path().join(SHIM).is_file());
        } else {
            assert_eq!(installed, source, "{f} is configs/ as shipped");
        }
    }
}

/// `containerd --config FILE config dump` with a time limit; quotes made uniform (2.x prints
/// single quotes, 1.x double).
fn config_dump(containerd: &Path, config: &Path) -> String {
    let out = bounded(containerd, QUICK_LIMIT)
        .arg("--config")
        .arg(config)
        .args(["config", "dump"])
        .output()
        .expect("running containerd config dump");
    assert!(
        out.status.success(),
        "{} config dump of {}: {}",
        containerd.display(),
        config.display(),
        text(&out.stderr)
    );
    text(&out.stdout).replace('\'', "\"")
}

/// What a dump must show: both handlers with the shipped settings, and the configuration's
/// own CNI directory (an import that replaced the CRI table would lose it).
fn assert_routes_both(dump: &str, plugin: &str, cni: &str, what: &str) {
    for h in ["kata", "untrusted"] {
        let header = format!("[plugins.\"{plugin}\".containerd.runtimes.{h}]");
        let table = dump
            .split_once(&header)
            .map(|(_, rest)| rest.split("\n  ").collect::<Vec<_>>().join("\n"))
            .unwrap_or_else(|| panic!("{what}: no {header} in:\n{dump}"));
        let table = &table[..table.find("\n[").unwrap_or(table.len()).min(1500)];
        for key in [
            "runtime_type = \"io.containerd.kata.v2\"",
            "pod_annotations = [\"io.katacontainers.*\"]",
            "privileged_without_host_devices = true",
        ] {
            assert!(table.contains(key), "{what}: {h} has {key}:\n{table}");
        }
    }
    assert!(
        dump.contains(cni),
        "{what}: config.toml's {cni} kept:\n{dump}"
    );
}

/// kata-ctl's containerd lines for `config` (with `containerd` first on PATH).
fn kata_ctl_containerd_lines(dest: &Path, config: &Path, bin_dir: Option<&Path>) -> Vec<String> {
    let mut cmd = bounded(dest.join("usr/local/bin/kata-ctl"), QUICK_LIMIT);
    cmd.arg("--config")
        .arg(top_dir().join("build/configuration-qemu.toml"))
        .arg("check")
        .arg("--containerd-config")
        .arg(config);
    if let Some(dir) = bin_dir {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", dir.display()));
    }
    let out = cmd.output().expect("running kata-ctl");
    text(&out.stdout)
        .lines()
        .filter(|l| {
            l.split_once(']')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with("containerd"))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn installed_containerd_files_load_in_containerd_as_the_docs_say() {
    let (dest, _) = staged_install();
    let installed = |i: usize| dest.path().join(KUBERNETES_FILES[i]);
    let work = tempfile::tempdir().expect("tempdir");
    let c1 = PathBuf::from("containerd");
    let c2_dir = containerd2_bin_dir();
    let c2 = c2_dir.join("containerd");

    // version = 2: Debian's stock config.toml with containerd-1.x.toml appended; read by
    // containerd 1.6 and, migrated, by 2.x.
    let v2 = work.path().join("config-v2.toml");
    let debian = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      bin_dir = \"/usr/lib/cni\"\n      conf_dir = \"/etc/cni/net.d\"\n  [plugins.\"io.containerd.internal.v1.opt\"]\n    path = \"/var/lib/containerd/opt\"\n";
    let snippet = std::fs::read_to_string(installed(0)).expect("containerd-1.x.toml");
    std::fs::write(&v2, format!("{debian}{snippet}")).expect("write");
    let dump = config_dump(&c1, &v2);
    assert_routes_both(
        &dump,
        "io.containerd.grpc.v1.cri",
        "bin_dir = \"/usr/lib/cni\"",
        "1.6, version 2",
    );
    let dump = config_dump(&c2, &v2);
    assert_routes_both(
        &dump,
        "io.containerd.cri.v1.runtime",
        "bin_dirs = [\"/usr/lib/cni\"]",
        "2.x, version 2",
    );
    for (bin, what) in [(None, "1.6"), (Some(c2_dir.as_path()), "2.x")] {
        let lines = kata_ctl_containerd_lines(dest.path(), &v2, bin);
        assert_eq!(lines.len(), 4, "{what}: {lines:#?}");
        assert!(
            lines.iter().all(|l| l.starts_with("[ok]")),
            "{what}: {lines:#?}"
        );
    }

    // version = 3: containerd 2.x's default config.toml with its empty `imports` filled in by
    // the documented command.
    let v3 = work.path().join("config-v3.toml");
    let out = bounded(&c2, QUICK_LIMIT)
        .args(["config", "default"])
        .output()
        .expect("containerd config default");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let default = text(&out.stdout);
    assert!(default.lines().any(|l| l == "imports = []"), "{default}");
    std::fs::write(&v3, default).expect("write");
    let docs = std::fs::read_to_string(top_dir().join("docs/kubernetes.md")).expect("docs");
    let script = docs
        .lines()
        .find(|l| l.starts_with("sed -i 's|^imports"))
        .expect("docs/kubernetes.md fills in imports with sed")
        .trim_start_matches("sed -i ")
        .trim_end_matches(" \\")
        .trim_matches('\'')
        .replace(
            "/usr/share/kata-containers/containerd",
            &installed(1).parent().expect("dir").to_string_lossy(),
        );
    let out = bounded("sed", QUICK_LIMIT)
        .args(["-i", &script])
        .arg(&v3)
        .output()
        .expect("sed");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dump = config_dump(&c2, &v3);
    assert_routes_both(
        &dump,
        "io.containerd.cri.v1.runtime",
        "runtimes.runc",
        "2.x, version 3",
    );
    let lines = kata_ctl_containerd_lines(dest.path(), &v3, Some(&c2_dir));
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(lines.iter().all(|l| l.starts_with("[ok]")), "{lines:#?}");
    assert!(lines[1].contains("imports"), "{lines:#?}");
}
