//! QEMU backend: helper daemons (virtiofsd, vhost-device-vsock) started in parallel, then QEMU
//! with a command line from [`cmdline`], QMP for pause/resume/quit.

pub mod cmdline;
pub mod qmp;
pub mod vsock_device;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::process::Command;
use tokio::sync::watch;

use self::cmdline::{FsDevice, Nic, VsockDevice};
use self::vsock_device::{VsockKind, VHOST_VSOCK_DEV};
use super::accel::{self, Accel};
use super::devices::{Devices, NetDevice};
use super::host_process::{
    no_new_privileges, stop_vm_when_a_helper_dies, wait_for_socket, CgroupJoin, HostProcess,
};
use super::{host, log_tail, require_file, virtiofsd, Hypervisor, HypervisorError, VmPaths};
use crate::config::{Arch, Config, MachineType, QemuConfig, SharedFs};
use crate::guest::vsock::Dialer;
use crate::guest_output::console::{self, Console, ConsoleView};
use crate::guest_output::CONSOLE_DRAIN;

/// Kernel vhost-net: used for NICs where it exists (not on every host: detected).
const VHOST_NET_DEV: &str = "/dev/vhost-net";
/// How long QEMU may take to create its QMP socket.
const QMP_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// After a QMP quit, how long QEMU may take to exit before SIGKILL.
const QUIT_TIMEOUT: Duration = Duration::from_secs(3);
/// Grace period of the helper daemons after QEMU is gone.
const DAEMON_GRACE: Duration = Duration::from_secs(1);
/// Console lines quoted when QEMU exits unexpectedly.
const CONSOLE_TAIL_LINES: usize = 30;

pub struct Qemu {
    config: Config,
    /// The `[hypervisor.qemu]` section of `config`.
    section: QemuConfig,
    id: String,
    paths: VmPaths,
    devices: Devices,
    qemu: Option<HostProcess>,
    virtiofsd: Option<HostProcess>,
    vsock_daemon: Option<HostProcess>,
    console: Option<Console>,
    dialer: Option<Dialer>,
    exited_tx: watch::Sender<bool>,
    exited_rx: watch::Receiver<bool>,
    /// Set once stop() runs: an exit after that is expected and not worth a warning.
    stopping: Arc<AtomicBool>,
    vsock_kind: Option<VsockKind>,
    /// The pod's cgroup every process of this VM joins.
    cgroup: CgroupJoin,
}

impl Qemu {
    /// `config` supplies the agent and runtime settings and the file name for error
    /// messages; `section` is its `[hypervisor.qemu]` section.
    pub fn new(
        config: &Config,
        section: QemuConfig,
        devices: Devices,
        id: &str,
        paths: VmPaths,
        cgroup: CgroupJoin,
    ) -> Qemu {
        let (exited_tx, exited_rx) = watch::channel(false);
        Qemu {
            config: config.clone(),
            section,
            id: id.to_string(),
            paths,
            devices,
            qemu: None,
            virtiofsd: None,
            vsock_daemon: None,
            console: None,
            dialer: None,
            exited_tx,
            exited_rx,
            stopping: Arc::new(AtomicBool::new(false)),
            vsock_kind: None,
            cgroup,
        }
    }

    /// Named errors for every file the VM needs, before anything is started.
    fn check_files(&self, vsock: VsockKind) -> Result<(), HypervisorError> {
        let (q, g) = (&self.section, &self.section.guest);
        let origin = |key: &str| self.config.origin(QemuConfig::SECTION, key);
        require_file("QEMU", &q.path, origin("path"))?;
        require_file("kernel", &g.kernel, origin("kernel"))?;
        require_file("initrd", &g.initrd, origin("initrd"))?;
        if g.shared_fs == SharedFs::VirtioFs {
            require_file("virtiofsd", &g.virtio_fs_daemon, origin("virtio_fs_daemon"))?;
        }
        if vsock == VsockKind::VhostUser {
            require_file(
                "vhost-user vsock daemon",
                &q.vhost_user_vsock_daemon,
                origin("vhost_user_vsock_daemon"),
            )?;
        }
        Ok(())
    }

