//! The QEMU command line: a pure function of its inputs.

use std::path::{Path, PathBuf};

use crate::config::{AgentConfig, Arch, MachineType, QemuConfig};
use crate::hypervisor::accel::Accel;
use crate::hypervisor::kernel_cmdline;

/// The guest's vsock device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VsockDevice {
    /// Kernel vhost-vsock; `vhostfd` is an inherited fd holding the CID reservation.
    Vhost { cid: u32, vhostfd: Option<i32> },
    /// vhost-user-vsock connected to vhost-device-vsock's socket.
    VhostUser { socket: PathBuf },
}

/// The device carrying the shared directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsDevice {
    VirtioFs { socket: PathBuf },
    NineP { dir: PathBuf },
    None,
}

/// One NIC: a tap queue QEMU inherits as fd `fd` (the tap lives in the pod's network
/// namespace, where QEMU could not open it by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub fd: i32,
    pub mac: String,
    pub mtu: u32,
    /// Kernel vhost-net (only where /dev/vhost-net exists: `vhost=on` makes QEMU open it).
    pub vhost: bool,
}

/// Everything the QEMU command line depends on.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub config: &'a QemuConfig,
    pub accel: Accel,
    /// (major, minor) of the QEMU binary.
    pub qemu_version: (u32, u32),
    pub kernel_cmdline: String,
    pub vsock: VsockDevice,
    pub fs: FsDevice,
    /// Network interfaces, in guest order.
    pub net: Vec<Nic>,
    pub qmp_socket: PathBuf,
    /// Where the shim listens for the guest console (`guest_output::console`).
    pub console_socket: PathBuf,
    /// Used when default_maxvcpus is 0.
    pub host_cpus: u32,
    pub name: String,
}

/// The guest kernel command line (the one every backend builds) for this QEMU machine: a
/// microvm guest also gets the host's TSC frequency (`host_tsc_khz`, when known), which it
/// cannot calibrate by itself.
pub fn guest_kernel_cmdline(
    config: &QemuConfig,
    agent: &AgentConfig,
    agent_debug: bool,
    host_tsc_khz: Option<u64>,
    accel: Option<Accel>,
) -> String {
    let tsc_early_khz = host_tsc_khz.filter(|_| config.machine_type == MachineType::Microvm);
    kernel_cmdline::kernel_cmdline_for(
        &config.guest,
        config.arch(),
        agent,
        agent_debug,
        tsc_early_khz,
        accel,
    )
}

