//! The Task service: every RPC delegates to a context-free method of `TaskCore`, which holds
//! the sandbox and its containers and reports through an event channel. Tests drive
//! `TaskCore` with fakes of the VM layer and read the channel instead of containerd.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{CodedInputStream, MessageField};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use protocol::agent as pb;
use tokio::sync::watch;

use crate::backend::{Backend, BootRequest, GuestAgent};
use crate::container::Container;
use crate::error::{TaskError, TaskResult};
use crate::events::{self, EventSender, TaskEvent};
use crate::metrics;
use crate::process::{self, Exit, ExitHandle, Phase, Process, VM_GONE_EXIT_STATUS};
use crate::rootfs::{MountPlan, RootfsMount};
use crate::sandbox::Sandbox;
use crate::spec;
use crate::stdio::{self, Copiers, StdioPaths};

/// Exit status of a process that was removed before it exited (as if SIGKILLed).
const KILLED_EXIT_STATUS: u32 = 128 + libc::SIGKILL as u32;
/// How long an exec's exit waits for output still held open by its background children.
const EXEC_IO_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// The same for a container's init. Its pid namespace dies with it, so EOF comes at once; the
/// bound only keeps a misbehaving guest from holding TaskExit back forever.
const INIT_IO_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long Delete waits for stdio copiers after RemoveContainer closed the streams.
const DELETE_IO_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Type of containerd's runtime options for non-runc runtimes (`--runtime-config-path`).
const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

#[derive(Default)]
struct State {
    sandbox: Option<Sandbox>,
    containers: HashMap<String, Container>,
}

/// The task layer, independent of ttrpc.
pub struct TaskCore {
    backend: Backend,
    events: EventSender,
    exit: Arc<ExitSignal>,
    /// Serialises Create, Delete and Shutdown: they boot and tear down the sandbox.
    lifecycle: tokio::sync::Mutex<()>,
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn container<'a>(st: &'a State, id: &str) -> TaskResult<&'a Container> {
    st.containers
        .get(id)
        .ok_or_else(|| TaskError::not_found(format!("container {id:?} not found")))
}

fn container_mut<'a>(st: &'a mut State, id: &str) -> TaskResult<&'a mut Container> {
    st.containers
        .get_mut(id)
        .ok_or_else(|| TaskError::not_found(format!("container {id:?} not found")))
}

/// Container ids become host and guest path components.
fn validate_id(id: &str) -> TaskResult<()> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 256
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(TaskError::invalid(format!(
            "invalid container id {id:?}: use letters, digits, '-', '_' and '.'"
        )))
    }
}

/// `config_path` of containerd's runtimeoptions.v1.Options; any other options are ignored.
pub fn runtime_config_path(options: Option<&Any>) -> Option<PathBuf> {
    let any = options?;
    if !any.type_url.ends_with(RUNTIME_OPTIONS_TYPE) {
        return None;
    }
    let mut input = CodedInputStream::from_bytes(&any.value);
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        let (field, wire) = (tag >> 3, tag & 7);
        if field == 2 && wire == 2 {
            return input
                .read_string()
                .ok()
                .filter(|s| !s.is_empty())
                .map(PathBuf::from);
        }
        let wire = containerd_shim::protos::protobuf::rt::WireType::new(wire)?;
        input.skip_field(wire).ok()?;
    }
    None
}

fn exit_fields(
    exit: Option<Exit>,
) -> (
    u32,
    MessageField<containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp>,
) {
    match exit {
        Some(e) => (e.status, MessageField::some(events::timestamp(e.at))),
        None => (0, MessageField::none()),
    }
}

