//! cloud-hypervisor backend: the VMM is started with only its API socket, then configured and
//! booted through its REST API (`vm.create` with the whole [`api::VmConfig`], `vm.boot`).
//! vsock is built into cloud-hypervisor (hybrid vsock on a unix socket: no helper daemon);
//! virtio-fs uses virtiofsd as with QEMU, started while the VMM comes up.
//!
//! cloud-hypervisor needs a working KVM: it cannot run on hosts where only TCG works.

pub mod api;
pub mod client;
#[cfg(test)]
mod schema;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::process::Command;
use tokio::sync::watch;

use self::api::{
    endpoint, ConsoleConfig, ConsoleMode, CpusConfig, FsConfig, MemoryConfig, NetConfig,
    PayloadConfig, PciDeviceInfo, RngConfig, SerialConfig, VmConfig, VmInfo, VmmPingResponse,
    VsockConfig,
};
use self::client::{decode, ApiClient, ClhError, Method};
use super::devices::{Devices, NetDevice};
use super::host_process::{stop_vm_when_a_helper_dies, wait_for_socket, CgroupJoin, HostProcess};
use super::kernel_cmdline;
use super::layout::MAX_SOCKET_PATH;
use super::{host, log_tail, require_file, virtiofsd, Hypervisor, HypervisorError, VmPaths};
use crate::config::{ClhConfig, Config, SharedFs};
use crate::guest::vsock::Dialer;
use crate::guest_output::console::{self, Console, ConsoleView};

