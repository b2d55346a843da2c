//! The task layer: one context-free method of `TaskCore` per Task RPC, dispatching to the
//! sandbox (which holds the containers), the processes' state machine and stdio, and reporting
//! through an event channel. Tests drive `TaskCore` with fakes of the layers below and read
//! the channel instead of containerd.

pub mod container;
pub mod metrics;
pub mod process;
pub mod stdio;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest, StartResponse,
    StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest,
    WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{CodedInputStream, MessageField};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::ExitSignal;
use oci_spec::runtime::Spec;
use protocol::agent as pb;

use self::container::Container;
use self::process::{Exit, Process};
use self::stdio::{Copiers, StdioPaths};
use crate::error::{TaskError, TaskResult};
use crate::events::{self, EventSender, TaskEvent};
use crate::guest::GuestAgent;
use crate::resources::rootfs::{HostMounter, MountPlan, RootfsMount};
use crate::resources::share::Share;
use crate::resources::{network, spec};
use crate::sandbox::seams::{BootRequest, Platform};
use crate::sandbox::{KILLED_EXIT_STATUS, VM_GONE_EXIT_STATUS};

/// The sandbox as the task layer holds it: its members are containers.
type Sandbox = crate::sandbox::Sandbox<Container>;
type SandboxOwner = crate::sandbox::SandboxOwner<Container>;

/// After the agent's connection broke under a waiter, how long the VM's death may take to
/// be seen (the sandbox then reports the exit, with its cause).
const VM_DEATH_NOTICE: Duration = Duration::from_secs(2);
/// How long an exec's exit waits for output still held open by its background children.
const EXEC_IO_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// The same for a container's init. Its pid namespace dies with it, so EOF comes at once; the
/// bound only keeps a misbehaving guest from holding TaskExit back forever.
const INIT_IO_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long Delete waits for the stdio copiers of all the container's processes (together)
/// after RemoveContainer closed the streams.
const DELETE_IO_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the guest has to report the exit of a container's init after SIGKILL. A SIGKILL
/// cannot be caught, so an honest guest reports at once (well under a second even under TCG);
/// past this the guest is lying or wedged: the task is reported killed and the VM stopped.
const KILL_EXIT_GRACE: Duration = Duration::from_secs(10);
/// Type of containerd's runtime options for non-runc runtimes (`--runtime-config-path`).
const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// The task layer, independent of ttrpc.
pub struct TaskCore {
    mounter: Arc<dyn HostMounter>,
    sandbox: SandboxOwner,
    events: EventSender,
    exit: Arc<ExitSignal>,
    /// Serialises Create, Delete and Shutdown: they boot and tear down the sandbox.
    lifecycle: tokio::sync::Mutex<()>,
}

fn container<'a>(st: &'a Option<Sandbox>, id: &str) -> TaskResult<&'a Container> {
    match st {
        Some(sb) => sb.container(id),
        None => Err(TaskError::not_found(format!("container {id:?} not found"))),
    }
}

fn container_mut<'a>(st: &'a mut Option<Sandbox>, id: &str) -> TaskResult<&'a mut Container> {
    match st {
        Some(sb) => sb.container_mut(id),
        None => Err(TaskError::not_found(format!("container {id:?} not found"))),
    }
}

