//! The seams between the task layer and the VM layer: what the Task RPCs need from a guest
//! agent, a booted sandbox VM and the host's mount table. `vm_backend` implements them with
//! the real `kata_shim::{vm, agent}`; unit tests implement them with fakes, so the container
//! lifecycle is tested without QEMU or containerd.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use protocol::agent as pb;
use tokio::sync::watch;

use crate::error::TaskResult;
use crate::rootfs::MountPlan;

/// The agent RPCs the task layer uses. Calls that block in the guest (`wait_process`,
/// `read_stdout`, `read_stderr`, `get_oom_event`) must not be cut short by a timeout.
#[async_trait]
pub trait GuestAgent: Send + Sync + 'static {
    async fn create_sandbox(&self, req: pb::CreateSandboxRequest) -> TaskResult<()>;
    async fn create_container(
        &self,
        req: pb::CreateContainerRequest,
    ) -> TaskResult<pb::CreateContainerResponse>;
    async fn start_container(&self, req: pb::StartContainerRequest) -> TaskResult<()>;
    async fn remove_container(&self, req: pb::RemoveContainerRequest) -> TaskResult<()>;
    async fn exec_process(
        &self,
        req: pb::ExecProcessRequest,
    ) -> TaskResult<pb::ExecProcessResponse>;
    async fn signal_process(&self, req: pb::SignalProcessRequest) -> TaskResult<()>;
    async fn wait_process(
        &self,
        req: pb::WaitProcessRequest,
    ) -> TaskResult<pb::WaitProcessResponse>;
    async fn read_stdout(&self, req: pb::ReadStreamRequest) -> TaskResult<pb::ReadStreamResponse>;
    async fn read_stderr(&self, req: pb::ReadStreamRequest) -> TaskResult<pb::ReadStreamResponse>;
    async fn write_stdin(&self, req: pb::WriteStreamRequest)
        -> TaskResult<pb::WriteStreamResponse>;
    async fn close_stdin(&self, req: pb::CloseStdinRequest) -> TaskResult<()>;
    async fn tty_win_resize(&self, req: pb::TtyWinResizeRequest) -> TaskResult<()>;
    async fn pause_container(&self, req: pb::PauseContainerRequest) -> TaskResult<()>;
    async fn resume_container(&self, req: pb::ResumeContainerRequest) -> TaskResult<()>;
    async fn update_container(&self, req: pb::UpdateContainerRequest) -> TaskResult<()>;
    async fn stats_container(
        &self,
        req: pb::StatsContainerRequest,
    ) -> TaskResult<pb::StatsContainerResponse>;
    async fn list_processes(
        &self,
        req: pb::ListProcessesRequest,
    ) -> TaskResult<pb::ListProcessesResponse>;
    async fn get_oom_event(&self, req: pb::GetOOMEventRequest) -> TaskResult<pb::OOMEvent>;
}

/// A booted sandbox VM whose agent answered.
#[async_trait]
pub trait SandboxVm: Send + Sync + 'static {
    fn agent(&self) -> Arc<dyn GuestAgent>;
    /// Host directory the guest sees at `protocol::GUEST_SHARED_DIR`.
    fn shared_dir(&self) -> &Path;
    /// The storage CreateSandbox passes so the agent mounts the shared directory.
    fn shared_storage(&self) -> pb::Storage;
    /// Becomes true when the hypervisor process is gone.
    fn exited(&self) -> watch::Receiver<bool>;
    /// DestroySandbox (best effort), stop the VM and its helpers, remove the sandbox dir.
    async fn shutdown(self: Box<Self>) -> TaskResult<()>;
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
}

/// Boots sandbox VMs.
#[async_trait]
pub trait VmLauncher: Send + Sync + 'static {
    async fn boot(&self, req: BootRequest) -> TaskResult<Box<dyn SandboxVm>>;
}

/// Host mounts of a container's rootfs and bind-mount sources into the shared directory.
/// Blocking calls (mount(2)); the task layer runs them on the blocking pool.
pub trait HostMounter: Send + Sync + 'static {
    /// Mount everything in the plan. On error nothing of the plan stays mounted.
    fn mount(&self, plan: &MountPlan) -> TaskResult<()>;
    /// Unmount and remove everything the plan created (best effort, idempotent).
    fn unmount(&self, plan: &MountPlan) -> TaskResult<()>;
}

/// The VM layer as the task layer sees it.
#[derive(Clone)]
pub struct Backend {
    pub launcher: Arc<dyn VmLauncher>,
    pub mounter: Arc<dyn HostMounter>,
}
