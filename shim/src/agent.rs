//! Client of the guest agent: one ttrpc connection per sandbox, one async method per RPC.
//!
//! Every call gets a timeout, except the ones that block by design until something happens
//! in the guest (WaitProcess, ReadStdout/ReadStderr, WriteStdin on a full pipe, GetOOMEvent).

use std::time::{Duration, Instant};

use protocol::agent::*;
use protocol::agent_ttrpc::AgentServiceClient;

use crate::vsock::{DialError, Dialer, VsockStream};

/// Timeout of an ordinary request (creating a container under TCG can take a few seconds).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two attempts to reach an agent that is not listening yet.
const DIAL_RETRY_INTERVAL: Duration = Duration::from_millis(20);
/// Timeout of the Check that confirms a fresh connection.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent {rpc}: {source}")]
    Rpc {
        rpc: &'static str,
        source: ttrpc::Error,
    },
    #[error("agent {rpc}: no answer within {timeout:?}")]
    Timeout {
        rpc: &'static str,
        timeout: Duration,
    },
    #[error("agent not reachable within {timeout:?}: {last}")]
    Dial { timeout: Duration, last: String },
    #[error("agent connection: {0}")]
    Connect(#[from] DialError),
}

impl AgentError {
    /// The gRPC status the agent returned, if the call reached it.
    pub fn status(&self) -> Option<&ttrpc::proto::Status> {
        match self {
            AgentError::Rpc {
                source: ttrpc::Error::RpcStatus(s),
                ..
            } => Some(s),
            _ => None,
        }
    }
}

