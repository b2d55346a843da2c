//! The guest kernel command line, the same for every hypervisor backend: a pure function of
//! the configuration.

use crate::config::{AgentConfig, Arch, GuestConfig};
use crate::hypervisor::accel::Accel;

/// The guest kernel command line of a guest of `arch`: console, panic/reboot behaviour, agent
/// options, the early TSC frequency when the backend passes one (QEMU's microvm requires it:
/// the guest hangs calibrating without it), then the configured kernel_params (last, so they
/// can override).
pub fn kernel_cmdline(
    guest: &GuestConfig,
    arch: Arch,
    agent: &AgentConfig,
    agent_debug: bool,
    tsc_early_khz: Option<u64>,
) -> String {
    kernel_cmdline_for(guest, arch, agent, agent_debug, tsc_early_khz, None)
}

/// [`kernel_cmdline`] knowing the accelerator: an x86 guest under TCG also gets `tsc=reliable`.
/// Its TSC follows the host's constant TSC, but on a loaded host the vCPU thread is descheduled
/// long enough for the clocksource watchdog to call the TSC unstable and fall back to jiffies,
/// which stalls a microvm guest for good (seen in ~1 of 10 boots at load 6).
pub fn kernel_cmdline_for(
    guest: &GuestConfig,
    arch: Arch,
    agent: &AgentConfig,
    agent_debug: bool,
    tsc_early_khz: Option<u64>,
    accel: Option<Accel>,
) -> String {
    let mut p: Vec<String> = vec![format!("console={}", arch.console())];
    if !guest.enable_debug {
        p.push("quiet".into());
    }
    p.push("panic=-1".into());
    p.push("reboot=k".into());
    if let Some(khz) = tsc_early_khz {
        p.push(format!("tsc_early_khz={khz}"));
    }
    if accel == Some(Accel::Tcg) && arch == Arch::X86_64 {
        p.push("tsc=reliable".into());
    }
    if agent_debug {
        p.push("agent.log=debug".into());
    }
    if agent.debug_console_enabled {
        p.push("agent.debug_console".into());
    }
    let extra = guest.kernel_params.trim();
    if !extra.is_empty() {
        p.push(extra.to_string());
    }
    p.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_cmdlines() {
        let x86 = Arch::X86_64;
        let mut c = GuestConfig {
            kernel_params: "foo=1 bar".into(),
            ..GuestConfig::default()
        };
        let mut agent = AgentConfig::default();
        assert_eq!(
            kernel_cmdline(&c, x86, &agent, false, Some(2_600_000)),
            "console=ttyS0 quiet panic=-1 reboot=k tsc_early_khz=2600000 foo=1 bar"
        );
        agent.debug_console_enabled = true;
        c.enable_debug = true;
        c.kernel_params.clear();
        assert_eq!(
            kernel_cmdline(&c, x86, &agent, true, Some(1000)),
            "console=ttyS0 panic=-1 reboot=k tsc_early_khz=1000 agent.log=debug agent.debug_console"
        );
        // Which machines get tsc_early_khz is the QEMU backend's choice: see
        // qemu::cmdline::tests::only_microvm_gets_the_early_tsc_frequency.
        assert!(!kernel_cmdline(&c, x86, &agent, false, None).contains("tsc_early_khz"));
        // TCG on x86: the TSC watchdog is off.
        let tcg = kernel_cmdline_for(&c, x86, &agent, false, None, Some(Accel::Tcg));
        assert!(tcg.contains(" tsc=reliable"), "{tcg}");
        let kvm = kernel_cmdline_for(&c, x86, &agent, false, None, Some(Accel::Kvm));
        assert!(!kvm.contains("tsc=reliable"), "{kvm}");
        let a = GuestConfig::default();
        let arm = kernel_cmdline_for(&a, Arch::Aarch64, &agent, false, None, Some(Accel::Tcg));
        assert!(!arm.contains("tsc="), "{arm}");
        assert_eq!(
            kernel_cmdline(&a, Arch::Aarch64, &AgentConfig::default(), false, None),
            "console=ttyAMA0 quiet panic=-1 reboot=k"
        );
    }
}
