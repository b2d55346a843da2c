//! The ttrpc AgentService: validates each request and delegates.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::Signal;
use protocol::agent::*;
use protocol::agent_ttrpc::AgentService;
use tracing::{debug, info, warn};
use ttrpc::r#async::TtrpcContext;

use crate::error::{internal, AgentError};
use crate::guest::netlink::Netlink;
use crate::guest::{init, requests};
use crate::runtime::cgroup;
use crate::runtime::sandbox::Sandbox;
use crate::validate;

/// Time DestroySandbox's reply gets to reach the host before the guest powers off. ttrpc
/// offers no "reply flushed" event to wait on.
const POWER_OFF_GRACE: Duration = Duration::from_millis(300);

pub struct Agent {
    pub sandbox: Arc<Sandbox>,
    /// CLOCK_BOOTTIME (ms) when the ttrpc listener was ready.
    pub listen_uptime_ms: AtomicU64,
    /// Whether this agent is the guest's PID 1 (powers off on DestroySandbox).
    pub pid1: bool,
}

type R<T> = ttrpc::Result<T>;

fn signal_of(n: u32) -> Result<Signal, AgentError> {
    Signal::try_from(n as i32)
        .map_err(|_| AgentError::InvalidArgument(format!("invalid signal number {n}")))
}

fn ids(container_id: &str, exec_id: &str) -> Result<(), AgentError> {
    validate::container_id(container_id)?;
    validate::exec_id(exec_id)?;
    Ok(())
}

fn logged<T>(rpc: &str, r: Result<T, AgentError>) -> R<T> {
    if let Err(e) = &r {
        warn!("{rpc} failed: {e}");
    }
    r.map_err(Into::into)
}

impl Agent {
    pub fn new(sandbox: Arc<Sandbox>, pid1: bool) -> Self {
        Agent {
            sandbox,
            listen_uptime_ms: AtomicU64::new(0),
            pid1,
        }
    }
}

#[async_trait]
impl AgentService for Agent {
    async fn create_sandbox(&self, _: &TtrpcContext, req: CreateSandboxRequest) -> R<Empty> {
        let r = async {
            if req.host_time_sec > 0 {
                if let Err(e) = init::set_clock(req.host_time_sec, req.host_time_nsec) {
                    warn!("setting the guest clock: {e}");
                }
            }
            if !req.hostname.is_empty() {
                nix::unistd::sethostname(&req.hostname).map_err(|e| {
                    AgentError::InvalidArgument(format!("hostname {:?}: {e}", req.hostname))
                })?;
            }
            let sandbox = self.sandbox.clone();
            tokio::task::spawn_blocking(move || sandbox.create(&req.sandbox_id, &req.storages))
                .await
                .map_err(internal)??;
            Ok(Empty::new())
        }
        .await;
        logged("CreateSandbox", r)
    }

    async fn destroy_sandbox(&self, _: &TtrpcContext, _: DestroySandboxRequest) -> R<Empty> {
        info!("destroying the sandbox");
        let sandbox = self.sandbox.clone();
        let _ = detached(async move {
            sandbox.destroy().await;
            Ok(())
        })
        .await;
        if self.pid1 {
            tokio::spawn(async {
                tokio::time::sleep(POWER_OFF_GRACE).await;
                info!("powering off");
                let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
            });
        }
        Ok(Empty::new())
    }

    async fn check(&self, _: &TtrpcContext, _: CheckRequest) -> R<HealthCheckResponse> {
        Ok(HealthCheckResponse {
            status: health_check_response::ServingStatus::SERVING.into(),
            ..Default::default()
        })
    }

    async fn get_guest_details(
        &self,
        _: &TtrpcContext,
        _: GuestDetailsRequest,
    ) -> R<GuestDetailsResponse> {
        Ok(requests::details(
            self.listen_uptime_ms.load(Ordering::Relaxed),
        ))
    }