/// Name of the VMM's API socket in the sandbox dir.
pub const API_SOCKET_NAME: &str = "clh-api.sock";
/// Name of the VMM process (log file `<name>.log`, pid file `<name>.pid`).
pub const PROCESS_NAME: &str = "cloud-hypervisor";
/// Guest context id. Each VMM has its own vsock device behind its own socket, so every
/// sandbox can use the first non-reserved CID.
pub const GUEST_CID: u64 = 3;
/// virtio-fs queues: one request queue of 1024 entries, as with QEMU.
const FS_NUM_QUEUES: u32 = 1;
const FS_QUEUE_SIZE: u32 = 1024;
/// Entropy of the guest's virtio-rng.
const RNG_SOURCE: &str = "/dev/urandom";
/// KVM device cloud-hypervisor opens.
const KVM_DEVICE: &str = "/dev/kvm";
/// Grace period of virtiofsd once the VMM is gone.
const DAEMON_GRACE: Duration = Duration::from_secs(1);
/// Bound of each best-effort shutdown request while stopping.
const STOP_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Log lines quoted in start-up errors.
const LOG_TAIL_LINES: usize = 20;
/// How long after `vm.boot` the VMM may take to serve the console socket.
const CONSOLE_SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds of the waits of this backend (shorter in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClhTimeouts {
    /// From spawning the VMM to its API answering `vmm.ping`.
    pub api_socket: Duration,
    /// One API request (connect to last byte of the answer); vm.create/vm.boot included.
    pub api_call: Duration,
    /// After `vmm.shutdown`, how long the VMM may take to exit before SIGKILL.
    pub shutdown: Duration,
}

impl Default for ClhTimeouts {
    fn default() -> Self {
        ClhTimeouts {
            api_socket: Duration::from_secs(10),
            api_call: Duration::from_secs(10),
            shutdown: Duration::from_secs(3),
        }
    }
}

/// Path of the VMM's API socket for a sandbox.
pub fn api_socket(paths: &VmPaths) -> PathBuf {
    paths.dir().join(API_SOCKET_NAME)
}

/// The `vm.create` body: a pure function of the configuration and the sandbox paths.
pub fn vm_config(
    clh: &ClhConfig,
    kernel_cmdline: String,
    paths: &VmPaths,
    host_cpus: u32,
) -> VmConfig {
    let g = &clh.guest;
    let max_vcpus = if g.default_maxvcpus == 0 {
        host_cpus
    } else {
        g.default_maxvcpus
    };
    let fs = match g.shared_fs {
        SharedFs::VirtioFs => vec![FsConfig {
            tag: protocol::SHARED_FS_TAG.to_string(),
            socket: paths.virtiofsd_socket(),
            num_queues: FS_NUM_QUEUES,
            queue_size: FS_QUEUE_SIZE,
            id: None,
        }],
        SharedFs::Virtio9p | SharedFs::None => Vec::new(),
    };
    VmConfig {
        payload: PayloadConfig {
            kernel: Some(g.kernel.clone()),
            initramfs: Some(g.initrd.clone()),
            cmdline: Some(kernel_cmdline),
        },
        cpus: Some(CpusConfig {
            boot_vcpus: g.default_vcpus,
            max_vcpus: max_vcpus.max(g.default_vcpus),
        }),
        memory: Some(MemoryConfig {
            size: u64::from(g.default_memory) << 20,
            // vhost-user (virtiofsd) maps guest RAM: it must be shared.
            shared: Some(true),
        }),
        // The guest's console= is the serial port; the virtio console is not used. The VMM
        // serves it on a socket the shim reads and caps (`guest_output::console`), never into
        // a file of its own, which the guest could grow without bound.
        serial: Some(SerialConfig {
            mode: ConsoleMode::Socket,
            file: None,
            socket: Some(paths.console_socket()),
        }),
        console: Some(ConsoleConfig {
            mode: ConsoleMode::Off,
            file: None,
        }),
        vsock: Some(VsockConfig {
            cid: GUEST_CID,
            socket: paths.hybrid_vsock(),
            id: None,
        }),
        fs,
        net: Vec::new(),
        rng: Some(RngConfig {
            src: RNG_SOURCE.into(),
        }),
    }
}

/// The VMM's command line: only the API socket (and verbosity); everything else goes through
/// the API. Logs go to stderr, which [`HostProcess`] appends to `cloud-hypervisor.log`.
pub fn vmm_args(api_socket: &Path, debug: bool) -> Vec<String> {
    let mut a = vec![
        "--api-socket".to_string(),
        format!("path={}", api_socket.display()),
    ];
    if debug {
        a.push("-vv".into());
    }
    a
}

impl From<ClhError> for HypervisorError {
    fn from(e: ClhError) -> Self {
        HypervisorError::io("cloud-hypervisor API", std::io::Error::other(e))
    }
}

pub struct Clh {
    config: Config,
    clh: ClhConfig,
    id: String,
    paths: VmPaths,
    devices: Devices,
    timeouts: ClhTimeouts,
    kvm_device: PathBuf,
    api: ApiClient,
    vmm: Option<HostProcess>,
    virtiofsd: Option<HostProcess>,
    console: Option<Console>,
    dialer: Option<Dialer>,
    exited_tx: watch::Sender<bool>,
    exited_rx: watch::Receiver<bool>,
    /// Set once stop() runs: a helper's exit after that is expected.
    stopping: Arc<AtomicBool>,
    /// The pod's cgroup every process of this VM joins.
    cgroup: CgroupJoin,
}

impl Clh {
    /// `config` supplies the agent and runtime settings and the file name for error
    /// messages; `clh` is its `[hypervisor.clh]` section.
    pub fn new(
        config: &Config,
        clh: ClhConfig,
        devices: Devices,
        id: &str,
        paths: VmPaths,
        cgroup: CgroupJoin,
    ) -> Clh {
        let (exited_tx, exited_rx) = watch::channel(false);
        let timeouts = ClhTimeouts::default();
        Clh {
            config: config.clone(),
            clh,
            id: id.to_string(),
            api: ApiClient::new(api_socket(&paths), timeouts.api_call),
            paths,
            devices,
            timeouts,
            kvm_device: PathBuf::from(KVM_DEVICE),
            vmm: None,
            virtiofsd: None,
            console: None,
            dialer: None,
            exited_tx,
            exited_rx,
            stopping: Arc::new(AtomicBool::new(false)),
            cgroup,
        }
    }

    pub fn with_timeouts(mut self, timeouts: ClhTimeouts) -> Clh {
        self.api = self.api.with_timeout(timeouts.api_call);
        self.timeouts = timeouts;
        self
    }

    /// The KVM device checked before starting (tests point it elsewhere).
    pub fn with_kvm_device(mut self, path: impl Into<PathBuf>) -> Clh {
        self.kvm_device = path.into();
        self
    }

    /// Pid of the VMM once spawned (e.g. to move it into the sandbox cgroup).
    pub fn pid(&self) -> Option<u32> {
        self.vmm.as_ref().map(HostProcess::pid)
    }

    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    fn origin(&self, key: &str) -> String {
        self.config.origin(ClhConfig::SECTION, key)
    }

    fn debug(&self) -> bool {
        self.clh.guest.enable_debug || self.config.runtime.enable_debug
    }

    /// The guest kernel command line, shared with the QEMU backend: console, panic/reboot
    /// behaviour, agent options, then kernel_params.
    pub fn kernel_cmdline(&self) -> String {
        kernel_cmdline::kernel_cmdline(
            &self.clh.guest,
            self.clh.arch(),
            &self.config.agent,
            self.config.agent_debug(),
            None,
        )
    }

    /// The `vm.create` body for this sandbox.
    pub fn vm_config(&self) -> VmConfig {
        vm_config(
            &self.clh,
            self.kernel_cmdline(),
            &self.paths,
            host::cpu_count(),
        )
    }

    /// Named errors for everything the VM needs, before anything is started.
    fn check(&self) -> Result<(), HypervisorError> {
        let g = &self.clh.guest;
        if g.shared_fs == SharedFs::Virtio9p {
            return Err(HypervisorError::Unsupported(format!(
                "{}: cloud-hypervisor has no virtio-9p device; use \"virtio-fs\" or \"none\"",
                self.origin("shared_fs")
            )));
        }
        require_file("cloud-hypervisor", &self.clh.path, self.origin("path"))?;
        require_file("kernel", &g.kernel, self.origin("kernel"))?;
        require_file("initrd", &g.initrd, self.origin("initrd"))?;
        if g.shared_fs == SharedFs::VirtioFs {
            require_file(
                "virtiofsd",
                &g.virtio_fs_daemon,
                self.origin("virtio_fs_daemon"),
            )?;
        }
        let mut sockets = vec![
            api_socket(&self.paths),
            self.paths.hybrid_vsock(),
            self.paths.console_socket(),
        ];
        if g.shared_fs == SharedFs::VirtioFs {
            sockets.push(self.paths.virtiofsd_socket());
        }
        if let Some(long) = sockets
            .iter()
            .find(|s| s.as_os_str().len() > MAX_SOCKET_PATH)
        {
            return Err(HypervisorError::Unsupported(format!(
                "socket path {} is longer than {MAX_SOCKET_PATH} bytes (use a shorter run dir)",
                long.display()
            )));
        }
        // Without KVM cloud-hypervisor exits at once; say why up front.
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.kvm_device)
        {
            return Err(HypervisorError::Unsupported(format!(
                "cloud-hypervisor needs KVM, but {} cannot be opened: {e} (use the QEMU configuration on this host)",
                self.kvm_device.display()
            )));
        }
        Ok(())
    }

    async fn start_inner(&mut self) -> Result<(), HypervisorError> {
        self.check()?;
        if let Some(why) = NetDevice::unsupported("cloud-hypervisor", &self.devices.net) {
            return Err(HypervisorError::Unsupported(why));
        }
        let virtio_fs = self.clh.guest.shared_fs == SharedFs::VirtioFs;

        let socket = api_socket(&self.paths);
        let mut cmd = Command::new(&self.clh.path);
        cmd.args(vmm_args(&socket, self.debug()));
        let vmm = HostProcess::spawn(
            PROCESS_NAME,
            cmd,
            &self.paths.log(PROCESS_NAME),
            &self.paths.pidfile(PROCESS_NAME),
            &self.cgroup,
        )?;
        let mut vmm_exited = vmm.exited();
        let tx = self.exited_tx.clone();
        tokio::spawn(async move {
            let _ = vmm_exited.wait_for(|e| *e).await;
            let _ = tx.send(true);
        });
        self.vmm = Some(vmm);

        // virtiofsd and the VMM's API come up in parallel; vm.create needs both.
        let debug = self.debug();
        let fs_fut = async {
            if virtio_fs {
                virtiofsd::start(
                    &self.clh.guest,
                    &self.paths,
                    &self.devices.shared_dir,
                    debug,
                    &self.cgroup,
                )
                .await
                .map(Some)
            } else {
                Ok(None)
            }
        };
        let api_fut = async {
            match &self.vmm {
                Some(vmm) => wait_for_api(vmm, &self.api, self.timeouts.api_socket).await,
                None => Err(HypervisorError::Unsupported("VMM not spawned".into())),
            }
        };
        let (fs, ping) = tokio::join!(fs_fut, api_fut);
        let fs_err = match fs {
            Ok(p) => {
                self.virtiofsd = p;
                None
            }
            Err(e) => Some(e),
        };
        let ping = ping?;
        if let Some(e) = fs_err {
            return Err(e);
        }
        if let (Some(vmm), Some(fs)) = (&self.vmm, &self.virtiofsd) {
            stop_vm_when_a_helper_dies(
                self.id.clone(),
                vec![fs.exit_watch()],
                vmm,
                self.stopping.clone(),
            );
        }
        tracing::info!(sandbox = %self.id, version = %ping.version, "cloud-hypervisor API ready");

        let body = self.vm_config();
        tracing::debug!(sandbox = %self.id, ?body, "vm.create");
        self.api.put(endpoint::VM_CREATE, Some(&body)).await?;
        self.api.put::<()>(endpoint::VM_BOOT, None).await?;
        // The VMM creates the console socket at boot; output before the shim connects waits in
        // its own bounded buffer (cloud-hypervisor's serial buffer; older releases drop it).
        self.console = Some(Console::spawn(
            console::connect_when_ready(self.paths.console_socket(), CONSOLE_SOCKET_TIMEOUT),
            self.paths.console_log(),
            self.id.clone(),
        ));
        self.dialer = Some(Dialer::Hybrid {
            uds_path: self.paths.hybrid_vsock(),
        });
        tracing::info!(sandbox = %self.id, clh = %self.clh.path.display(), "cloud-hypervisor VM booted");
        Ok(())
    }

    /// `GET vm.info`: the VM's state and effective configuration.
    pub async fn info(&self) -> Result<VmInfo, HypervisorError> {
        Ok(self.api.get(endpoint::VM_INFO).await?)
    }

    /// `PUT vm.add-net`: hot-plugs a virtio-net device; the PCI address when the VMM gives one.
    pub async fn add_net(&self, net: &NetConfig) -> Result<Option<PciDeviceInfo>, HypervisorError> {
        self.add_device(endpoint::VM_ADD_NET, net).await
    }

    /// `PUT vm.add-fs`: hot-plugs a virtio-fs device.
    pub async fn add_fs(&self, fs: &FsConfig) -> Result<Option<PciDeviceInfo>, HypervisorError> {
        self.add_device(endpoint::VM_ADD_FS, fs).await
    }

    async fn add_device<B: serde::Serialize>(
        &self,
        ep: &str,
        body: &B,
    ) -> Result<Option<PciDeviceInfo>, HypervisorError> {
        let answer = self.api.put(ep, Some(body)).await?;
        // 200 carries the new device's PCI address; 204 (cold-plugged) nothing.
        if answer.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        Ok(Some(decode(Method::Put, ep, &answer)?))
    }

    /// Removes the sockets and pid files of this backend (logs stay for the caller).
    async fn remove_files(&self) {
        let files = [
            api_socket(&self.paths),
            self.paths.console_socket(),
            self.paths.hybrid_vsock(),
            self.paths.virtiofsd_socket(),
            self.paths.pidfile(PROCESS_NAME),
            self.paths.pidfile("virtiofsd"),
        ];
        for f in files {
            match tokio::fs::remove_file(&f).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(sandbox = %self.id, "remove {}: {e}", f.display()),
            }
        }
    }
}

