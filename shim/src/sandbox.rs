//! One sandbox: the VM booted by the first Create, its agent, and its shared directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use protocol::agent as pb;
use tokio::sync::watch;

use crate::backend::{Backend, BootRequest, GuestAgent, SandboxVm};
use crate::error::TaskResult;

pub struct Sandbox {
    pub id: String,
    pub agent: Arc<dyn GuestAgent>,
    pub shared_dir: PathBuf,
    vm: Box<dyn SandboxVm>,
}

impl Sandbox {
    /// Boots the VM and creates the sandbox in the guest. On error nothing is left running.
    pub async fn boot(backend: &Backend, req: BootRequest, hostname: String) -> TaskResult<Self> {
        let id = req.sandbox_id.clone();
        let vm = backend.launcher.boot(req).await?;
        let agent = vm.agent();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let create = pb::CreateSandboxRequest {
            sandbox_id: id.clone(),
            hostname,
            storages: vec![vm.shared_storage()],
            host_time_sec: now.as_secs() as i64,
            host_time_nsec: i64::from(now.subsec_nanos()),
            ..Default::default()
        };
        if let Err(e) = agent.create_sandbox(create).await {
            if let Err(se) = vm.shutdown().await {
                tracing::warn!("shutting down sandbox {id} after a failed CreateSandbox: {se}");
            }
            return Err(e.context(format_args!("creating sandbox {id} in the guest")));
        }
        Ok(Self {
            shared_dir: vm.shared_dir().to_path_buf(),
            id,
            agent,
            vm,
        })
    }

    /// Becomes true when the VM is gone.
    pub fn exited(&self) -> watch::Receiver<bool> {
        self.vm.exited()
    }

    pub fn is_dead(&self) -> bool {
        *self.vm.exited().borrow()
    }

    /// Stops the VM and removes everything it left on the host.
    pub async fn shutdown(self) -> TaskResult<()> {
        self.vm.shutdown().await
    }
}
