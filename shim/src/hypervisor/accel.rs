//! KVM or TCG. `auto` picks KVM only when it can boot a stock guest: /dev/kvm opens and a real
//! KVM module (kvm_intel / kvm_amd) is loaded. The paravirtual `kvm_pvm` module opens /dev/kvm
//! and creates VMs but hangs a stock guest kernel early in boot.

use std::path::Path;

use crate::config::{AccelMode, Arch};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// What an operator must know about a TCG guest besides its speed.
pub const TCG_IS_NO_ISOLATION_BOUNDARY: &str =
    "under TCG the guest runs as code QEMU translates in its own process: not a hardware isolation boundary";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    /// Why, for the log.
    pub reason: String,
}

/// Decides the accelerator for a guest of `guest` arch on a host of `host` arch, looking at
/// `root`/dev/kvm and `root`/sys/module (root is "/" except in tests).
pub fn choose(mode: AccelMode, guest: Arch, host: Arch, root: &Path) -> AccelChoice {
    let tcg = |reason: String| AccelChoice {
        accel: Accel::Tcg,
        reason,
    };
    match mode {
        AccelMode::Tcg => return tcg("accel=tcg: TCG as configured".into()),
        AccelMode::Kvm => {
            return AccelChoice {
                accel: Accel::Kvm,
                reason: "accel=kvm: KVM as configured".into(),
            }
        }
        AccelMode::Auto => {}
    }
    if guest != host {
        return tcg(format!(
            "accel=auto: using TCG because the guest is {} and the host {}",
            guest.name(),
            host.name()
        ));
    }
    let dev = root.join("dev/kvm");
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
    {
        return tcg(format!(
            "accel=auto: using TCG because {} cannot be opened: {e}",
            dev.display()
        ));
    }
    let module = |m: &str| root.join("sys/module").join(m).exists();
    if host == Arch::Aarch64 {
        // arm64 KVM is built into the kernel; there is no vendor module to look for.
        return AccelChoice {
            accel: Accel::Kvm,
            reason: "accel=auto: using KVM (/dev/kvm opens)".into(),
        };
    }
    for m in ["kvm_intel", "kvm_amd"] {
        if module(m) {
            return AccelChoice {
                accel: Accel::Kvm,
                reason: format!("accel=auto: using KVM ({m} is loaded)"),
            };
        }
    }
    if module("kvm_pvm") {
        tcg(
            "accel=auto: using TCG because only kvm_pvm is loaded, which cannot boot a stock guest"
                .into(),
        )
    } else {
        tcg("accel=auto: using TCG because neither kvm_intel nor kvm_amd is loaded".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fake_root(kvm_dev: bool, modules: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(d.path().join("dev")).expect("dev");
        if kvm_dev {
            fs::write(d.path().join("dev/kvm"), "").expect("kvm");
        }
        for m in modules {
            fs::create_dir_all(d.path().join("sys/module").join(m)).expect("module");
        }
        d
    }

    #[test]
    fn auto_with_kvm_intel_uses_kvm() {
        let r = fake_root(true, &["kvm", "kvm_intel"]);
        let c = choose(AccelMode::Auto, Arch::X86_64, Arch::X86_64, r.path());
        assert_eq!(c.accel, Accel::Kvm, "{}", c.reason);
        assert!(c.reason.contains("kvm_intel"));
        let r = fake_root(true, &["kvm", "kvm_amd"]);
        assert_eq!(
            choose(AccelMode::Auto, Arch::X86_64, Arch::X86_64, r.path()).accel,
            Accel::Kvm
        );
    }

    #[test]
    fn auto_with_only_kvm_pvm_falls_back_to_tcg() {
        let r = fake_root(true, &["kvm", "kvm_pvm"]);
        let c = choose(AccelMode::Auto, Arch::X86_64, Arch::X86_64, r.path());
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("only kvm_pvm is loaded"), "{}", c.reason);
    }

    #[test]
    fn auto_without_dev_kvm_uses_tcg() {
        let r = fake_root(false, &["kvm", "kvm_intel"]);
        let c = choose(AccelMode::Auto, Arch::X86_64, Arch::X86_64, r.path());
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("dev/kvm"), "{}", c.reason);
    }

    #[test]
    fn auto_without_modules_uses_tcg() {
        let r = fake_root(true, &["kvm"]);
        let c = choose(AccelMode::Auto, Arch::X86_64, Arch::X86_64, r.path());
        assert_eq!(c.accel, Accel::Tcg);
        assert!(
            c.reason.contains("neither kvm_intel nor kvm_amd"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn foreign_guest_uses_tcg() {
        let r = fake_root(true, &["kvm", "kvm_intel"]);
        let c = choose(AccelMode::Auto, Arch::Aarch64, Arch::X86_64, r.path());
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("aarch64"), "{}", c.reason);
    }

    #[test]
    fn arm64_host_with_dev_kvm_uses_kvm() {
        let r = fake_root(true, &[]);
        let c = choose(AccelMode::Auto, Arch::Aarch64, Arch::Aarch64, r.path());
        assert_eq!(c.accel, Accel::Kvm);
    }

    #[test]
    fn forced_modes() {
        let r = fake_root(true, &["kvm_pvm"]);
        assert_eq!(
            choose(AccelMode::Kvm, Arch::X86_64, Arch::X86_64, r.path()).accel,
            Accel::Kvm
        );
        let r = fake_root(true, &["kvm_intel"]);
        assert_eq!(
            choose(AccelMode::Tcg, Arch::X86_64, Arch::X86_64, r.path()).accel,
            Accel::Tcg
        );
    }
}
