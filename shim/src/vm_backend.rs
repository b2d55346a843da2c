//! The task layer's seams (`backend`) implemented with the real VM layer:
//! `config::load` + annotation overrides, `vm::Vm` and the `agent::Agent` client.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::ttrpc::Code;
use protocol::agent as pb;
use tokio::sync::watch;

use crate::agent::{Agent, AgentError};
use crate::backend::{BootRequest, GuestAgent, SandboxVm, VmLauncher};
use crate::config::{self, LoadRequest};
use crate::error::{TaskError, TaskResult};
use crate::vm::{self, Vm};

/// Keeps the guest's status code (e.g. NOT_FOUND) so containerd sees what the agent meant.
fn agent_err(e: AgentError) -> TaskError {
    let code = e.status().map(|s| s.code()).unwrap_or(Code::INTERNAL);
    TaskError::new(code, e.to_string())
}

struct AgentClient(Agent);

macro_rules! forward {
    ($($name:ident($req:ty) -> $resp:ty => $map:expr;)+) => {
        #[async_trait]
        impl GuestAgent for AgentClient {
            $(
                async fn $name(&self, req: $req) -> TaskResult<$resp> {
                    self.0.$name(req).await.map($map).map_err(agent_err)
                }
            )+
        }
    };
}

forward! {
    create_sandbox(pb::CreateSandboxRequest) -> () => drop;
    create_container(pb::CreateContainerRequest) -> pb::CreateContainerResponse => |r| r;
    start_container(pb::StartContainerRequest) -> () => drop;
    remove_container(pb::RemoveContainerRequest) -> () => drop;
    exec_process(pb::ExecProcessRequest) -> pb::ExecProcessResponse => |r| r;
    signal_process(pb::SignalProcessRequest) -> () => drop;
    wait_process(pb::WaitProcessRequest) -> pb::WaitProcessResponse => |r| r;
    read_stdout(pb::ReadStreamRequest) -> pb::ReadStreamResponse => |r| r;
    read_stderr(pb::ReadStreamRequest) -> pb::ReadStreamResponse => |r| r;
    write_stdin(pb::WriteStreamRequest) -> pb::WriteStreamResponse => |r| r;
    close_stdin(pb::CloseStdinRequest) -> () => drop;
    tty_win_resize(pb::TtyWinResizeRequest) -> () => drop;
    pause_container(pb::PauseContainerRequest) -> () => drop;
    resume_container(pb::ResumeContainerRequest) -> () => drop;
    update_container(pb::UpdateContainerRequest) -> () => drop;
    stats_container(pb::StatsContainerRequest) -> pb::StatsContainerResponse => |r| r;
    list_processes(pb::ListProcessesRequest) -> pb::ListProcessesResponse => |r| r;
    get_oom_event(pb::GetOOMEventRequest) -> pb::OOMEvent => |r| r;
}

struct QemuVm {
    vm: Vm,
    agent: Arc<dyn GuestAgent>,
}

#[async_trait]
impl SandboxVm for QemuVm {
    fn agent(&self) -> Arc<dyn GuestAgent> {
        self.agent.clone()
    }
    fn shared_dir(&self) -> &Path {
        self.vm.shared_dir()
    }
    fn shared_storage(&self) -> pb::Storage {
        self.vm.shared_storage()
    }
    fn exited(&self) -> watch::Receiver<bool> {
        self.vm.exited()
    }
    async fn shutdown(self: Box<Self>) -> TaskResult<()> {
        let id = self.vm.id().to_string();
        self.vm
            .shutdown()
            .await
            .map_err(|e| TaskError::internal(format!("shutting down sandbox {id}: {e}")))
    }
}

/// Loads the configuration for the sandbox and boots its VM with QEMU.
pub struct QemuLauncher;

#[async_trait]
impl VmLauncher for QemuLauncher {
    async fn boot(&self, req: BootRequest) -> TaskResult<Box<dyn SandboxVm>> {
        let load = LoadRequest {
            annotations: req.annotations.clone(),
            config_path: req.config_path.clone(),
        };
        let loaded = tokio::task::spawn_blocking(move || config::load(&load))
            .await
            .map_err(|e| TaskError::internal(format!("config task: {e}")))?
            .map_err(|e| TaskError::invalid(format!("runtime configuration: {e}")))?;
        for w in &loaded.warnings {
            // Each warning already names its file.
            tracing::warn!("{w}");
        }
        let mut cfg = loaded.config;
        if cfg.runtime.enable_debug {
            crate::logging::enable_debug();
        }
        let overrides = config::annotation_overrides(&cfg, &req.annotations)
            .map_err(|e| TaskError::invalid(format!("annotations: {e}")))?;
        for key in &overrides.ignored {
            tracing::warn!("annotation {key} is not supported by this runtime; ignored");
        }
        overrides.apply(&mut cfg);
        tracing::info!(
            "sandbox {}: configuration {}",
            req.sandbox_id,
            loaded.path.display()
        );
        let vm = Vm::boot(&cfg, &req.sandbox_id).await.map_err(|e| {
            TaskError::internal(format!(
                "starting the VM of sandbox {}: {e}",
                req.sandbox_id
            ))
        })?;
        let agent: Arc<dyn GuestAgent> = Arc::new(AgentClient(vm.agent().clone()));
        Ok(Box::new(QemuVm { vm, agent }))
    }
}

/// The shim's `delete` after a crash: kill what the dead shim left running and remove its
/// sandbox directory (best effort; failures are logged).
pub async fn cleanup_sandbox(sandbox_id: &str) {
    if let Err(e) = vm::cleanup_sandbox_dir(sandbox_id).await {
        tracing::warn!("cleaning up sandbox {sandbox_id}: {e}");
    }
}