impl TaskCore {
    pub fn new(backend: Backend, events: EventSender, exit: Arc<ExitSignal>) -> Self {
        Self {
            backend,
            events,
            exit,
            lifecycle: tokio::sync::Mutex::new(()),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn send(&self, ev: TaskEvent) {
        events::send(&self.events, ev);
    }

    fn agent(&self) -> TaskResult<Arc<dyn GuestAgent>> {
        self.state()
            .sandbox
            .as_ref()
            .map(|s| s.agent.clone())
            .ok_or_else(|| TaskError::precondition("the sandbox is not running"))
    }

    /// The sandbox's agent and shared dir, booting the VM first if this is the first Create.
    /// Returns whether this call booted it.
    async fn ensure_sandbox(
        &self,
        req: &CreateTaskRequest,
        bundle: &Path,
        spec: &serde_json::Value,
    ) -> TaskResult<(Arc<dyn GuestAgent>, PathBuf, bool)> {
        let sandbox_id = spec::sandbox_id(spec, &req.id);
        if let Some(sb) = self.state().sandbox.as_ref() {
            if sb.is_dead() {
                return Err(TaskError::precondition(format!(
                    "the VM of sandbox {:?} is gone",
                    sb.id
                )));
            }
            if sb.id != sandbox_id {
                tracing::warn!(
                    "container {} names sandbox {sandbox_id}, this shim runs {}",
                    req.id,
                    sb.id
                );
            }
            return Ok((sb.agent.clone(), sb.shared_dir.clone(), false));
        }
        validate_id(&sandbox_id)?;
        let boot = BootRequest {
            sandbox_id,
            bundle: bundle.to_path_buf(),
            annotations: spec::annotations(spec),
            config_path: runtime_config_path(req.options.as_ref()),
        };
        // A VM needs some hostname; without one in the spec, the sandbox id says which it is.
        let hostname = Some(spec::hostname(spec))
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| boot.sandbox_id.clone());
        let sb = Sandbox::boot(&self.backend, boot, hostname).await?;
        tokio::spawn(watch_vm_death(
            self.state.clone(),
            self.events.clone(),
            sb.exited(),
        ));
        tokio::spawn(forward_oom_events(sb.agent.clone(), self.events.clone()));
        let out = (sb.agent.clone(), sb.shared_dir.clone(), true);
        self.state().sandbox = Some(sb);
        Ok(out)
    }

    /// Shuts the sandbox down if no container is left in it.
    async fn shutdown_sandbox_if_empty(&self) {
        let sb = {
            let mut st = self.state();
            if !st.containers.is_empty() {
                return;
            }
            st.sandbox.take()
        };
        if let Some(sb) = sb {
            let id = sb.id.clone();
            if let Err(e) = sb.shutdown().await {
                tracing::warn!("shutting down sandbox {id}: {e}");
            }
        }
    }

    async fn mount(&self, plan: &MountPlan) -> TaskResult<()> {
        let mounter = self.backend.mounter.clone();
        let plan = plan.clone();
        tokio::task::spawn_blocking(move || mounter.mount(&plan))
            .await
            .map_err(|e| TaskError::internal(format!("mount task: {e}")))?
    }

    async fn unmount(&self, plan: &MountPlan) {
        let mounter = self.backend.mounter.clone();
        let p = plan.clone();
        match tokio::task::spawn_blocking(move || mounter.unmount(&p)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("unmounting container {}: {e}", plan.container_id),
            Err(e) => tracing::warn!("unmount task of {}: {e}", plan.container_id),
        }
    }

    /// Mounts, creates the container in the guest and starts its stdio copiers; on error
    /// undoes what it did.
    async fn create_in_sandbox(
        &self,
        req: &CreateTaskRequest,
        bundle: &Path,
        spec: &serde_json::Value,
        agent: Arc<dyn GuestAgent>,
        shared_dir: &Path,
    ) -> TaskResult<Container> {
        let rootfs = req
            .rootfs
            .iter()
            .map(|m| RootfsMount {
                fstype: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let plan = MountPlan::new(shared_dir, &req.id, rootfs, bundle, spec)?;
        let guest_spec = spec::rewrite_for_guest(spec, &req.id, &plan.guest_sources())?;
        let oci_spec_json = serde_json::to_vec(&guest_spec)
            .map_err(|e| TaskError::internal(format!("encoding the guest spec: {e}")))?;
        self.mount(&plan).await?;

        let created = agent
            .create_container(pb::CreateContainerRequest {
                container_id: req.id.clone(),
                oci_spec_json,
                ..Default::default()
            })
            .await;
        let pid = match created {
            Ok(r) => r.pid,
            Err(e) => {
                self.unmount(&plan).await;
                return Err(e.context(format_args!("creating container {:?}", req.id)));
            }
        };
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let copiers = match stdio::start(agent.clone(), &req.id, "", &paths).await {
            Ok(c) => c,
            Err(e) => {
                let rm = pb::RemoveContainerRequest {
                    container_id: req.id.clone(),
                    ..Default::default()
                };
                if let Err(re) = agent.remove_container(rm).await {
                    tracing::warn!("removing container {} after a stdio error: {re}", req.id);
                }
                self.unmount(&plan).await;
                return Err(e);
            }
        };
        let mut init = Process::new("", paths);
        init.pid = pid;
        *init.copiers.lock().unwrap_or_else(|e| e.into_inner()) = Some(copiers);
        Ok(Container {
            id: req.id.clone(),
            bundle: bundle.to_path_buf(),
            init,
            execs: HashMap::new(),
            mounts: plan,
            paused: false,
        })
    }

    pub async fn create(&self, req: &CreateTaskRequest) -> TaskResult<CreateTaskResponse> {
        validate_id(&req.id)?;
        let _serial = self.lifecycle.lock().await;
        if self.state().containers.contains_key(&req.id) {
            return Err(TaskError::already_exists(format!(
                "container {:?} already exists",
                req.id
            )));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec_path = bundle.join("config.json");
        let bytes = tokio::fs::read(&spec_path)
            .await
            .map_err(|e| TaskError::invalid(format!("reading {}: {e}", spec_path.display())))?;
        let spec = spec::parse(&bytes, &spec_path.display().to_string())?;
        // Refuse a spec the guest cannot run before booting anything.
        spec::rewrite_for_guest(&spec, &req.id, &[])?;

        let (agent, shared_dir, booted) = self.ensure_sandbox(req, &bundle, &spec).await?;
        let c = match self
            .create_in_sandbox(req, &bundle, &spec, agent, &shared_dir)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                if booted {
                    self.shutdown_sandbox_if_empty().await;
                }
                return Err(e);
            }
        };
        let pid = c.init.pid;
        self.state().containers.insert(req.id.clone(), c);
        self.send(TaskEvent::Create(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            checkpoint: req.checkpoint.clone(),
            pid,
            ..Default::default()
        }));
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// Starts the task that records a started process's exit once the guest reports it and
    /// its output is drained, then publishes TaskExit.
    fn spawn_waiter(&self, agent: Arc<dyn GuestAgent>, cid: &str, p: &mut Process) {
        if p.waited {
            return;
        }
        p.waited = true;
        let is_init = p.exec_id.is_empty();
        let req = pb::WaitProcessRequest {
            container_id: cid.to_string(),
            exec_id: p.exec_id.clone(),
            ..Default::default()
        };
        let event_id = if is_init {
            cid.to_string()
        } else {
            p.exec_id.clone()
        };
        let (pid, handle, copiers, events) = (
            p.pid,
            p.exit_handle(),
            p.copiers.clone(),
            self.events.clone(),
        );
        let cid = cid.to_string();
        tokio::spawn(async move {
            let status = match agent.wait_process(req).await {
                Ok(r) => u32::try_from(r.status).unwrap_or(VM_GONE_EXIT_STATUS),
                Err(e) => {
                    tracing::warn!("waiting for {cid}/{event_id}: {e}");
                    VM_GONE_EXIT_STATUS
                }
            };
            let taken = copiers.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(c) = taken {
                let limit = if is_init {
                    INIT_IO_DRAIN_TIMEOUT
                } else {
                    EXEC_IO_DRAIN_TIMEOUT
                };
                drain(c, limit).await;
            }
            publish_exit(&events, &handle, status, &cid, &event_id, pid);
        });
    }

    pub async fn start(&self, req: &StartRequest) -> TaskResult<StartResponse> {
        let agent = self.agent()?;
        let (is_init, exec_spec, paths) = {
            let st = self.state();
            let c = container(&st, &req.id)?;
            let p = c.process(&req.exec_id)?;
            if p.phase != Phase::Created || p.exit().is_some() {
                return Err(TaskError::precondition(format!(
                    "process {:?} of container {:?} was already started",
                    req.exec_id, req.id
                )));
            }
            (
                c.is_init(&req.exec_id),
                p.exec_spec.clone(),
                p.stdio.clone(),
            )
        };
        if is_init {
            agent
                .start_container(pb::StartContainerRequest {
                    container_id: req.id.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.context(format_args!("starting container {:?}", req.id)))?;
            let pid = {
                let mut st = self.state();
                let c = container_mut(&mut st, &req.id)?;
                c.init.phase = Phase::Running;
                let cid = c.id.clone();
                self.spawn_waiter(agent, &cid, &mut c.init);
                c.init.pid
            };
            self.send(TaskEvent::Start(TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            }));
            return Ok(StartResponse {
                pid,
                ..Default::default()
            });
        }

        let process_json = exec_spec.unwrap_or_default();
        let resp = agent
            .exec_process(pb::ExecProcessRequest {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                process_json,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                e.context(format_args!(
                    "starting exec {:?} in {:?}",
                    req.exec_id, req.id
                ))
            })?;
        let copiers = match stdio::start(agent.clone(), &req.id, &req.exec_id, &paths).await {
            Ok(c) => c,
            Err(e) => {
                let kill = pb::SignalProcessRequest {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    signal: libc::SIGKILL as u32,
                    ..Default::default()
                };
                let _ = agent.signal_process(kill).await;
                return Err(e);
            }
        };
        {
            let mut st = self.state();
            let c = container_mut(&mut st, &req.id)?;
            let p = c.process_mut(&req.exec_id)?;
            p.pid = resp.pid;
            p.phase = Phase::Running;
            p.exec_spec = None;
            *p.copiers.lock().unwrap_or_else(|e| e.into_inner()) = Some(copiers);
            self.spawn_waiter(agent, &req.id, p);
        }
        self.send(TaskEvent::ExecStarted(TaskExecStarted {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            pid: resp.pid,
            ..Default::default()
        }));
        Ok(StartResponse {
            pid: resp.pid,
            ..Default::default()
        })
    }

    pub async fn state_of(&self, req: &StateRequest) -> TaskResult<StateResponse> {
        let st = self.state();
        let c = container(&st, &req.id)?;
        let p = c.process(&req.exec_id)?;
        let (exit_status, exited_at) = exit_fields(p.exit());
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: p.pid,
            status: p.status(c.paused).into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status,
            exited_at,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    pub async fn wait(&self, req: &WaitRequest) -> TaskResult<WaitResponse> {
        let rx = {
            let st = self.state();
            container(&st, &req.id)?.process(&req.exec_id)?.subscribe()
        };
        let exit = process::wait_exit(rx).await;
        let (exit_status, exited_at) = exit_fields(exit);
        Ok(WaitResponse {
            exit_status,
            exited_at,
            ..Default::default()
        })
    }

    pub async fn kill(&self, req: &KillRequest) -> TaskResult<()> {
        let agent = self.agent()?;
        let exec_id = {
            let st = self.state();
            let c = container(&st, &req.id)?;
            let p = c.process(&req.exec_id)?;
            if p.exit().is_some() {
                return Err(TaskError::not_found(format!(
                    "process {:?} of container {:?} already finished",
                    req.exec_id, req.id
                )));
            }
            if !c.is_init(&req.exec_id) && p.phase == Phase::Created {
                return Err(TaskError::precondition(format!(
                    "exec {:?} of container {:?} was not started",
                    req.exec_id, req.id
                )));
            }
            c.agent_exec_id(&req.exec_id)
        };
        agent
            .signal_process(pb::SignalProcessRequest {
                container_id: req.id.clone(),
                exec_id,
                signal: req.signal,
                all: req.all,
                ..Default::default()
            })
            .await
            .map_err(|e| e.context(format_args!("signalling {:?}", req.id)))?;
        // A container killed before Start has no waiter yet: its exit must still be seen.
        let mut st = self.state();
        if let Ok(c) = container_mut(&mut st, &req.id) {
            if c.is_init(&req.exec_id) && !c.init.waited {
                let cid = c.id.clone();
                self.spawn_waiter(agent, &cid, &mut c.init);
            }
        }
        Ok(())
    }

    pub async fn delete(&self, req: &DeleteRequest) -> TaskResult<DeleteResponse> {
        let _serial = self.lifecycle.lock().await;
        let is_init = {
            let st = self.state();
            container(&st, &req.id)?.is_init(&req.exec_id)
        };
        if !is_init {
            let mut st = self.state();
            let c = container_mut(&mut st, &req.id)?;
            let p = c.process(&req.exec_id)?;
            if p.phase == Phase::Running && p.exit().is_none() {
                return Err(TaskError::precondition(format!(
                    "exec {:?} of container {:?} is still running",
                    req.exec_id, req.id
                )));
            }
            let p = c
                .execs
                .remove(&req.exec_id)
                .ok_or_else(|| TaskError::not_found(format!("exec {:?} not found", req.exec_id)))?;
            let (exit_status, exited_at) = exit_fields(p.exit());
            return Ok(DeleteResponse {
                pid: p.pid,
                exit_status,
                exited_at,
                ..Default::default()
            });
        }

        {
            let st = self.state();
            let c = container(&st, &req.id)?;
            if c.init.phase == Phase::Running && c.init.exit().is_none() {
                return Err(TaskError::precondition(format!(
                    "container {:?} is still running: kill it first",
                    req.id
                )));
            }
        }
        let alive_agent = {
            let st = self.state();
            st.sandbox
                .as_ref()
                .filter(|s| !s.is_dead())
                .map(|s| s.agent.clone())
        };
        if let Some(agent) = alive_agent {
            let rm = pb::RemoveContainerRequest {
                container_id: req.id.clone(),
                ..Default::default()
            };
            if let Err(e) = agent.remove_container(rm).await {
                tracing::warn!("removing container {} from the guest: {e}", req.id);
            }
        }
        let Some(c) = self.state().containers.remove(&req.id) else {
            return Err(TaskError::not_found(format!(
                "container {:?} not found",
                req.id
            )));
        };
        for p in std::iter::once(&c.init).chain(c.execs.values()) {
            let taken = p.copiers.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(copiers) = taken {
                drain(copiers, DELETE_IO_DRAIN_TIMEOUT).await;
            }
            p.exit_handle().set(KILLED_EXIT_STATUS);
        }
        self.unmount(&c.mounts).await;
        let (exit_status, exited_at) = exit_fields(c.init.exit());
        self.send(TaskEvent::Delete(TaskDelete {
            container_id: req.id.clone(),
            pid: c.init.pid,
            exit_status,
            exited_at: exited_at.clone(),
            id: req.id.clone(),
            ..Default::default()
        }));
        self.shutdown_sandbox_if_empty().await;
        Ok(DeleteResponse {
            pid: c.init.pid,
            exit_status,
            exited_at,
            ..Default::default()
        })
    }

    pub async fn exec(&self, req: &ExecProcessRequest) -> TaskResult<()> {
        if req.exec_id.is_empty() {
            return Err(TaskError::invalid("exec id must not be empty"));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                TaskError::invalid(format!("exec {:?}: no process spec", req.exec_id))
            })?;
        {
            let mut st = self.state();
            let c = container_mut(&mut st, &req.id)?;
            if c.init.exit().is_some() {
                return Err(TaskError::precondition(format!(
                    "container {:?} is not running",
                    req.id
                )));
            }
            if c.is_init(&req.exec_id) || c.execs.contains_key(&req.exec_id) {
                return Err(TaskError::already_exists(format!(
                    "exec {:?} already exists in container {:?}",
                    req.exec_id, req.id
                )));
            }
            let mut p = Process::new(
                &req.exec_id,
                StdioPaths {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                },
            );
            p.exec_spec = Some(spec);
            c.execs.insert(req.exec_id.clone(), p);
        }
        self.send(TaskEvent::ExecAdded(TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        }));
        Ok(())
    }

    pub async fn resize_pty(&self, req: &ResizePtyRequest) -> TaskResult<()> {
        let agent = self.agent()?;
        let exec_id = {
            let st = self.state();
            let c = container(&st, &req.id)?;
            c.process(&req.exec_id)?;
            c.agent_exec_id(&req.exec_id)
        };
        agent
            .tty_win_resize(pb::TtyWinResizeRequest {
                container_id: req.id.clone(),
                exec_id,
                rows: req.height,
                columns: req.width,
                ..Default::default()
            })
            .await
    }

    pub async fn close_io(&self, req: &CloseIORequest) -> TaskResult<()> {
        if !req.stdin {
            return Ok(());
        }
        let (exec_id, handled) = {
            let st = self.state();
            let c = container(&st, &req.id)?;
            let p = c.process(&req.exec_id)?;
            let slot = p.copiers.lock().unwrap_or_else(|e| e.into_inner());
            let handled = match slot.as_ref() {
                // The copier sends CloseStdin itself once it has forwarded everything.
                Some(cp) if cp.has_stdin() => {
                    cp.close_stdin();
                    true
                }
                // Exited (or exiting: its waiter holds the copiers) or never started: the
                // guest has no stdin left to close.
                _ => p.exit().is_some() || p.waited || p.phase == Phase::Created,
            };
            (c.agent_exec_id(&req.exec_id), handled)
        };
        if handled {
            return Ok(());
        }
        self.agent()?
            .close_stdin(pb::CloseStdinRequest {
                container_id: req.id.clone(),
                exec_id,
                ..Default::default()
            })
            .await
    }

    pub async fn pids(&self, req: &PidsRequest) -> TaskResult<PidsResponse> {
        let agent = self.agent()?;
        container(&self.state(), &req.id)?;
        let resp = agent
            .list_processes(pb::ListProcessesRequest {
                container_id: req.id.clone(),
                ..Default::default()
            })
            .await?;
        Ok(PidsResponse {
            processes: resp
                .processes
                .iter()
                .map(|p| ProcessInfo {
                    pid: p.pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn set_paused(&self, id: &str, paused: bool) -> TaskResult<()> {
        let agent = self.agent()?;
        {
            let st = self.state();
            let c = container(&st, id)?;
            if c.init.phase != Phase::Running || c.init.exit().is_some() {
                return Err(TaskError::precondition(format!(
                    "container {id:?} is not running"
                )));
            }
        }
        if paused {
            agent
                .pause_container(pb::PauseContainerRequest {
                    container_id: id.to_string(),
                    ..Default::default()
                })
                .await?;
        } else {
            agent
                .resume_container(pb::ResumeContainerRequest {
                    container_id: id.to_string(),
                    ..Default::default()
                })
                .await?;
        }
        container_mut(&mut self.state(), id)?.paused = paused;
        let container_id = id.to_string();
        self.send(if paused {
            TaskEvent::Paused(TaskPaused {
                container_id,
                ..Default::default()
            })
        } else {
            TaskEvent::Resumed(TaskResumed {
                container_id,
                ..Default::default()
            })
        });
        Ok(())
    }

    pub async fn pause(&self, req: &PauseRequest) -> TaskResult<()> {
        self.set_paused(&req.id, true).await
    }

    pub async fn resume(&self, req: &ResumeRequest) -> TaskResult<()> {
        self.set_paused(&req.id, false).await
    }

    pub async fn update(&self, req: &UpdateTaskRequest) -> TaskResult<()> {
        let agent = self.agent()?;
        container(&self.state(), &req.id)?;
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .ok_or_else(|| TaskError::invalid("update: no resources given"))?;
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&resources).map_err(
            |e| {
                TaskError::invalid(format!(
                    "update: resources are not OCI LinuxResources JSON: {e}"
                ))
            },
        )?;
        agent
            .update_container(pb::UpdateContainerRequest {
                container_id: req.id.clone(),
                resources_json: resources,
                ..Default::default()
            })
            .await
    }

    pub async fn stats(&self, req: &StatsRequest) -> TaskResult<StatsResponse> {
        let agent = self.agent()?;
        container(&self.state(), &req.id)?;
        let s = agent
            .stats_container(pb::StatsContainerRequest {
                container_id: req.id.clone(),
                ..Default::default()
            })
            .await?;
        Ok(StatsResponse {
            stats: MessageField::some(metrics::to_any(&s)?),
            ..Default::default()
        })
    }

    pub async fn connect(&self, req: &ConnectRequest) -> TaskResult<ConnectResponse> {
        let task_pid = self
            .state()
            .containers
            .get(&req.id)
            .map(|c| c.init.pid)
            .unwrap_or_default();
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            ..Default::default()
        })
    }

    /// Exits the shim once no container is left (containerd calls it after every Delete).
    pub async fn shutdown(&self, _req: &ShutdownRequest) -> TaskResult<()> {
        let _serial = self.lifecycle.lock().await;
        if !self.state().containers.is_empty() {
            return Ok(());
        }
        self.shutdown_sandbox_if_empty().await;
        self.exit.signal();
        Ok(())
    }
}

/// Waits for a process's output copiers, at most `limit`.
async fn drain(mut copiers: Copiers, limit: Duration) {
    if tokio::time::timeout(limit, copiers.finish()).await.is_err() {
        tracing::warn!("stdio still open {limit:?} after the process exited; not waiting");
    }
}

fn publish_exit(
    events: &EventSender,
    handle: &ExitHandle,
    status: u32,
    cid: &str,
    event_id: &str,
    pid: u32,
) {
    handle.set_then(status, |exit| {
        events::send(
            events,
            TaskEvent::Exit(TaskExit {
                container_id: cid.to_string(),
                id: event_id.to_string(),
                pid,
                exit_status: exit.status,
                exited_at: MessageField::some(events::timestamp(exit.at)),
                ..Default::default()
            }),
        );
    });
}

/// When the VM dies, every process of the sandbox exits with 255.
async fn watch_vm_death(
    state: Arc<Mutex<State>>,
    events: EventSender,
    mut exited: watch::Receiver<bool>,
) {
    if exited.wait_for(|dead| *dead).await.is_err() {
        return;
    }
    let procs: Vec<(String, String, u32, ExitHandle)> = {
        let st = lock(&state);
        if !st.containers.is_empty() {
            tracing::error!("the sandbox VM died; its tasks exit with {VM_GONE_EXIT_STATUS}");
        }
        st.containers
            .values()
            .flat_map(|c| {
                let init = (c.id.clone(), c.id.clone(), c.init.pid, c.init.exit_handle());
                let execs = c
                    .execs
                    .values()
                    .filter(|p| p.phase == Phase::Running)
                    .map(|p| (c.id.clone(), p.exec_id.clone(), p.pid, p.exit_handle()));
                std::iter::once(init).chain(execs).collect::<Vec<_>>()
            })
            .collect()
    };
    for (cid, id, pid, handle) in procs {
        publish_exit(&events, &handle, VM_GONE_EXIT_STATUS, &cid, &id, pid);
    }
}

/// Forwards the guest's OOM notifications until the agent connection ends.
async fn forward_oom_events(agent: Arc<dyn GuestAgent>, events: EventSender) {
    while let Ok(ev) = agent.get_oom_event(pb::GetOOMEventRequest::default()).await {
        events::send(
            &events,
            TaskEvent::Oom(TaskOOM {
                container_id: ev.container_id,
                ..Default::default()
            }),
        );
    }
}

/// The ttrpc face of `TaskCore`.
#[derive(Clone)]
pub struct TaskService {
    core: Arc<TaskCore>,
}

impl TaskService {
    pub fn new(core: Arc<TaskCore>) -> Self {
        Self { core }
    }
}

fn done<T>(r: TaskResult<T>, rpc: &str) -> TtrpcResult<T> {
    r.map_err(|e| {
        tracing::warn!("{rpc}: {e}");
        e.into()
    })
}

fn empty(r: TaskResult<()>, rpc: &str) -> TtrpcResult<Empty> {
    done(r, rpc).map(|()| Empty::new())
}

#[async_trait]
impl Task for TaskService {
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        done(self.core.state_of(&req).await, "state")
    }
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        tracing::info!("create {} (bundle {})", req.id, req.bundle);
        done(self.core.create(&req).await, "create")
    }
    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        done(self.core.start(&req).await, "start")
    }
    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        done(self.core.delete(&req).await, "delete")
    }
    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        done(self.core.pids(&req).await, "pids")
    }
    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        empty(self.core.pause(&req).await, "pause")
    }
    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        empty(self.core.resume(&req).await, "resume")
    }
    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        empty(self.core.kill(&req).await, "kill")
    }
    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        empty(self.core.exec(&req).await, "exec")
    }
    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        empty(self.core.resize_pty(&req).await, "resize_pty")
    }
    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        empty(self.core.close_io(&req).await, "close_io")
    }
    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        empty(self.core.update(&req).await, "update")
    }
    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        done(self.core.wait(&req).await, "wait")
    }
    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        done(self.core.stats(&req).await, "stats")
    }
    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        done(self.core.connect(&req).await, "connect")
    }
    async fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> TtrpcResult<Empty> {
        empty(self.core.shutdown(&req).await, "shutdown")
    }
}
