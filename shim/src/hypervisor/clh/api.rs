//! Typed bodies of the cloud-hypervisor REST API (only the objects and fields this runtime
//! sends or reads). Field names, types and required lists follow cloud-hypervisor's OpenAPI
//! description (vmm/src/api/openapi/cloud-hypervisor.yaml); `schema.rs` checks our bodies
//! against a table of it. Optional fields are left out of the JSON when unset, so the VMM
//! applies its own documented defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Prefix of every endpoint.
pub const API_PREFIX: &str = "/api/v1/";

/// Endpoint names (after [`API_PREFIX`]).
pub mod endpoint {
    pub const VMM_PING: &str = "vmm.ping";
    pub const VMM_SHUTDOWN: &str = "vmm.shutdown";
    pub const VM_CREATE: &str = "vm.create";
    pub const VM_BOOT: &str = "vm.boot";
    pub const VM_SHUTDOWN: &str = "vm.shutdown";
    pub const VM_PAUSE: &str = "vm.pause";
    pub const VM_RESUME: &str = "vm.resume";
    pub const VM_INFO: &str = "vm.info";
    pub const VM_ADD_NET: &str = "vm.add-net";
    pub const VM_ADD_FS: &str = "vm.add-fs";
}

/// Body of `PUT vm.create`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmConfig {
    pub payload: PayloadConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<CpusConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub fs: Vec<FsConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub net: Vec<NetConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rng: Option<RngConfig>,
}

/// What the guest boots: kernel (PVH `vmlinux` on x86_64, `Image` on aarch64), initramfs and
/// command line. No firmware: direct kernel boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PayloadConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpusConfig {
    pub boot_vcpus: u32,
    pub max_vcpus: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Bytes.
    pub size: u64,
    /// Guest RAM mapped shared: vhost-user devices (virtiofsd) need to map it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
}

/// How a serial port or virtio console is connected on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleMode {
    Off,
    Pty,
    Tty,
    File,
    Socket,
    Null,
}

/// The legacy serial port (8250 on x86_64, PL011 on aarch64): the guest's `console=`.
/// In `Socket` mode the VMM listens on `socket` and the client reads the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SerialConfig {
    pub mode: ConsoleMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub socket: Option<PathBuf>,
}

/// The virtio console (`hvc0`); unused by this runtime, so Off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleConfig {
    pub mode: ConsoleMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// cloud-hypervisor's built-in vsock device. The VMM listens on `socket` and speaks the hybrid
/// vsock protocol (`CONNECT <port>\n`) to the host, like vhost-device-vsock does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VsockConfig {
    /// Guest context id (>= 3).
    pub cid: u64,
    pub socket: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A virtio-fs device backed by a vhost-user daemon (virtiofsd). Body of `PUT vm.add-fs` too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FsConfig {
    pub tag: String,
    pub socket: PathBuf,
    pub num_queues: u32,
    pub queue_size: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A virtio-net device on a host tap. Body of `PUT vm.add-net` (networking).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// Guest MAC address, "aa:bb:cc:dd:ee:ff".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_queues: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Entropy source of the guest's virtio-rng.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RngConfig {
    pub src: PathBuf,
}

/// Answer of `GET vmm.ping`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VmmPingResponse {
    pub version: String,
    #[serde(default)]
    pub build_version: Option<String>,
    #[serde(default)]
    pub pid: Option<i64>,
}

/// State of the VM as `GET vm.info` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Created,
    Running,
    Shutdown,
    Paused,
    BreakPoint,
}

/// Answer of `GET vm.info`. The config is kept untyped: the VMM reports every field with its
/// defaults filled in, many more than we model.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VmInfo {
    pub state: VmState,
    pub config: serde_json::Value,
    #[serde(default)]
    pub memory_actual_size: Option<i64>,
}

/// Answer of a hot-plug (`vm.add-*`) with status 200.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PciDeviceInfo {
    pub id: String,
    pub bdf: String,
}
