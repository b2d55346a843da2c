//! What a sandbox needs from the layers below it: a launcher that boots a VM whose agent
//! answers, and the host mounter. `vm::launcher` implements them with QEMU or cloud-hypervisor;
//! unit tests implement them with fakes, so the container lifecycle is tested without either.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::TaskResult;
use crate::guest::GuestAgent;
use crate::resources::network::GuestNetwork;
use crate::resources::rootfs::HostMounter;
use crate::resources::share::Share;

/// A booted sandbox VM whose agent answered.
#[async_trait]
pub trait SandboxVm: Send + Sync + 'static {
    fn agent(&self) -> Arc<dyn GuestAgent>;
    /// The directory shared with the guest.
    fn share(&self) -> &Share;
    /// Becomes true when the hypervisor process is gone.
    fn exited(&self) -> watch::Receiver<bool>;
    /// The pod's interfaces, routes and neighbours the agent is to be told (none without a
    /// pod network).
    fn guest_network(&self) -> Option<&GuestNetwork> {
        None
    }
    /// After the VM died: Some(description) when the host's OOM killer took one of its
    /// processes in the pod's cgroup (the pod's memory limit plus overhead was too small).
    fn host_oom(&self) -> Option<String> {
        None
    }
    /// Stop the VM and its helpers (after DestroySandbox when `how` is orderly), remove the
    /// sandbox dir.
    async fn shutdown(self: Box<Self>, how: Shutdown) -> TaskResult<()>;
}

/// How a VM is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// The guest is told first (DestroySandbox, best effort), then the VM stops.
    Orderly,
    /// The guest is not asked: it stopped answering, or cannot be trusted to end its tasks.
    Abandon,
}

/// What the first Create of a sandbox knows when it boots the VM.
#[derive(Debug, Clone, Default)]
pub struct BootRequest {
    pub sandbox_id: String,
    pub bundle: PathBuf,
    /// Annotations of the sandbox's first container (allowlisted overrides).
    pub annotations: HashMap<String, String>,
    /// runtimeoptions.v1.Options.config_path from the CreateTaskRequest, if any.
    pub config_path: Option<PathBuf>,
    /// The pod's network namespace (the sandbox spec's network namespace path, from CNI):
    /// its interfaces become the VM's NICs. None: a VM without NICs.
    pub netns: Option<PathBuf>,
    /// The sandbox spec's `linux.cgroupsPath`: the host cgroup the VM's processes join.
    pub cgroups_path: Option<String>,
}

/// Boots sandbox VMs.
#[async_trait]
pub trait VmLauncher: Send + Sync + 'static {
    async fn boot(&self, req: BootRequest) -> TaskResult<Box<dyn SandboxVm>>;
}

/// The layers below the task layer, as it sees them.
#[derive(Clone)]
pub struct Platform {
    pub launcher: Arc<dyn VmLauncher>,
    pub mounter: Arc<dyn HostMounter>,
}