/// Container ids become host and guest path components: the id rule both sides share.
fn validate_id(id: &str) -> TaskResult<()> {
    protocol::rules::check_id(id)
        .map_err(|reason| TaskError::invalid(format!("invalid container id {id:?}: {reason}")))
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

/// The VM-exited signal of the sandbox in `st`, if there is one.
fn vm_exited(st: &Option<Sandbox>) -> Option<tokio::sync::watch::Receiver<bool>> {
    st.as_ref().map(Sandbox::vm_exited)
}

/// Whether the VM is seen dead within [`VM_DEATH_NOTICE`] (no VM known: false).
async fn vm_died(exited: Option<tokio::sync::watch::Receiver<bool>>) -> bool {
    let Some(mut exited) = exited else {
        return false;
    };
    let seen = tokio::time::timeout(VM_DEATH_NOTICE, exited.wait_for(|dead| *dead))
        .await
        .is_ok_and(|r| r.is_ok());
    seen
}

impl TaskCore {
    pub fn new(platform: Platform, events: EventSender, exit: Arc<ExitSignal>) -> Self {
        Self {
            mounter: platform.mounter,
            sandbox: SandboxOwner::new(platform.launcher, events.clone()),
            events,
            exit,
            lifecycle: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Option<Sandbox>> {
        self.sandbox.lock()
    }

    fn send(&self, ev: TaskEvent) {
        events::send(&self.events, ev);
    }

    /// The sandbox's agent. Without a sandbox no container exists here either: a request
    /// naming one (a retry after its Delete, say) is answered NotFound, as for any unknown id.
    fn agent(&self) -> TaskResult<Arc<dyn GuestAgent>> {
        self.sandbox
            .agent()
            .map_err(|e| TaskError::not_found(format!("no such container here: {}", e.message)))
    }

    /// What booting the sandbox for this Create needs.
    fn boot_request(req: &CreateTaskRequest, bundle: &Path, spec: &Spec) -> (BootRequest, String) {
        let boot = BootRequest {
            sandbox_id: spec::sandbox_id(spec, &req.id),
            bundle: bundle.to_path_buf(),
            annotations: spec::annotations(spec),
            config_path: runtime_config_path(req.options.as_ref()),
            netns: network::netns_path(spec),
            cgroups_path: spec::cgroups_path(spec),
        };
        // A VM needs some hostname; without one in the spec, the sandbox id says which it is.
        let hostname = Some(spec::hostname(spec))
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| boot.sandbox_id.clone());
        (boot, hostname)
    }

    async fn mount(&self, plan: &MountPlan) -> TaskResult<()> {
        let mounter = self.mounter.clone();
        let plan = plan.clone();
        tokio::task::spawn_blocking(move || mounter.mount(&plan))
            .await
            .map_err(|e| TaskError::internal(format!("mount task: {e}")))?
    }

    async fn unmount(&self, plan: &MountPlan) {
        let mounter = self.mounter.clone();
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
        spec: &Spec,
        agent: Arc<dyn GuestAgent>,
        share: &Share,
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
        let plan = MountPlan::new(share, &req.id, rootfs, bundle, spec)?;
        let guest_spec = spec::rewrite_for_guest(spec, &req.id, &plan.guest_sources())?;
        let oci_spec_json = serde_json::to_vec(&guest_spec)
            .map_err(|e| TaskError::internal(format!("encoding the guest spec: {e}")))?;
        self.mount(&plan).await?;

        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let conns = stdio::connect(&agent, &req.id, "", &paths).await;
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
        let copiers = match stdio::start(agent.clone(), &req.id, "", &paths, conns).await {
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
        let init = Process::init(pid, paths);
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
        if container(&self.state(), &req.id).is_ok() {
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

        let (boot, hostname) = Self::boot_request(req, &bundle, &spec);
        let ready = self.sandbox.ensure(boot, hostname).await?;
        let c = match self
            .create_in_sandbox(req, &bundle, &spec, ready.agent, &ready.share)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                if ready.booted {
                    self.sandbox.shutdown_if_empty().await;
                }
                return Err(e);
            }
        };
        let pid = c.init.pid;
        match self.state().as_mut() {
            Some(sb) => sb.containers.insert(req.id.clone(), c),
            None => return Err(TaskError::precondition("the sandbox is gone")),
        };
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
    fn spawn_waiter(
        &self,
        agent: Arc<dyn GuestAgent>,
        vm_exited: Option<tokio::sync::watch::Receiver<bool>>,
        cid: &str,
        p: &mut Process,
    ) {
        if !p.claim_waiter() {
            return;
        }
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
                Ok(r) => Some(u32::try_from(r.status).unwrap_or(VM_GONE_EXIT_STATUS)),
                // A dead VM's exits are the sandbox's to report: it knows why (an OOM kill).
                Err(_) if vm_died(vm_exited).await => None,
                Err(e) => {
                    tracing::warn!("waiting for {cid}/{event_id}: {e}");
                    Some(VM_GONE_EXIT_STATUS)
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
            if let Some(status) = status {
                handle.publish(&events, status, &cid, &event_id, pid);
            }
        });
    }

    pub async fn start(&self, req: &StartRequest) -> TaskResult<StartResponse> {
        let agent = self.agent()?;
        let (is_init, exec_spec, paths) = {
            let st = self.state();
            let c = container(&st, &req.id)?;
            let p = c.process(&req.exec_id)?;
            let exec_spec = p.check_start(&req.id)?;
            (c.is_init(&req.exec_id), exec_spec, p.stdio.clone())
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
                let exited = vm_exited(&st);
                let c = container_mut(&mut st, &req.id)?;
                let pid = c.init.pid;
                c.init.set_started(pid);
                let cid = c.id.clone();
                self.spawn_waiter(agent, exited, &cid, &mut c.init);
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
        let conns = stdio::connect(&agent, &req.id, &req.exec_id, &paths).await;
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
        let copiers = match stdio::start(agent.clone(), &req.id, &req.exec_id, &paths, conns).await
        {
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
            let exited = vm_exited(&st);
            let c = container_mut(&mut st, &req.id)?;
            let p = c.process_mut(&req.exec_id)?;
            p.set_started(resp.pid);
            *p.copiers.lock().unwrap_or_else(|e| e.into_inner()) = Some(copiers);
            self.spawn_waiter(agent, exited, &req.id, p);
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
            let mut st = self.state();
            let c = container_mut(&mut st, &req.id)?;
            c.process(&req.exec_id)?.check_signal(&req.id)?;
            // Armed before the signal is sent, so a guest that never answers is covered too.
            if req.signal == libc::SIGKILL as u32
                && c.is_init(&req.exec_id)
                && c.init.claim_kill_watch()
            {
                self.watch_kill(&c.id, &c.init);
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
        let exited = vm_exited(&st);
        if let Ok(c) = container_mut(&mut st, &req.id) {
            if c.is_init(&req.exec_id) {
                let cid = c.id.clone();
                self.spawn_waiter(agent, exited, &cid, &mut c.init);
            }
        }
        Ok(())
    }

    /// A guest that does not report the exit of a SIGKILLed init within [`KILL_EXIT_GRACE`]
    /// cannot keep its pod alive: the task is reported killed and the VM stopped (which ends
    /// every other process of the sandbox too: a guest that lies about one exit is trusted
    /// with none).
    fn watch_kill(&self, cid: &str, init: &Process) {
        let (exit, handle, pid) = (init.subscribe(), init.exit_handle(), init.pid);
        let (events, sandbox, cid) = (self.events.clone(), self.sandbox.clone(), cid.to_string());
        tokio::spawn(async move {
            if tokio::time::timeout(KILL_EXIT_GRACE, process::wait_exit(exit))
                .await
                .is_ok()
            {
                return;
            }
            let reason = format!(
                "the guest did not report the exit of container {cid:?} within {KILL_EXIT_GRACE:?} of SIGKILL"
            );
            tracing::error!("{reason}: reporting it exited with {KILLED_EXIT_STATUS}");
            handle.publish(&events, KILLED_EXIT_STATUS, &cid, &cid, pid);
            sandbox.stop_vm(&reason).await;
        });
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
            c.process(&req.exec_id)?.check_delete(&req.id)?;
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
            container(&st, &req.id)?.init.check_delete(&req.id)?;
        }
        let alive_agent = {
            let st = self.state();
            st.as_ref()
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
        let Some(c) = self
            .state()
            .as_mut()
            .and_then(|sb| sb.containers.remove(&req.id))
        else {
            return Err(TaskError::not_found(format!(
                "container {:?} not found",
                req.id
            )));
        };
        let processes: Vec<&Process> = std::iter::once(&c.init).chain(c.execs.values()).collect();
        let copiers = processes
            .iter()
            .filter_map(|p| p.copiers.lock().unwrap_or_else(|e| e.into_inner()).take())
            .collect();
        drain_all(copiers, DELETE_IO_DRAIN_TIMEOUT).await;
        for p in processes {
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
        self.sandbox.shutdown_if_empty().await;
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
            c.init.check_exec_into(&req.id)?;
            if c.is_init(&req.exec_id) || c.execs.contains_key(&req.exec_id) {
                return Err(TaskError::already_exists(format!(
                    "exec {:?} already exists in container {:?}",
                    req.exec_id, req.id
                )));
            }
            let p = Process::exec(
                &req.exec_id,
                StdioPaths {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                },
                spec,
            );
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
                _ => p.stdin_gone(),
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

    /// The container's processes in the guest. An init that exited is listed (by its pid)
    /// until Delete: containerd 2.x, reloading its shims after a restart, takes a task with no
    /// pids for a leaked shim and removes it, losing the exit it was to report.
    pub async fn pids(&self, req: &PidsRequest) -> TaskResult<PidsResponse> {
        let (init_pid, init_running) = {
            let st = self.state();
            let init = &container(&st, &req.id)?.init;
            (init.pid, init.is_running())
        };
        let mut processes: Vec<ProcessInfo> = if init_running {
            self.agent()?
                .list_processes(pb::ListProcessesRequest {
                    container_id: req.id.clone(),
                    ..Default::default()
                })
                .await?
                .processes
                .iter()
                .map(|p| ProcessInfo {
                    pid: p.pid,
                    ..Default::default()
                })
                .collect()
        } else {
            Vec::new()
        };
        if processes.is_empty() {
            processes.push(ProcessInfo {
                pid: init_pid,
                ..Default::default()
            });
        }
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn set_paused(&self, id: &str, paused: bool) -> TaskResult<()> {
        let agent = self.agent()?;
        {
            let st = self.state();
            container(&st, id)?.init.check_running(id)?;
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
        let task_pid = container(&self.state(), &req.id)
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
        if self
            .state()
            .as_ref()
            .is_some_and(|sb| !sb.containers.is_empty())
        {
            return Ok(());
        }
        self.sandbox.shutdown_if_empty().await;
        self.exit.signal();
        Ok(())
    }
}

/// Waits for a process's output copiers, at most `limit`.
async fn drain(copiers: Copiers, limit: Duration) {
    drain_all(vec![copiers], limit).await
}

/// Waits for several processes' output copiers at once, at most `limit` in all.
async fn drain_all(mut all: Vec<Copiers>, limit: Duration) {
    let finished = futures::future::join_all(all.iter_mut().map(Copiers::finish));
    if tokio::time::timeout(limit, finished).await.is_err() {
        tracing::warn!(
            "stdio still open {limit:?} after the process exited (or nobody reads its FIFO); \
             not waiting"
        );
        all.iter_mut().for_each(Copiers::abort);
    }
}
