//! Reaching the guest: the agent client and the vsock dialers it rides on, and `GuestAgent`,
//! the agent calls the task layer makes (implemented by the client, faked in unit tests).

pub mod client;
pub mod vsock;

use async_trait::async_trait;
use containerd_shim_protos::ttrpc::Code;
use protocol::agent as pb;
use protocol::stdio_stream::StreamHeader;

use crate::error::{TaskError, TaskResult};
use client::{Agent, AgentError};

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
    async fn update_interface(&self, req: pb::UpdateInterfaceRequest) -> TaskResult<()>;
    async fn update_routes(&self, req: pb::UpdateRoutesRequest) -> TaskResult<()>;
    async fn add_arp_neighbors(&self, req: pb::AddARPNeighborsRequest) -> TaskResult<()>;
    /// The agent's health check: that it still answers.
    async fn check(&self, req: pb::CheckRequest) -> TaskResult<pb::HealthCheckResponse>;
    /// A connection that becomes one stdio fd of the process the header names, opened before
    /// that process is created; `None` where stdio goes through the stream RPCs only.
    async fn open_stdio(&self, _header: &StreamHeader) -> TaskResult<Option<StdioConnection>> {
        Ok(None)
    }
}

/// A process's stdio stream on a vsock connection of its own.
pub type StdioConnection = vsock::VsockStream;

/// Keeps the guest's status code (e.g. NOT_FOUND) so containerd sees what the agent meant.
fn agent_err(e: AgentError) -> TaskError {
    let code = e.status().map(|s| s.code()).unwrap_or(Code::INTERNAL);
    TaskError::new(code, e.to_string())
}

macro_rules! forward {
    ($($name:ident($req:ty) -> $resp:ty => $map:expr;)+) => {
        #[async_trait]
        impl GuestAgent for Agent {
            async fn open_stdio(&self, header: &StreamHeader) -> TaskResult<Option<StdioConnection>> {
                Agent::open_stdio(self, header).await.map_err(agent_err)
            }
            $(
                async fn $name(&self, req: $req) -> TaskResult<$resp> {
                    Agent::$name(self, req).await.map($map).map_err(agent_err)
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
    update_interface(pb::UpdateInterfaceRequest) -> () => drop;
    update_routes(pb::UpdateRoutesRequest) -> () => drop;
    add_arp_neighbors(pb::AddARPNeighborsRequest) -> () => drop;
    check(pb::CheckRequest) -> pb::HealthCheckResponse => |r| r;
}
