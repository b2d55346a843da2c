//! The guest kernel command line, the same for every hypervisor backend: a pure function of
//! the configuration.

use crate::config::{AgentConfig, Arch, MachineType, QemuConfig};
use crate::hypervisor::accel::Accel;

/// The guest kernel command line: console, panic/reboot behaviour, agent options, the early
/// TSC frequency on microvm (required there: the guest hangs calibrating without it), then the
/// configured kernel_params (last, so they can override).
pub fn kernel_cmdline(
    config: &QemuConfig,
    agent: &AgentConfig,
    agent_debug: bool,
    tsc_khz: Option<u64>,
) -> String {
    kernel_cmdline_for(config, agent, agent_debug, tsc_khz, None)
}

/// [`kernel_cmdline`] knowing the accelerator: an x86 guest under TCG also gets `tsc=reliable`.
/// Its TSC follows the host's constant TSC, but on a loaded host the vCPU thread is descheduled
/// long enough for the clocksource watchdog to call the TSC unstable and fall back to jiffies,
/// which stalls a microvm guest for good (seen in ~1 of 10 boots at load 6).
pub fn kernel_cmdline_for(
    config: &QemuConfig,
    agent: &AgentConfig,
    agent_debug: bool,
    tsc_khz: Option<u64>,
    accel: Option<Accel>,
) -> String {
    let mut p: Vec<String> = vec![format!("console={}", config.arch().console())];
    if !config.enable_debug {
        p.push("quiet".into());
    }
    p.push("panic=-1".into());
    p.push("reboot=k".into());
    if config.machine_type == MachineType::Microvm {
        if let Some(khz) = tsc_khz {
            p.push(format!("tsc_early_khz={khz}"));
        }
    }
    if accel == Some(Accel::Tcg) && config.arch() == Arch::X86_64 {
        p.push("tsc=reliable".into());
    }
    if agent_debug {
        p.push("agent.log=debug".into());
    }
    if agent.debug_console_enabled {
        p.push("agent.debug_console".into());
    }
    let extra = config.kernel_params.trim();
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
        let mut c = QemuConfig::defaults_for(Arch::X86_64);
        c.kernel_params = "foo=1 bar".into();
        let mut agent = AgentConfig::default();
        assert_eq!(
            kernel_cmdline(&c, &agent, false, Some(2_600_000)),
            "console=ttyS0 quiet panic=-1 reboot=k tsc_early_khz=2600000 foo=1 bar"
        );
        agent.debug_console_enabled = true;
        c.enable_debug = true;
        c.kernel_params.clear();
        assert_eq!(
            kernel_cmdline(&c, &agent, true, Some(1000)),
            "console=ttyS0 panic=-1 reboot=k tsc_early_khz=1000 agent.log=debug agent.debug_console"
        );
        c.machine_type = MachineType::Q35;
        assert!(!kernel_cmdline(&c, &agent, false, Some(1000)).contains("tsc_early_khz"));
        // TCG on x86: the TSC watchdog is off.
        let tcg = kernel_cmdline_for(&c, &agent, false, None, Some(Accel::Tcg));
        assert!(tcg.contains(" tsc=reliable"), "{tcg}");
        let kvm = kernel_cmdline_for(&c, &agent, false, None, Some(Accel::Kvm));
        assert!(!kvm.contains("tsc=reliable"), "{kvm}");
        let a = QemuConfig::defaults_for(Arch::Aarch64);
        let arm = kernel_cmdline_for(&a, &agent, false, None, Some(Accel::Tcg));
        assert!(!arm.contains("tsc="), "{arm}");
        let a = QemuConfig::defaults_for(Arch::Aarch64);
        assert_eq!(
            kernel_cmdline(&a, &AgentConfig::default(), false, None),
            "console=ttyAMA0 quiet panic=-1 reboot=k"
        );
    }
}