/// Waits until the VMM's API answers `vmm.ping`, failing early if the VMM exits. The socket
/// appearing is polled (no portable event for "a socket was bound"); between the bind and the
/// listen a connect is refused, so that is retried too, within the same deadline.
async fn wait_for_api(
    vmm: &HostProcess,
    api: &ApiClient,
    timeout: Duration,
) -> Result<VmmPingResponse, HypervisorError> {
    let deadline = tokio::time::Instant::now() + timeout;
    wait_for_socket(vmm, api.socket(), timeout).await?;
    let mut exited = vmm.exited();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let last = match api
            .with_timeout(left.max(Duration::from_millis(1)))
            .get::<VmmPingResponse>(endpoint::VMM_PING)
            .await
        {
            Ok(p) => return Ok(p),
            Err(e) if e.is_connect() => e,
            Err(e) => return Err(e.into()),
        };
        if *exited.borrow() {
            return Err(HypervisorError::Exited {
                what: vmm.name().to_string(),
                status: vmm.status_text(),
                waiting_for: "its API answered".into(),
                log_tail: log_tail(vmm.log(), LOG_TAIL_LINES),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HypervisorError::io(
                format!("cloud-hypervisor API not answering within {timeout:?}"),
                std::io::Error::other(format!(
                    "{last}{}",
                    super::tail_suffix(&log_tail(vmm.log(), LOG_TAIL_LINES))
                )),
            ));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            _ = exited.changed() => {}
        }
    }
}