    async fn start_inner(&mut self) -> Result<(), HypervisorError> {
        let h = self.section.clone();
        let vhost_net = !self.devices.net.is_empty() && Path::new(VHOST_NET_DEV).exists();
        if !self.devices.net.is_empty() {
            if vhost_net {
                tracing::info!(sandbox = %self.id, "{VHOST_NET_DEV} exists: NICs use kernel vhost-net");
            } else {
                tracing::info!(sandbox = %self.id, "{VHOST_NET_DEV} missing: NICs run with vhost=off (QEMU moves the packets itself, slower)");
            }
        }
        let (vsock, why) = vsock_device::choose(h.vsock, Path::new(VHOST_VSOCK_DEV))?;
        tracing::info!(sandbox = %self.id, "{why}");
        self.check_files(vsock)?;
        let choice = accel::choose(h.accel, h.arch(), Arch::host(), Path::new("/"));
        match choice.accel {
            Accel::Kvm => tracing::info!(sandbox = %self.id, "{}", choice.reason),
            Accel::Tcg => tracing::warn!(
                sandbox = %self.id,
                "{}; {}",
                choice.reason,
                accel::TCG_IS_NO_ISOLATION_BOUNDARY
            ),
        }
        if choice.accel == Accel::Kvm && h.arch() != Arch::host() {
            return Err(HypervisorError::Unsupported(format!(
                "{}: accel = \"kvm\" cannot run a {} guest on a {} host",
                self.config.origin(QemuConfig::SECTION, "accel"),
                h.arch().name(),
                Arch::host().name()
            )));
        }

        // Prepared by the VM layer (`resources::share`): exported as it is.
        let shared = &self.devices.shared_dir;

        // Helpers and host facts in parallel: each daemon must have its socket before QEMU.
        let debug = h.guest.enable_debug || self.config.runtime.enable_debug;
        let fs_fut = async {
            if h.guest.shared_fs == SharedFs::VirtioFs {
                virtiofsd::start(&h.guest, &self.paths, shared, debug, &self.cgroup)
                    .await
                    .map(Some)
            } else {
                Ok(None)
            }
        };
        let vsock_fut = async {
            if vsock == VsockKind::VhostUser {
                vsock_device::start_daemon(&h, &self.paths, &self.cgroup)
                    .await
                    .map(Some)
            } else {
                Ok(None)
            }
        };
        let version_fut = host::qemu_version(&h.path);
        let tsc_fut = async {
            if h.machine_type == MachineType::Microvm {
                tokio::task::spawn_blocking(host::tsc_khz)
                    .await
                    .ok()
                    .flatten()
            } else {
                None
            }
        };
        let (fs, vs, version, tsc) = tokio::join!(fs_fut, vsock_fut, version_fut, tsc_fut);
        // Keep whatever started so stop() can end it, then report the first failure.
        let (fs, vs) = match (fs, vs) {
            (Ok(f), Ok(v)) => (f, v),
            (f, v) => {
                let mut first = None;
                match f {
                    Ok(p) => self.virtiofsd = p,
                    Err(e) => first = Some(e),
                }
                match v {
                    Ok(p) => self.vsock_daemon = p,
                    Err(e) => first = first.or(Some(e)),
                }
                return Err(first.unwrap_or_else(|| {
                    HypervisorError::Unsupported("helper start failed".into())
                }));
            }
        };
        self.virtiofsd = fs;
        self.vsock_daemon = vs;
        tracing::info!(sandbox = %self.id, "helpers started");
        let version = version.map_err(HypervisorError::Unsupported)?;
        if h.machine_type == MachineType::Microvm && tsc.is_none() {
            tracing::warn!(sandbox = %self.id, "host TSC frequency unknown: the microvm guest may hang early in boot (set tsc_early_khz= in kernel_params)");
        }

        let (vsock_dev, dialer, _cid_fd) = match vsock {
            VsockKind::VhostUser => (
                VsockDevice::VhostUser {
                    socket: self.paths.vhost_user_vsock(),
                },
                Dialer::Hybrid {
                    uds_path: self.paths.hybrid_vsock(),
                },
                None,
            ),
            VsockKind::Vhost => {
                let (cid, fd) = tokio::task::spawn_blocking(|| {
                    vsock_device::reserve_cid(Path::new(VHOST_VSOCK_DEV))
                })
                .await
                .map_err(|e| {
                    HypervisorError::io("reserve vsock cid", std::io::Error::other(e))
                })??;
                let raw = inheritable(&fd)?;
                (
                    VsockDevice::Vhost {
                        cid,
                        vhostfd: Some(raw),
                    },
                    Dialer::Vhost { cid },
                    Some(fd),
                )
            }
        };
        let fs_dev = match h.guest.shared_fs {
            SharedFs::VirtioFs => FsDevice::VirtioFs {
                socket: self.paths.virtiofsd_socket(),
            },
            SharedFs::Virtio9p => FsDevice::NineP {
                dir: shared.clone(),
            },
            SharedFs::None => FsDevice::None,
        };
        let kernel_cmdline = cmdline::guest_kernel_cmdline(
            &h,
            &self.config.agent,
            self.config.agent_debug(),
            tsc,
            Some(choice.accel),
        );
        let args = cmdline::qemu_args(&cmdline::Input {
            config: &h,
            accel: choice.accel,
            qemu_version: version,
            kernel_cmdline,
            vsock: vsock_dev,
            fs: fs_dev,
            net: self
                .devices
                .net
                .iter()
                .map(|d| Nic {
                    fd: d.fd.raw(),
                    mac: d.mac.clone(),
                    mtu: d.mtu,
                    vhost: vhost_net,
                })
                .collect(),
            qmp_socket: self.paths.qmp_socket(),
            console_socket: self.paths.console_socket(),
            host_cpus: host::cpu_count(),
            name: format!("kata-{}", self.id),
        });
        // The console socket exists before QEMU, which connects to it at start (cmdline.rs).
        let console_socket = self.paths.console_socket();
        let listener = tokio::net::UnixListener::bind(&console_socket).map_err(|e| {
            HypervisorError::io(format!("listen on {}", console_socket.display()), e)
        })?;
        let mut cmd = Command::new(&h.path);
        cmd.args(&args);
        // QEMU (root) still keeps its capabilities (a kernel vhost fd, KVM, later taps); it
        // gains none by exec, and -sandbox denies it setuid and capability changes anyway.
        no_new_privileges(&mut cmd);
        // The tap queues are inherited under their numbers by QEMU alone: close-on-exec is
        // cleared only around its spawn (the helpers are already running).
        let taps: Vec<&NetDevice> = self.devices.net.iter().collect();
        for t in &taps {
            set_cloexec(t.fd.raw(), false, &t.tap)?;
        }
        let spawned = HostProcess::spawn(
            "qemu",
            cmd,
            &self.paths.log("qemu"),
            &self.paths.pidfile("qemu"),
            &self.cgroup,
        );
        for t in &taps {
            if let Err(e) = set_cloexec(t.fd.raw(), true, &t.tap) {
                tracing::warn!(sandbox = %self.id, "{e}");
            }
        }
        let qemu = spawned?;
        // QEMU has its own copy of the CID fd now (if any); ours closes when _cid_fd drops.
        let (pid, mut gone) = (qemu.pid(), qemu.exited());
        let connect = async move {
            tokio::select! {
                s = console::accept_from(listener, console_socket, pid) => s,
                _ = gone.wait_for(|e| *e) => Err(std::io::Error::other(
                    "QEMU exited before it connected the console",
                )),
            }
        };
        let console = Console::spawn(connect, self.paths.console_log(), self.id.clone());
        let console_view = console.view();
        self.console = Some(console);
        let mut qemu_exited = qemu.exited();
        let tx = self.exited_tx.clone();
        let (stopping, status, id) = (self.stopping.clone(), qemu.status_reader(), self.id.clone());
        let qemu_log = self.paths.log("qemu");
        tokio::spawn(async move {
            let _ = qemu_exited.wait_for(|e| *e).await;
            if !stopping.load(Ordering::SeqCst) {
                // The VM died on its own: say why where the operator looks (the shim's log).
                console_view.drained(CONSOLE_DRAIN).await;
                tracing::warn!(
                    sandbox = %id,
                    "QEMU exited unexpectedly ({}); QEMU output:\n{}\nguest console:\n{}",
                    status.text(),
                    log_tail(&qemu_log, 10),
                    console_view.tail(CONSOLE_TAIL_LINES)
                );
            }
            let _ = tx.send(true);
        });
        let helpers = [&self.virtiofsd, &self.vsock_daemon]
            .into_iter()
            .flatten()
            .map(HostProcess::exit_watch)
            .collect();
        stop_vm_when_a_helper_dies(self.id.clone(), helpers, &qemu, self.stopping.clone());
        let waited = wait_for_socket(&qemu, &self.paths.qmp_socket(), QMP_SOCKET_TIMEOUT).await;
        self.qemu = Some(qemu);
        waited?;
        self.dialer = Some(dialer);
        self.vsock_kind = Some(vsock);
        tracing::info!(sandbox = %self.id, qemu = %h.path.display(), version = ?version, "QEMU started");
        Ok(())
    }
}