/// Cheap to clone: all clones share one connection.
#[derive(Clone)]
pub struct Agent {
    client: AgentServiceClient,
    timeout: Duration,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Dials the agent's ttrpc port, retrying until it answers a Check or `timeout` passes.
    pub async fn connect(dialer: &Dialer, timeout: Duration) -> Result<Agent, AgentError> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match Agent::try_connect(dialer, deadline).await {
                Ok(agent) => return Ok(agent),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() + DIAL_RETRY_INTERVAL >= deadline {
                return Err(AgentError::Dial { timeout, last });
            }
            // No event tells us the guest started listening: poll with a short interval.
            tokio::time::sleep(DIAL_RETRY_INTERVAL).await;
        }
    }

    async fn try_connect(dialer: &Dialer, deadline: Instant) -> Result<Agent, AgentError> {
        let stream = dialer.dial(protocol::AGENT_TTRPC_PORT).await?;
        let agent = Agent::from_stream(stream);
        let left = deadline.saturating_duration_since(Instant::now());
        let check = agent.with_timeout(left.min(CHECK_TIMEOUT).max(Duration::from_millis(100)));
        check.check(CheckRequest::new()).await?;
        Ok(agent)
    }

    /// Wraps an already connected stream.
    pub fn from_stream(stream: VsockStream) -> Agent {
        let client = ttrpc::r#async::Client::new(stream.into_ttrpc_socket());
        Agent {
            client: AgentServiceClient::new(client),
            timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// A handle on the same connection whose bounded calls use `timeout`.
    pub fn with_timeout(&self, timeout: Duration) -> Agent {
        Agent {
            client: self.client.clone(),
            timeout,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

fn ctx(timeout: Option<Duration>) -> ttrpc::context::Context {
    match timeout {
        Some(t) => ttrpc::context::with_duration(t),
        None => ttrpc::context::Context::default(),
    }
}

/// Maps ttrpc's own timeout (an `Others` error) to a clear one.
fn map_err(rpc: &'static str, timeout: Option<Duration>, source: ttrpc::Error) -> AgentError {
    match (&source, timeout) {
        (ttrpc::Error::Others(msg), Some(timeout)) if msg.contains("timeout") => {
            AgentError::Timeout { rpc, timeout }
        }
        _ => AgentError::Rpc { rpc, source },
    }
}

macro_rules! rpc {
    ($($(#[$m:meta])* $name:ident($req:ty) -> $resp:ty, $rpc:literal, $bounded:expr;)+) => {
        impl Agent {
            $(
                $(#[$m])*
                pub async fn $name(&self, req: $req) -> Result<$resp, AgentError> {
                    let timeout = if $bounded { Some(self.timeout) } else { None };
                    let call = self.client.$name(ctx(timeout), &req);
                    match timeout {
                        // A safety net over ttrpc's own timer, in case the connection stalls.
                        Some(t) => match tokio::time::timeout(t + Duration::from_secs(1), call).await {
                            Ok(r) => r.map_err(|e| map_err($rpc, timeout, e)),
                            Err(_) => Err(AgentError::Timeout { rpc: $rpc, timeout: t }),
                        },
                        None => call.await.map_err(|e| map_err($rpc, None, e)),
                    }
                }
            )+
        }
    };
}

rpc! {
    create_sandbox(CreateSandboxRequest) -> Empty, "CreateSandbox", true;
    destroy_sandbox(DestroySandboxRequest) -> Empty, "DestroySandbox", true;
    check(CheckRequest) -> HealthCheckResponse, "Check", true;
    get_guest_details(GuestDetailsRequest) -> GuestDetailsResponse, "GetGuestDetails", true;
    set_guest_date_time(SetGuestDateTimeRequest) -> Empty, "SetGuestDateTime", true;
    create_container(CreateContainerRequest) -> CreateContainerResponse, "CreateContainer", true;
    start_container(StartContainerRequest) -> Empty, "StartContainer", true;
    remove_container(RemoveContainerRequest) -> Empty, "RemoveContainer", true;
    pause_container(PauseContainerRequest) -> Empty, "PauseContainer", true;
    resume_container(ResumeContainerRequest) -> Empty, "ResumeContainer", true;
    update_container(UpdateContainerRequest) -> Empty, "UpdateContainer", true;
    stats_container(StatsContainerRequest) -> StatsContainerResponse, "StatsContainer", true;
    list_processes(ListProcessesRequest) -> ListProcessesResponse, "ListProcesses", true;
    /// Blocks until a container of the sandbox hits OOM: no timeout.
    get_oom_event(GetOOMEventRequest) -> OOMEvent, "GetOOMEvent", false;
    exec_process(ExecProcessRequest) -> ExecProcessResponse, "ExecProcess", true;
    signal_process(SignalProcessRequest) -> Empty, "SignalProcess", true;
    /// Blocks until the process exits: no timeout.
    wait_process(WaitProcessRequest) -> WaitProcessResponse, "WaitProcess", false;
    /// Blocks until output is available: no timeout.
    read_stdout(ReadStreamRequest) -> ReadStreamResponse, "ReadStdout", false;
    /// Blocks until output is available: no timeout.
    read_stderr(ReadStreamRequest) -> ReadStreamResponse, "ReadStderr", false;
    /// May block while the process does not read its stdin: no timeout.
    write_stdin(WriteStreamRequest) -> WriteStreamResponse, "WriteStdin", false;
    close_stdin(CloseStdinRequest) -> Empty, "CloseStdin", true;
    tty_win_resize(TtyWinResizeRequest) -> Empty, "TtyWinResize", true;
    update_interface(UpdateInterfaceRequest) -> Interface, "UpdateInterface", true;
    update_routes(UpdateRoutesRequest) -> Routes, "UpdateRoutes", true;
    add_arp_neighbors(AddARPNeighborsRequest) -> Empty, "AddARPNeighbors", true;
    online_cpu_mem(OnlineCPUMemRequest) -> Empty, "OnlineCPUMem", true;
    mem_hotplug_by_probe(MemHotplugByProbeRequest) -> Empty, "MemHotplugByProbe", true;
    copy_file(CopyFileRequest) -> Empty, "CopyFile", true;
}