#[async_trait]
impl Hypervisor for Clh {
    fn name(&self) -> &'static str {
        "clh"
    }

    /// Beyond what the trait asks, a failed start has already cleaned up after itself
    /// (process killed and reaped, sockets and pid files removed); the caller's `stop` then
    /// finds nothing to do.
    async fn start(&mut self) -> Result<(), HypervisorError> {
        let r = self.start_inner().await;
        if r.is_err() {
            if let Err(e) = self.stop(Duration::ZERO).await {
                tracing::warn!(sandbox = %self.id, "cleanup after failed start: {e}");
            }
        }
        r
    }

    async fn stop(&mut self, grace: Duration) -> Result<(), HypervisorError> {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(vmm) = &self.vmm {
            if !vmm.has_exited() && !vmm.wait_timeout(grace).await {
                // Politely first: the guest stops, then the VMM exits by itself.
                let api = self
                    .api
                    .with_timeout(STOP_REQUEST_TIMEOUT.min(self.timeouts.api_call));
                if let Err(e) = api.put::<()>(endpoint::VM_SHUTDOWN, None).await {
                    tracing::debug!(sandbox = %self.id, "{e}");
                }
                match api.put::<()>(endpoint::VMM_SHUTDOWN, None).await {
                    Ok(_) => {
                        if !vmm.wait_timeout(self.timeouts.shutdown).await {
                            tracing::warn!(sandbox = %self.id, "cloud-hypervisor still running {:?} after vmm.shutdown: killing it", self.timeouts.shutdown);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(sandbox = %self.id, "{e}: killing cloud-hypervisor")
                    }
                }
                vmm.kill().await;
            }
        }
        if let Some(p) = &self.virtiofsd {
            p.terminate(DAEMON_GRACE).await;
        }
        self.remove_files().await;
        Ok(())
    }

    async fn pause(&self) -> Result<(), HypervisorError> {
        self.api.put::<()>(endpoint::VM_PAUSE, None).await?;
        Ok(())
    }

    async fn resume(&self) -> Result<(), HypervisorError> {
        self.api.put::<()>(endpoint::VM_RESUME, None).await?;
        Ok(())
    }

    fn agent_dialer(&self) -> Option<Dialer> {
        self.dialer.clone()
    }

    fn exited(&self) -> watch::Receiver<bool> {
        self.exited_rx.clone()
    }

    fn exit_status(&self) -> Option<String> {
        self.vmm
            .as_ref()
            .filter(|p| p.has_exited())
            .map(|p| p.status_text())
    }

    fn console(&self) -> Option<ConsoleView> {
        self.console.as_ref().map(Console::view)
    }
}