/// A VM dropped without stop() (an error path of the caller) must not keep running: kill its
/// processes. The VM dir stays for `cleanup_vm_dir` (no blocking unmount in drop).
impl Drop for Qemu {
    fn drop(&mut self) {
        for p in [&self.qemu, &self.virtiofsd, &self.vsock_daemon]
            .into_iter()
            .flatten()
        {
            if !p.has_exited() {
                tracing::warn!(sandbox = %self.id, name = p.name(), pid = p.pid(), "VM dropped without stop: killing");
                p.signal(nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

fn tail_suffix_lines(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; its log ends with:\n{}", tail.trim_end())
    }
}

/// Sets or clears FD_CLOEXEC on tap queue `fd`.
fn set_cloexec(fd: i32, on: bool, tap: &str) -> Result<(), HypervisorError> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    fcntl(fd, FcntlArg::F_SETFD(flags))
        .map(|_| ())
        .map_err(|e| {
            HypervisorError::io(format!("close-on-exec of the queue of tap {tap}"), e.into())
        })
}

/// Clears FD_CLOEXEC so QEMU inherits the fd under the same number.
fn inheritable(fd: &OwnedFd) -> Result<i32, HypervisorError> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let raw = fd.as_raw_fd();
    fcntl(raw, FcntlArg::F_SETFD(FdFlag::empty()))
        .map_err(|e| HypervisorError::io("clear close-on-exec on the vhost-vsock fd", e.into()))?;
    Ok(raw)
}

#[async_trait]
impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    async fn start(&mut self) -> Result<(), HypervisorError> {
        self.start_inner().await
    }

    async fn stop(&mut self, grace: Duration) -> Result<(), HypervisorError> {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(q) = &self.qemu {
            if !q.wait_timeout(grace).await {
                match qmp::run_once(&self.paths.qmp_socket(), "quit", qmp::QMP_TIMEOUT).await {
                    Ok(_) => {
                        if !q.wait_timeout(QUIT_TIMEOUT).await {
                            tracing::warn!(sandbox = %self.id, "QEMU did not exit after QMP quit: killing it");
                        }
                    }
                    Err(e) => tracing::warn!(sandbox = %self.id, "QMP quit: {e}: killing QEMU"),
                }
                q.kill().await;
            }
        }
        // The console's last lines (and a flood's report) are logged before it goes.
        if let Some(c) = &self.console {
            c.view().drained(CONSOLE_DRAIN).await;
        }
        // virtiofsd exits once QEMU is gone; vhost-device-vsock waits for a new VM: stop both.
        let (a, b) = (self.virtiofsd.as_ref(), self.vsock_daemon.as_ref());
        tokio::join!(
            async {
                if let Some(p) = a {
                    p.terminate(DAEMON_GRACE).await
                }
            },
            async {
                if let Some(p) = b {
                    p.terminate(DAEMON_GRACE).await
                }
            }
        );
        for name in ["qemu", "virtiofsd", "vhost-device-vsock"] {
            let _ = tokio::fs::remove_file(self.paths.pidfile(name)).await;
        }
        Ok(())
    }

    /// With vhost-user vsock, waits until QEMU started the device (the guest driver is up).
    /// vhost-device-vsock 0.3 reads a host `CONNECT` that arrives before the guest's queues
    /// exist, fails to queue it ("no memory configured") and its vring worker thread exits:
    /// the VM's vsock is dead for good (seen in a few % of boots on a loaded host). QEMU reports
    /// the device state through `x-query-virtio-status` (QEMU >= 7.2); without it, no wait.
    async fn wait_agent_transport(&self, timeout: Duration) -> Result<(), HypervisorError> {
        if self.vsock_kind != Some(VsockKind::VhostUser) {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut q = qmp::connect_retry(&self.paths.qmp_socket(), qmp::QMP_TIMEOUT).await?;
        let devices = match q.execute("x-query-virtio", None).await {
            Ok(v) => v,
            Err(qmp::QmpError::Command { desc, .. }) => {
                tracing::debug!(sandbox = %self.id, "x-query-virtio: {desc}: dialing the agent without waiting for the vsock device");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let path = devices.as_array().and_then(|list| {
            list.iter()
                .find(|d| d["name"].as_str().is_some_and(|n| n.contains("vsock")))
                .and_then(|d| d["path"].as_str().map(str::to_string))
        });
        let Some(path) = path else {
            tracing::debug!(sandbox = %self.id, "no vsock device in x-query-virtio: {devices}");
            return Ok(());
        };
        let args = serde_json::json!({ "path": path });
        loop {
            let status = q
                .execute("x-query-virtio-status", Some(args.clone()))
                .await?;
            if status["vhost-started"].as_bool() == Some(true) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HypervisorError::GuestNotReady(format!(
                    "the guest did not start its vsock device within {timeout:?} (a kernel without virtio-vsock, or a guest stuck early in boot)"
                )));
            }
            // No QMP event says "vhost started": poll briefly.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// vhost-device-vsock 0.3 runs all vring work on one thread named "vring_worker"; when it
    /// hits an error it exits and the VM's vsock is dead while the daemon lives on.
    async fn agent_transport_broken(&self) -> Option<String> {
        let daemon = self.vsock_daemon.as_ref()?;
        if daemon.has_exited() {
            return Some(format!(
                "vhost-device-vsock exited ({})",
                daemon.status_text()
            ));
        }
        let tasks = format!("/proc/{}/task", daemon.pid());
        let mut dir = tokio::fs::read_dir(&tasks).await.ok()?;
        while let Ok(Some(t)) = dir.next_entry().await {
            let comm = tokio::fs::read_to_string(t.path().join("comm"))
                .await
                .unwrap_or_default();
            if comm.trim() == "vring_worker" {
                return None;
            }
        }
        Some(format!(
            "vhost-device-vsock's vring worker thread is gone (pid {}): its vsock device stopped working{}",
            daemon.pid(),
            tail_suffix_lines(&log_tail(daemon.log(), 5))
        ))
    }

    async fn pause(&self) -> Result<(), HypervisorError> {
        qmp::run_once(&self.paths.qmp_socket(), "stop", qmp::QMP_TIMEOUT).await?;
        Ok(())
    }

    async fn resume(&self) -> Result<(), HypervisorError> {
        qmp::run_once(&self.paths.qmp_socket(), "cont", qmp::QMP_TIMEOUT).await?;
        Ok(())
    }

    fn agent_dialer(&self) -> Option<Dialer> {
        self.dialer.clone()
    }

    fn exited(&self) -> watch::Receiver<bool> {
        self.exited_rx.clone()
    }

    fn exit_status(&self) -> Option<String> {
        self.qemu
            .as_ref()
            .filter(|q| q.has_exited())
            .map(|q| q.status_text())
    }

    fn console(&self) -> Option<ConsoleView> {
        self.console.as_ref().map(Console::view)
    }
}