/// QEMU's option syntax doubles commas inside a value.
fn esc(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The arguments after the QEMU binary.
pub fn qemu_args(i: &Input<'_>) -> Vec<String> {
    let c = i.config;
    let g = &c.guest;
    let mut a: Vec<String> = Vec::new();
    let mut push = |args: &[&str]| a.extend(args.iter().map(|s| s.to_string()));
    let mem = format!("{}M", g.default_memory);

    push(&[
        "-name",
        &i.name,
        "-no-user-config",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
    ]);
    // seccomp: QEMU confines itself before the guest runs (`seccompsandbox`, on by default).
    if !c.seccomp_sandbox.is_empty() {
        push(&["-sandbox", &c.seccomp_sandbox]);
    }

    // Machine. vhost-user needs guest RAM in a shareable memfd backend.
    let machine = match c.machine_type {
        MachineType::Microvm => {
            let mut m = String::from("microvm");
            // QEMU >= 8 no longer boots a PVH vmlinux on microvm without option ROMs.
            if i.qemu_version.0 < 8 {
                m.push_str(",x-option-roms=off");
            }
            // rtc=on: without it the boot is ~1 s slower.
            m.push_str(",pit=off,pic=off,rtc=on,isa-serial=on,memory-backend=mem");
            m
        }
        MachineType::Q35 => "q35,memory-backend=mem".to_string(),
        MachineType::Virt => "virt,gic-version=3,memory-backend=mem".to_string(),
    };
    push(&["-machine", &machine]);
    match i.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => {
            push(&["-accel", "tcg,thread=multi"]);
            if c.machine_type.arch() == Arch::Aarch64 {
                // cortex-a57 boots faster under TCG than "max" (no pointer-auth emulation).
                push(&["-cpu", "cortex-a57"]);
            }
        }
    }
    let smp = if c.machine_type == MachineType::Microvm {
        // microvm has no CPU hotplug.
        g.default_vcpus.to_string()
    } else {
        let max = if g.default_maxvcpus == 0 {
            i.host_cpus
        } else {
            g.default_maxvcpus
        };
        format!("{},maxcpus={}", g.default_vcpus, max.max(g.default_vcpus))
    };
    push(&["-smp", &smp, "-m", &mem]);
    push(&[
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
    ]);

    // Kernel.
    push(&[
        "-kernel",
        &g.kernel.display().to_string(),
        "-initrd",
        &g.initrd.display().to_string(),
        "-append",
        &i.kernel_cmdline,
    ]);

    // The console goes to the shim, which caps what it keeps; never to a `-chardev file`,
    // which the guest could grow without bound. The shim listens before QEMU starts and QEMU
    // connects as a client while it sets up its chardevs, before the guest runs: no boot output
    // is lost. (With QEMU serving, `server=on,wait=off`, output before the shim connected would
    // be dropped; `wait=on` would hold QEMU's start on the shim.) When the shim reads slowly the
    // socket fills and the guest's UART waits: QEMU buffers nothing more for it.
    push(&[
        "-chardev",
        &format!("socket,id=console,path={}", esc(&i.console_socket)),
        "-serial",
        "chardev:console",
        "-chardev",
        &format!(
            "socket,id=qmp,path={},server=on,wait=off",
            esc(&i.qmp_socket)
        ),
        "-mon",
        "chardev=qmp,mode=control",
    ]);

    let dev = |name: &str| {
        if c.machine_type.uses_mmio() {
            format!("{name}-device")
        } else {
            format!("{name}-pci")
        }
    };
    match &i.vsock {
        VsockDevice::Vhost { cid, vhostfd } => {
            let mut d = format!("{},id=vsock,guest-cid={cid}", dev("vhost-vsock"));
            if let Some(fd) = vhostfd {
                d.push_str(&format!(",vhostfd={fd}"));
            }
            push(&["-device", &d]);
        }
        VsockDevice::VhostUser { socket } => push(&[
            "-chardev",
            &format!("socket,id=vsock,path={}", esc(socket)),
            "-device",
            &format!("{},chardev=vsock", dev("vhost-user-vsock")),
        ]),
    }
    match &i.fs {
        FsDevice::VirtioFs { socket } => push(&[
            "-chardev",
            &format!("socket,id=fs,path={}", esc(socket)),
            "-device",
            &format!(
                "{},chardev=fs,tag={},queue-size=1024",
                dev("vhost-user-fs"),
                protocol::SHARED_FS_TAG
            ),
        ]),
        FsDevice::NineP { dir } => push(&[
            "-fsdev",
            &format!(
                "local,id=fs,path={},security_model=mapped-xattr,multidevs=remap",
                esc(dir)
            ),
            "-device",
            &format!(
                "{},fsdev=fs,mount_tag={}",
                dev("virtio-9p"),
                protocol::SHARED_FS_TAG
            ),
        ]),
        FsDevice::None => {}
    }
    for (n, nic) in i.net.iter().enumerate() {
        // A tap given by fd: no script runs (the -sandbox denies spawning anyway).
        let vhost = if nic.vhost { "on" } else { "off" };
        push(&[
            "-netdev",
            &format!("tap,id=net{n},fd={},vhost={vhost}", nic.fd),
        ]);
        let mut d = format!(
            "{},netdev=net{n},mac={},host_mtu={}",
            dev("virtio-net"),
            nic.mac,
            nic.mtu
        );
        if !c.machine_type.uses_mmio() {
            // No iPXE option ROM: the guest boots a kernel, never from the network.
            d.push_str(",romfile=");
        }
        push(&["-device", &d]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(config: &QemuConfig, vsock: VsockDevice, fs: FsDevice) -> Input<'_> {
        Input {
            config,
            accel: Accel::Tcg,
            qemu_version: (7, 2),
            kernel_cmdline: "console=ttyS0".into(),
            vsock,
            fs,
            net: Vec::new(),
            qmp_socket: "/run/k/s1/qmp.sock".into(),
            console_socket: "/run/k/s1/console.sock".into(),
            host_cpus: 2,
            name: "kata-s1".into(),
        }
    }

    fn user_vsock() -> VsockDevice {
        VsockDevice::VhostUser {
            socket: "/run/k/s1/vhost-vsock.sock".into(),
        }
    }
    fn virtiofs() -> FsDevice {
        FsDevice::VirtioFs {
            socket: "/run/k/s1/virtiofsd.sock".into(),
        }
    }

    /// The value following `flag`, for each occurrence.
    fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn microvm_vhost_user_virtiofs() {
        let c = QemuConfig::defaults_for(Arch::X86_64);
        assert_eq!(c.machine_type, MachineType::Microvm);
        let args = qemu_args(&input(&c, user_vsock(), virtiofs()));
        assert_eq!(
            values(&args, "-machine"),
            ["microvm,x-option-roms=off,pit=off,pic=off,rtc=on,isa-serial=on,memory-backend=mem"]
        );
        assert_eq!(values(&args, "-accel"), ["tcg,thread=multi"]);
        assert!(values(&args, "-cpu").is_empty());
        assert_eq!(values(&args, "-smp"), ["1"]);
        assert_eq!(values(&args, "-m"), ["512M"]);
        assert_eq!(
            values(&args, "-object"),
            ["memory-backend-memfd,id=mem,size=512M,share=on"]
        );
        assert!(args.contains(&"-nodefaults".to_string()));
        assert!(args.contains(&"-no-reboot".to_string()));
        let devices = values(&args, "-device");
        assert!(
            devices.contains(&"vhost-user-vsock-device,chardev=vsock"),
            "{devices:?}"
        );
        assert!(
            devices.contains(&"vhost-user-fs-device,chardev=fs,tag=kataShared,queue-size=1024"),
            "{devices:?}"
        );
        let chardevs = values(&args, "-chardev");
        assert!(chardevs.contains(&"socket,id=vsock,path=/run/k/s1/vhost-vsock.sock"));
        assert!(chardevs.contains(&"socket,id=fs,path=/run/k/s1/virtiofsd.sock"));
        assert!(chardevs.contains(&"socket,id=qmp,path=/run/k/s1/qmp.sock,server=on,wait=off"));
        // The console is a socket the shim listens on (QEMU the client), not a file.
        assert!(chardevs.contains(&"socket,id=console,path=/run/k/s1/console.sock"));
        assert!(
            !chardevs.iter().any(|c| c.starts_with("file,")),
            "{chardevs:?}"
        );
        assert_eq!(values(&args, "-serial"), ["chardev:console"]);
        assert_eq!(
            values(&args, "-kernel"),
            ["/usr/share/kata-containers/vmlinux.container"]
        );
        assert_eq!(
            values(&args, "-initrd"),
            ["/usr/share/kata-containers/kata-containers-initrd.img"]
        );
    }

    #[test]
    fn seccomp_sandbox_by_default_and_none_when_turned_off() {
        let mut c = QemuConfig::defaults_for(Arch::X86_64);
        let args = qemu_args(&input(&c, user_vsock(), virtiofs()));
        assert_eq!(
            values(&args, "-sandbox"),
            [crate::config::DEFAULT_SECCOMP_SANDBOX]
        );
        assert!(c.seccomp_sandbox.contains("spawn=deny"));
        c.seccomp_sandbox = String::new();
        let args = qemu_args(&input(&c, user_vsock(), virtiofs()));
        assert!(!args.contains(&"-sandbox".to_string()), "{args:?}");
    }

    #[test]
    fn microvm_keeps_option_roms_on_qemu_8_and_later() {
        let c = QemuConfig::defaults_for(Arch::X86_64);
        let mut i = input(&c, user_vsock(), virtiofs());
        i.qemu_version = (10, 0);
        let args = qemu_args(&i);
        let m = values(&args, "-machine");
        assert!(!m[0].contains("x-option-roms"), "{m:?}");
        assert!(m[0].starts_with("microvm,"));
    }

    #[test]
    fn microvm_kernel_vhost_and_9p() {
        let c = QemuConfig::defaults_for(Arch::X86_64);
        let args = qemu_args(&input(
            &c,
            VsockDevice::Vhost {
                cid: 7,
                vhostfd: Some(5),
            },
            FsDevice::NineP {
                dir: "/run/k/s1/shared".into(),
            },
        ));
        let devices = values(&args, "-device");
        assert!(devices.contains(&"vhost-vsock-device,id=vsock,guest-cid=7,vhostfd=5"));
        assert!(devices.contains(&"virtio-9p-device,fsdev=fs,mount_tag=kataShared"));
        assert_eq!(
            values(&args, "-fsdev"),
            ["local,id=fs,path=/run/k/s1/shared,security_model=mapped-xattr,multidevs=remap"]
        );
        assert!(!values(&args, "-chardev")
            .iter()
            .any(|c| c.contains("id=vsock")));
    }

    #[test]
    fn q35_uses_pci_devices_and_kvm() {
        let mut c = QemuConfig::defaults_for(Arch::X86_64);
        c.machine_type = MachineType::Q35;
        c.guest.default_vcpus = 2;
        let mut i = input(&c, user_vsock(), virtiofs());
        i.accel = Accel::Kvm;
        i.host_cpus = 8;
        let args = qemu_args(&i);
        assert_eq!(values(&args, "-machine"), ["q35,memory-backend=mem"]);
        assert_eq!(values(&args, "-accel"), ["kvm"]);
        assert_eq!(values(&args, "-cpu"), ["host"]);
        assert_eq!(values(&args, "-smp"), ["2,maxcpus=8"]);
        let devices = values(&args, "-device");
        assert!(
            devices.contains(&"vhost-user-vsock-pci,chardev=vsock"),
            "{devices:?}"
        );
        assert!(devices.iter().any(|d| d.starts_with("vhost-user-fs-pci,")));
        assert!(args.contains(&"-nodefaults".to_string()));

        let args = qemu_args(&input(
            &c,
            VsockDevice::Vhost {
                cid: 3,
                vhostfd: None,
            },
            FsDevice::NineP { dir: "/s".into() },
        ));
        let devices = values(&args, "-device");
        assert!(
            devices.contains(&"vhost-vsock-pci,id=vsock,guest-cid=3"),
            "{devices:?}"
        );
        assert!(devices.contains(&"virtio-9p-pci,fsdev=fs,mount_tag=kataShared"));
    }

    #[test]
    fn arm64_virt() {
        let mut c = QemuConfig::defaults_for(Arch::Aarch64);
        c.guest.default_maxvcpus = 4;
        assert_eq!(c.machine_type, MachineType::Virt);
        let args = qemu_args(&input(&c, user_vsock(), FsDevice::None));
        assert_eq!(
            values(&args, "-machine"),
            ["virt,gic-version=3,memory-backend=mem"]
        );
        assert_eq!(values(&args, "-cpu"), ["cortex-a57"]);
        assert_eq!(values(&args, "-smp"), ["1,maxcpus=4"]);
        let devices = values(&args, "-device");
        assert_eq!(devices, ["vhost-user-vsock-pci,chardev=vsock"]);
        let mut i = input(&c, user_vsock(), FsDevice::None);
        i.accel = Accel::Kvm;
        assert_eq!(values(&qemu_args(&i), "-cpu"), ["host"]);
    }

    #[test]
    fn only_microvm_gets_the_early_tsc_frequency() {
        let mut c = QemuConfig::defaults_for(Arch::X86_64);
        let mut agent = AgentConfig::default();
        assert_eq!(
            guest_kernel_cmdline(&c, &agent, false, Some(2_600_000), None),
            "console=ttyS0 quiet panic=-1 reboot=k tsc_early_khz=2600000"
        );
        agent.debug_console_enabled = true;
        c.guest.enable_debug = true;
        c.machine_type = MachineType::Q35;
        assert!(
            !guest_kernel_cmdline(&c, &agent, false, Some(1000), None).contains("tsc_early_khz")
        );
        // The arch follows the machine type.
        let a = QemuConfig::defaults_for(Arch::Aarch64);
        assert_eq!(
            guest_kernel_cmdline(&a, &AgentConfig::default(), false, Some(1000), None),
            "console=ttyAMA0 quiet panic=-1 reboot=k"
        );
    }

    fn nic(fd: i32, vhost: bool) -> Nic {
        Nic {
            fd,
            mac: "0a:58:0a:58:00:05".into(),
            mtu: 1450,
            vhost,
        }
    }

    #[test]
    fn nics_are_tap_fds_with_vhost_off_unless_the_host_has_vhost_net() {
        let c = QemuConfig::defaults_for(Arch::X86_64);
        let mut i = input(&c, user_vsock(), virtiofs());
        i.net = vec![nic(7, false), nic(8, true)];
        let args = qemu_args(&i);
        assert_eq!(
            values(&args, "-netdev"),
            ["tap,id=net0,fd=7,vhost=off", "tap,id=net1,fd=8,vhost=on"]
        );
        let devices = values(&args, "-device");
        assert!(
            devices.contains(&"virtio-net-device,netdev=net0,mac=0a:58:0a:58:00:05,host_mtu=1450"),
            "{devices:?}"
        );
        assert!(
            devices.contains(&"virtio-net-device,netdev=net1,mac=0a:58:0a:58:00:05,host_mtu=1450")
        );
        // No NIC, no netdev (ctr run without a network namespace path).
        let args = qemu_args(&input(&c, user_vsock(), virtiofs()));
        assert!(values(&args, "-netdev").is_empty());
        assert!(!values(&args, "-device")
            .iter()
            .any(|d| d.contains("virtio-net")));
    }

    #[test]
    fn a_pci_nic_loads_no_option_rom() {
        let mut c = QemuConfig::defaults_for(Arch::X86_64);
        c.machine_type = MachineType::Q35;
        let mut i = input(&c, user_vsock(), virtiofs());
        i.net = vec![nic(5, false)];
        let args = qemu_args(&i);
        assert!(values(&args, "-device")
            .contains(&"virtio-net-pci,netdev=net0,mac=0a:58:0a:58:00:05,host_mtu=1450,romfile="));
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let c = QemuConfig::defaults_for(Arch::X86_64);
        let mut i = input(&c, user_vsock(), virtiofs());
        i.qmp_socket = "/run/a,b/qmp.sock".into();
        let args = qemu_args(&i);
        assert!(values(&args, "-chardev")
            .contains(&"socket,id=qmp,path=/run/a,,b/qmp.sock,server=on,wait=off"));
    }
}