    async fn set_guest_date_time(
        &self,
        _: &TtrpcContext,
        req: SetGuestDateTimeRequest,
    ) -> R<Empty> {
        let r = init::set_clock(req.sec, req.nsec)
            .map(|()| Empty::new())
            .map_err(|e| {
                AgentError::InvalidArgument(format!(
                    "setting the clock to {}.{}: {e}",
                    req.sec, req.nsec
                ))
            });
        logged("SetGuestDateTime", r)
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> R<CreateContainerResponse> {
        let sandbox = self.sandbox.clone();
        let r = detached(async move {
            sandbox
                .create_container(&req.container_id, &req.oci_spec_json, &req.storages)
                .await
        })
        .await
        .map(|c| CreateContainerResponse {
            pid: c.init.pid as u32,
            ..Default::default()
        });
        logged("CreateContainer", r)
    }

    async fn start_container(&self, _: &TtrpcContext, req: StartContainerRequest) -> R<Empty> {
        let sandbox = self.sandbox.clone();
        let r = detached(async move {
            let c = sandbox.get(&req.container_id)?;
            c.start().await?;
            Ok(Empty::new())
        })
        .await;
        logged("StartContainer", r)
    }

    async fn remove_container(&self, _: &TtrpcContext, req: RemoveContainerRequest) -> R<Empty> {
        let timeout = (req.timeout_secs > 0).then(|| Duration::from_secs(req.timeout_secs.into()));
        let sandbox = self.sandbox.clone();
        let r = detached(async move { sandbox.remove_container(&req.container_id, timeout).await })
            .await
            .map(|()| Empty::new());
        logged("RemoveContainer", r)
    }

    async fn pause_container(&self, _: &TtrpcContext, req: PauseContainerRequest) -> R<Empty> {
        let r = async {
            self.sandbox.get(&req.container_id)?.pause(true).await?;
            Ok(Empty::new())
        }
        .await;
        logged("PauseContainer", r)
    }

    async fn resume_container(&self, _: &TtrpcContext, req: ResumeContainerRequest) -> R<Empty> {
        let r = async {
            self.sandbox.get(&req.container_id)?.pause(false).await?;
            Ok(Empty::new())
        }
        .await;
        logged("ResumeContainer", r)
    }

    async fn update_container(&self, _: &TtrpcContext, req: UpdateContainerRequest) -> R<Empty> {
        let r = (|| {
            let c = self.sandbox.get(&req.container_id)?;
            let res: oci_spec::runtime::LinuxResources =
                serde_json::from_slice(&req.resources_json).map_err(|e| {
                    AgentError::InvalidArgument(format!("invalid resources JSON: {e}"))
                })?;
            c.update(&res)?;
            Ok(Empty::new())
        })();
        logged("UpdateContainer", r)
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> R<StatsContainerResponse> {
        let r = self
            .sandbox
            .get(&req.container_id)
            .map(|c| cgroup::stats(&c.cgroup));
        logged("StatsContainer", r)
    }

    async fn list_processes(
        &self,
        _: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> R<ListProcessesResponse> {
        let r = self.sandbox.get(&req.container_id).map(|c| {
            let execs: Vec<_> = c
                .execs
                .lock()
                .map(|m| m.values().map(|p| (p.pid, p.exec_id.clone())).collect())
                .unwrap_or_default();
            let processes = cgroup::pids(&c.cgroup)
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid: pid as u32,
                    exec_id: execs
                        .iter()
                        .find(|(p, _)| *p == pid)
                        .map(|(_, e)| e.clone())
                        .unwrap_or_default(),
                    ..Default::default()
                })
                .collect();
            ListProcessesResponse {
                processes,
                ..Default::default()
            }
        });
        logged("ListProcesses", r)
    }

    async fn get_oom_event(&self, _: &TtrpcContext, _: GetOOMEventRequest) -> R<OOMEvent> {
        let id = self.sandbox.next_oom().await;
        info!(container = %id, "OOM kill");
        Ok(OOMEvent {
            container_id: id,
            ..Default::default()
        })
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> R<ExecProcessResponse> {
        let sandbox = self.sandbox.clone();
        let r = detached(async move {
            // Taken first: an exec refused below drops them (the host sees EOF).
            let conns = sandbox
                .stdio_connections
                .take(&req.container_id, &req.exec_id);
            validate::container_id(&req.container_id)?;
            validate::id("exec id", &req.exec_id)?;
            if req.exec_id == req.container_id {
                return Err(AgentError::InvalidArgument(format!(
                    "exec id {:?} is the container's own id",
                    req.exec_id
                )));
            }
            let c = sandbox.get(&req.container_id)?;
            let process: oci_spec::runtime::Process = serde_json::from_slice(&req.process_json)
                .map_err(|e| AgentError::InvalidArgument(format!("invalid process JSON: {e}")))?;
            let p = c.exec(&req.exec_id, process, conns).await?;
            info!(container = %c.id, exec = %req.exec_id, pid = p.pid, "exec started");
            Ok(ExecProcessResponse {
                pid: p.pid as u32,
                ..Default::default()
            })
        })
        .await;
        logged("ExecProcess", r)
    }

    async fn signal_process(&self, _: &TtrpcContext, req: SignalProcessRequest) -> R<Empty> {
        let r = async {
            ids(&req.container_id, &req.exec_id)?;
            let sig = signal_of(req.signal)?;
            let c = self.sandbox.get(&req.container_id)?;
            debug!(container = %c.id, exec = %req.exec_id, ?sig, all = req.all, "signal");
            if req.all {
                c.signal_all(sig);
            } else {
                c.signal(&req.exec_id, sig).await?;
            }
            Ok(Empty::new())
        }
        .await;
        logged("SignalProcess", r)
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> R<WaitProcessResponse> {
        let r = async {
            ids(&req.container_id, &req.exec_id)?;
            let c = self.sandbox.get(&req.container_id)?;
            let status = c.process(&req.exec_id)?.wait().await;
            // An OOM kill is reported before the exit it caused is answered.
            self.sandbox.record_oom(&c);
            c.forget_if_finished(&req.exec_id);
            Ok(WaitProcessResponse {
                status,
                ..Default::default()
            })
        }
        .await;
        logged("WaitProcess", r)
    }

    async fn read_stdout(&self, _: &TtrpcContext, req: ReadStreamRequest) -> R<ReadStreamResponse> {
        logged("ReadStdout", self.read(req, false).await)
    }

    async fn read_stderr(&self, _: &TtrpcContext, req: ReadStreamRequest) -> R<ReadStreamResponse> {
        logged("ReadStderr", self.read(req, true).await)
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: WriteStreamRequest,
    ) -> R<WriteStreamResponse> {
        let r =
            async {
                ids(&req.container_id, &req.exec_id)?;
                let p = self.sandbox.get(&req.container_id)?.process(&req.exec_id)?;
                let n =
                    p.stdio.stdin.write(&req.data).await.map_err(|e| {
                        AgentError::FailedPrecondition(format!("writing stdin: {e}"))
                    })?;
                Ok(WriteStreamResponse {
                    len: n as u32,
                    ..Default::default()
                })
            }
            .await;
        logged("WriteStdin", r)
    }

    async fn close_stdin(&self, _: &TtrpcContext, req: CloseStdinRequest) -> R<Empty> {
        let r = async {
            ids(&req.container_id, &req.exec_id)?;
            let p = self.sandbox.get(&req.container_id)?.process(&req.exec_id)?;
            p.stdio.stdin.close().await;
            Ok(Empty::new())
        }
        .await;
        logged("CloseStdin", r)
    }

    async fn tty_win_resize(&self, _: &TtrpcContext, req: TtyWinResizeRequest) -> R<Empty> {
        let r = (|| {
            ids(&req.container_id, &req.exec_id)?;
            let p = self.sandbox.get(&req.container_id)?.process(&req.exec_id)?;
            let clamp = |v: u32| v.min(u16::MAX as u32) as u16;
            p.stdio
                .resize(clamp(req.rows), clamp(req.columns))
                .map_err(|e| AgentError::FailedPrecondition(format!("resizing the tty: {e}")))?;
            Ok(Empty::new())
        })();
        logged("TtyWinResize", r)
    }

    async fn update_interface(
        &self,
        _: &TtrpcContext,
        req: UpdateInterfaceRequest,
    ) -> R<Interface> {
        let r = match req.interface.into_option() {
            None => Err(AgentError::InvalidArgument("no interface given".into())),
            Some(iface) => blocking_net(move |nl| nl.update_interface(&iface)).await,
        };
        logged("UpdateInterface", r)
    }

    async fn update_routes(&self, _: &TtrpcContext, req: UpdateRoutesRequest) -> R<Routes> {
        let routes = req.routes.into_option().unwrap_or_default().routes;
        let r = blocking_net(move |nl| nl.update_routes(&routes))
            .await
            .map(|routes| Routes {
                routes,
                ..Default::default()
            });
        logged("UpdateRoutes", r)
    }

    async fn add_arp_neighbors(&self, _: &TtrpcContext, req: AddARPNeighborsRequest) -> R<Empty> {
        let r = blocking_net(move |nl| {
            for n in &req.neighbors {
                nl.add_neighbor(n)?;
            }
            Ok(())
        })
        .await
        .map(|()| Empty::new());
        logged("AddARPNeighbors", r)
    }

    async fn online_cpu_mem(&self, _: &TtrpcContext, req: OnlineCPUMemRequest) -> R<Empty> {
        let r = tokio::task::spawn_blocking(move || {
            requests::online_cpu_mem(req.nb_cpus, req.cpu_only)
        })
        .await
        .map_err(internal)
        .and_then(|r| r)
        .map(|()| Empty::new());
        logged("OnlineCPUMem", r)
    }

    async fn mem_hotplug_by_probe(
        &self,
        _: &TtrpcContext,
        req: MemHotplugByProbeRequest,
    ) -> R<Empty> {
        let r = requests::mem_probe(&req.mem_hotplug_probe_addr).map(|()| Empty::new());
        logged("MemHotplugByProbe", r)
    }

    async fn copy_file(&self, _: &TtrpcContext, req: CopyFileRequest) -> R<Empty> {
        let r = tokio::task::spawn_blocking(move || requests::copy_file(&req))
            .await
            .map_err(internal)
            .and_then(|r| r)
            .map(|()| Empty::new());
        logged("CopyFile", r)
    }
}

/// Runs a state-changing request in its own task: if the host drops the connection (ttrpc then
/// cancels the handler), the work still completes and the sandbox state stays consistent, so a
/// later RemoveContainer can clean up.
async fn detached<T: Send + 'static>(
    f: impl std::future::Future<Output = Result<T, AgentError>> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::spawn(f).await.map_err(internal)?
}

/// Runs a netlink job on the blocking pool (netlink calls are synchronous).
async fn blocking_net<T: Send + 'static>(
    f: impl FnOnce(&mut Netlink) -> Result<T, String> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(move || {
        let mut nl = Netlink::open()
            .map_err(|e| AgentError::Internal(format!("opening a netlink socket: {e}")))?;
        f(&mut nl).map_err(AgentError::InvalidArgument)
    })
    .await
    .map_err(internal)?
}

impl Agent {
    async fn read(
        &self,
        req: ReadStreamRequest,
        stderr: bool,
    ) -> Result<ReadStreamResponse, AgentError> {
        ids(&req.container_id, &req.exec_id)?;
        let p = self.sandbox.get(&req.container_id)?.process(&req.exec_id)?;
        let stream = if stderr {
            &p.stdio.stderr
        } else {
            &p.stdio.stdout
        };
        let data = stream
            .read(req.len as usize)
            .await
            .map_err(|e| internal(format!("reading the process output: {e}")))?;
        Ok(ReadStreamResponse {
            data,
            ..Default::default()
        })
    }
}
