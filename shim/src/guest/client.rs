//! Client of the guest agent: one ttrpc connection per sandbox, one async method per RPC.
//!
//! Every call gets a timeout, except the ones that block by design until something happens
//! in the guest (WaitProcess, ReadStdout/ReadStderr, WriteStdin on a full pipe, GetOOMEvent).

use std::time::{Duration, Instant};

use protocol::agent::*;
use protocol::agent_ttrpc::AgentServiceClient;
use protocol::stdio_stream::{StreamHeader, ACCEPTED};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::guest::vsock::{DialError, Dialer, VsockStream};

/// Timeout of an ordinary request (creating a container under TCG can take a few seconds).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two attempts to reach an agent that is not listening yet.
const DIAL_RETRY_INTERVAL: Duration = Duration::from_millis(20);
/// Timeout of the Check that confirms a fresh connection.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent {rpc}: {}", describe(source))]
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
    #[error("agent {what}: {source}")]
    Stream {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("agent {what}: refused ({answer:?})")]
    Refused { what: &'static str, answer: String },
}

/// A failed call in the agent's own words: its status message rather than the protobuf dump.
fn describe(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) if !s.message.is_empty() => s.message.clone(),
        ttrpc::Error::RpcStatus(s) => format!("status {:?}", s.code),
        other => other.to_string(),
    }
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
    /// How this connection was made, for the processes' stdio connections; `None` for a
    /// client made from a stream.
    dialer: Option<Dialer>,
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
        let agent = Agent {
            dialer: Some(dialer.clone()),
            ..Agent::from_stream(stream)
        };
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
            dialer: None,
        }
    }

    /// Opens a connection that becomes one stdio fd of a process about to be created
    /// (`protocol::stdio_stream`); `None` when this client has no dialer. The agent has
    /// registered it once this returns.
    pub async fn open_stdio(
        &self,
        header: &StreamHeader,
    ) -> Result<Option<VsockStream>, AgentError> {
        let Some(dialer) = &self.dialer else {
            return Ok(None);
        };
        let rpc = "stdio connection";
        let open = async {
            let mut s = dialer.dial(protocol::STDIO_PORT).await?;
            let io = |source| AgentError::Stream { what: rpc, source };
            s.write_all(&header.encode()).await.map_err(io)?;
            let mut answer = [0u8; ACCEPTED.len()];
            s.read_exact(&mut answer).await.map_err(io)?;
            if answer != ACCEPTED {
                return Err(AgentError::Refused {
                    what: rpc,
                    answer: String::from_utf8_lossy(&answer).into_owned(),
                });
            }
            Ok(s)
        };
        match tokio::time::timeout(self.timeout, open).await {
            Ok(r) => r.map(Some),
            Err(_) => Err(AgentError::Timeout {
                rpc,
                timeout: self.timeout,
            }),
        }
    }

    /// A handle on the same connection whose bounded calls use `timeout`.
    pub fn with_timeout(&self, timeout: Duration) -> Agent {
        Agent {
            client: self.client.clone(),
            timeout,
            dialer: self.dialer.clone(),
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
                    let call = async {
                        self.client.$name(ctx(timeout), &req).await
                    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use protocol::agent_ttrpc::{create_agent_service, AgentService};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{UnixListener, UnixStream};
    use ttrpc::r#async::TtrpcContext;

    struct Fake;

    #[async_trait::async_trait]
    impl AgentService for Fake {
        async fn check(
            &self,
            _ctx: &TtrpcContext,
            _req: CheckRequest,
        ) -> ttrpc::Result<HealthCheckResponse> {
            Ok(HealthCheckResponse::new())
        }
        async fn get_guest_details(
            &self,
            _ctx: &TtrpcContext,
            _req: GuestDetailsRequest,
        ) -> ttrpc::Result<GuestDetailsResponse> {
            // Slower than the client's timeout in the test.
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(GuestDetailsResponse::new())
        }
        async fn wait_process(
            &self,
            _ctx: &TtrpcContext,
            _req: WaitProcessRequest,
        ) -> ttrpc::Result<WaitProcessResponse> {
            // Longer than the client's timeout: WaitProcess must not be cut short.
            tokio::time::sleep(Duration::from_millis(400)).await;
            let mut r = WaitProcessResponse::new();
            r.status = 7;
            Ok(r)
        }
    }

    /// A ttrpc server with the fake agent on a unix socket.
    async fn serve_ttrpc(dir: &Path) -> (ttrpc::r#async::Server, PathBuf) {
        let path = dir.join("ttrpc.sock");
        let mut server = ttrpc::r#async::Server::new()
            .bind(&format!("unix://{}", path.display()))
            .expect("bind")
            .register_service(create_agent_service(Arc::new(Fake)));
        server.start().await.expect("start");
        (server, path)
    }

    /// A fake hybrid-vsock endpoint in front of the ttrpc socket.
    fn serve_hybrid(listener: UnixListener, ttrpc: PathBuf) {
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let ttrpc = ttrpc.clone();
                tokio::spawn(async move {
                    let mut r = BufReader::new(s);
                    let mut line = String::new();
                    if r.read_line(&mut line).await.is_err() {
                        return;
                    }
                    let mut s = r.into_inner();
                    if s.write_all(b"OK 1\n").await.is_err() {
                        return;
                    }
                    if let Ok(mut t) = UnixStream::connect(&ttrpc).await {
                        let _ = tokio::io::copy_bidirectional(&mut s, &mut t).await;
                    }
                });
            }
        });
    }

    #[tokio::test]
    async fn timeouts_apply_to_bounded_calls_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_server, path) = serve_ttrpc(dir.path()).await;
        let stream = UnixStream::connect(&path).await.expect("connect");
        let agent =
            Agent::from_stream(VsockStream::Unix(stream)).with_timeout(Duration::from_millis(200));
        agent.check(CheckRequest::new()).await.expect("check");

        let err = agent
            .get_guest_details(GuestDetailsRequest::new())
            .await
            .expect_err("times out");
        assert!(
            matches!(
                err,
                AgentError::Timeout {
                    rpc: "GetGuestDetails",
                    ..
                }
            ),
            "{err}"
        );

        let r = agent
            .wait_process(WaitProcessRequest::new())
            .await
            .expect("WaitProcess has no timeout");
        assert_eq!(r.status, 7);

        // An RPC the agent does not implement: its status comes through, naming the RPC.
        let err = agent
            .create_container(CreateContainerRequest::new())
            .await
            .expect_err("not implemented");
        assert_eq!(
            err.status().map(|s| s.code()),
            Some(ttrpc::Code::NOT_FOUND),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("agent CreateContainer: "),
            "{err}"
        );
    }

    #[tokio::test]
    async fn connect_retries_until_the_guest_listens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_server, ttrpc_path) = serve_ttrpc(dir.path()).await;
        let uds = dir.path().join("vsock.sock");
        let dialer = Dialer::Hybrid {
            uds_path: uds.clone(),
        };
        // The guest starts listening a little later than the first dial.
        let late = uds.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            serve_hybrid(UnixListener::bind(&late).expect("bind"), ttrpc_path);
        });
        let agent = Agent::connect(&dialer, Duration::from_secs(5))
            .await
            .expect("connects once the guest listens");
        agent.check(CheckRequest::new()).await.expect("check");
    }

    #[tokio::test]
    async fn connect_gives_up_at_the_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dialer = Dialer::Hybrid {
            uds_path: dir.path().join("never.sock"),
        };
        let started = Instant::now();
        let err = Agent::connect(&dialer, Duration::from_millis(300))
            .await
            .expect_err("nobody listens");
        assert!(started.elapsed() < Duration::from_secs(2));
        let msg = err.to_string();
        assert!(
            msg.contains("not reachable within 300ms") && msg.contains("never.sock"),
            "{msg}"
        );
    }
}
