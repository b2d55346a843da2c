//! `make install` / `make uninstall` staged under DESTDIR: every file lands where the shipped
//! configuration and containerd expect it, and uninstall removes exactly what install added.

use kata_e2e::*;
use std::path::Path;
use std::process::Command;

fn install_sh(action: &str, destdir: &Path) -> std::process::Output {
    Command::new("bash")
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

#[test]
fn install_then_uninstall_leaves_nothing() {
    require_built(&[
        top_dir().join("target/release/containerd-shim-kata-v2"),
        top_dir().join("target/release/kata-ctl"),
        top_dir().join("build/guest/x86_64/initrd.img"),
    ]);
    let dest = tempfile::tempdir().expect("tempdir");
    let out = install_sh("install", dest.path());
    assert!(out.status.success(), "install: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("runtime_type = \"io.containerd.kata.v2\""),
        "prints the containerd snippet"
    );
    let files = files_under(dest.path());
    for want in [
        "usr/local/bin/containerd-shim-kata-v2",
        "usr/local/bin/kata-ctl",
        "etc/kata-containers/configuration.toml",
        "usr/share/defaults/kata-containers/configuration.toml",
        "usr/share/kata-containers/vmlinux.container",
        "usr/share/kata-containers/kata-containers-initrd.img",
        "usr/libexec/kata-containers/virtiofsd",
        "usr/libexec/kata-containers/vhost-device-vsock",
    ] {
        assert!(
            files.iter().any(|f| f == want),
            "{want} installed; got {files:#?}"
        );
    }
    let out = install_sh("uninstall", dest.path());
    assert!(out.status.success(), "uninstall: {}", text(&out.stderr));
    let left = files_under(dest.path());
    assert!(left.is_empty(), "uninstall left files: {left:#?}");
}
