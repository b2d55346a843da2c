//! The sandbox: one VM, its agent, its share and the containers in it. The first Create boots
//! it, the last Delete shuts it down; while it lives, its VM's death ends every process and the
//! guest's OOM kills reach containerd (`watch`). Generic over what it holds ([`Member`]), so
//! it does not depend on the task layer above it.

mod members;
pub mod seams;
mod watch;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use protocol::agent as pb;

use crate::error::{TaskError, TaskResult};
use crate::events::EventSender;
use crate::guest::GuestAgent;
use crate::resources::network::GuestNetwork;
use crate::resources::share::Share;
pub use members::Members;
use seams::{BootRequest, SandboxVm, Shutdown, VmLauncher};

/// Exit status reported when the VM is gone and the real status cannot be known.
pub const VM_GONE_EXIT_STATUS: u32 = 255;

/// A process ended by SIGKILL (the host's OOM killer, or removed before it exited): 128 +
/// SIGKILL, as on a host.
pub const KILLED_EXIT_STATUS: u32 = 128 + libc::SIGKILL as u32;

/// Why the VM is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmGone {
    /// It died or was stopped: [`VM_GONE_EXIT_STATUS`].
    Died,
    /// The host's OOM killer took it in the pod's cgroup: each container gets a TaskOOM and
    /// its processes [`KILLED_EXIT_STATUS`] (kubelet then reports OOMKilled).
    HostOom,
}

impl VmGone {
    pub fn exit_status(self) -> u32 {
        match self {
            VmGone::Died => VM_GONE_EXIT_STATUS,
            VmGone::HostOom => KILLED_EXIT_STATUS,
        }
    }
}

/// What the sandbox needs of the containers it holds.
pub trait Member: Send + 'static {
    /// The VM is gone: every process still running ends with `why`'s exit status.
    fn vm_gone(&self, events: &EventSender, why: VmGone);
}

pub struct Sandbox<C> {
    pub id: String,
    pub agent: Arc<dyn GuestAgent>,
    pub share: Share,
    /// The containers this shim created in the sandbox (what the guest says about others is
    /// not believed).
    pub containers: Members<C>,
    /// The VM while it is ours to stop: taken by [`SandboxOwner::stop_vm`] or the last
    /// container's Delete.
    vm: Option<Box<dyn SandboxVm>>,
    /// Becomes true when the hypervisor process is gone.
    exited: tokio::sync::watch::Receiver<bool>,
}

impl<C> Sandbox<C> {
    /// Becomes true when the hypervisor process is gone.
    pub fn vm_exited(&self) -> tokio::sync::watch::Receiver<bool> {
        self.exited.clone()
    }

    /// Whether the VM is gone.
    pub fn is_dead(&self) -> bool {
        self.vm.is_none() || *self.exited.borrow()
    }

    pub fn container(&self, id: &str) -> TaskResult<&C> {
        self.containers
            .get(id)
            .ok_or_else(|| TaskError::not_found(format!("container {id:?} not found")))
    }

    pub fn container_mut(&mut self, id: &str) -> TaskResult<&mut C> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| TaskError::not_found(format!("container {id:?} not found")))
    }
}

/// The shim's sandbox slot: empty until the first Create boots one, empty again once the last
/// container is deleted.
pub type Slot<C> = Arc<Mutex<Option<Sandbox<C>>>>;

/// Locks the slot (a poisoned lock still holds valid state: every update is one assignment).
pub fn lock<C>(slot: &Mutex<Option<Sandbox<C>>>) -> MutexGuard<'_, Option<Sandbox<C>>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the task layer gets from [`SandboxOwner::ensure`].
pub struct Ready {
    pub agent: Arc<dyn GuestAgent>,
    pub share: Share,
    /// Whether this call booted the sandbox (so a failed Create shuts it down again).
    pub booted: bool,
}

/// Boots, watches and shuts down the shim's one sandbox.
pub struct SandboxOwner<C> {
    launcher: Arc<dyn VmLauncher>,
    events: EventSender,
    slot: Slot<C>,
}

// Not derived: that would ask `C: Clone`, and only the handles are cloned.
impl<C> Clone for SandboxOwner<C> {
    fn clone(&self) -> Self {
        Self {
            launcher: self.launcher.clone(),
            events: self.events.clone(),
            slot: self.slot.clone(),
        }
    }
}

impl<C: Member> SandboxOwner<C> {
    pub fn new(launcher: Arc<dyn VmLauncher>, events: EventSender) -> Self {
        Self {
            launcher,
            events,
            slot: Arc::new(Mutex::new(None)),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Option<Sandbox<C>>> {
        lock(&self.slot)
    }

    /// The running sandbox's agent.
    pub fn agent(&self) -> TaskResult<Arc<dyn GuestAgent>> {
        self.lock()
            .as_ref()
            .map(|s| s.agent.clone())
            .ok_or_else(|| TaskError::precondition("the sandbox is not running"))
    }

    /// The sandbox's agent and share, booting its VM first if none runs yet.
    pub async fn ensure(&self, req: BootRequest, hostname: String) -> TaskResult<Ready> {
        if let Some(sb) = self.lock().as_ref() {
            if sb.is_dead() {
                return Err(TaskError::precondition(format!(
                    "the VM of sandbox {:?} is gone",
                    sb.id
                )));
            }
            if sb.id != req.sandbox_id {
                tracing::warn!(
                    "a container names sandbox {}, this shim runs {}",
                    req.sandbox_id,
                    sb.id
                );
            }
            return Ok(Ready {
                agent: sb.agent.clone(),
                share: sb.share.clone(),
                booted: false,
            });
        }
        protocol::rules::check_id(&req.sandbox_id).map_err(|reason| {
            TaskError::invalid(format!("invalid sandbox id {:?}: {reason}", req.sandbox_id))
        })?;
        let sb = boot(self.launcher.as_ref(), req, hostname).await?;
        tokio::spawn(watch::vm_death(
            self.slot.clone(),
            self.events.clone(),
            sb.exited.clone(),
        ));
        tokio::spawn(watch::oom_events(
            self.slot.clone(),
            sb.agent.clone(),
            self.events.clone(),
        ));
        tokio::spawn(watch::agent_liveness(
            self.clone(),
            sb.agent.clone(),
            sb.exited.clone(),
        ));
        let ready = Ready {
            agent: sb.agent.clone(),
            share: sb.share.clone(),
            booted: true,
        };
        *self.lock() = Some(sb);
        Ok(ready)
    }

    /// Shuts the sandbox down if no container is left in it.
    pub async fn shutdown_if_empty(&self) {
        let sb = {
            let mut slot = self.lock();
            if slot.as_ref().is_some_and(|s| !s.containers.is_empty()) {
                return;
            }
            slot.take()
        };
        if let Some(vm) = sb.and_then(|sb| sb.vm) {
            if let Err(e) = vm.shutdown(Shutdown::Orderly).await {
                tracing::warn!("shutting down the sandbox VM: {e}");
            }
        }
    }

    /// Stops the VM now, containers or not, because the guest can no longer be trusted to
    /// end them (`reason` says why). Its death ends every process (`watch::vm_death`); the
    /// containers stay until their Delete, which then finds the sandbox dead.
    pub async fn stop_vm(&self, reason: &str) {
        let vm = {
            let mut slot = self.lock();
            let Some(sb) = slot.as_mut() else {
                return;
            };
            let vm = sb.vm.take();
            if vm.is_some() {
                tracing::error!("stopping the VM of sandbox {}: {reason}", sb.id);
            }
            vm
        };
        if let Some(vm) = vm {
            if let Err(e) = vm.shutdown(Shutdown::Abandon).await {
                tracing::warn!("stopping the sandbox VM: {e}");
            }
        }
    }
}

/// Tells the agent the pod's interfaces, then its routes and static neighbours.
async fn configure_network(agent: &dyn GuestAgent, net: &GuestNetwork) -> TaskResult<()> {
    for i in &net.interfaces {
        let req = pb::UpdateInterfaceRequest {
            interface: protobuf::MessageField::some(i.clone()),
            ..Default::default()
        };
        agent.update_interface(req).await.map_err(|e| {
            e.context(format_args!(
                "configuring interface {} ({}) in the guest",
                i.name, i.hw_addr
            ))
        })?;
    }
    if !net.routes.is_empty() {
        let req = pb::UpdateRoutesRequest {
            routes: protobuf::MessageField::some(pb::Routes {
                routes: net.routes.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        agent
            .update_routes(req)
            .await
            .map_err(|e| e.context("setting the pod's routes in the guest"))?;
    }
    if !net.neighbours.is_empty() {
        let req = pb::AddARPNeighborsRequest {
            neighbors: net.neighbours.clone(),
            ..Default::default()
        };
        agent
            .add_arp_neighbors(req)
            .await
            .map_err(|e| e.context("adding the pod's static neighbours in the guest"))?;
    }
    Ok(())
}

/// Boots the VM and creates the sandbox in the guest. On error nothing is left running.
async fn boot<C>(
    launcher: &dyn VmLauncher,
    req: BootRequest,
    hostname: String,
) -> TaskResult<Sandbox<C>> {
    let id = req.sandbox_id.clone();
    let vm = launcher.boot(req).await?;
    let agent = vm.agent();
    let share = vm.share().clone();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let create = pb::CreateSandboxRequest {
        sandbox_id: id.clone(),
        hostname,
        storages: vec![share.storage()],
        host_time_sec: now.as_secs() as i64,
        host_time_nsec: i64::from(now.subsec_nanos()),
        ..Default::default()
    };
    let created = match agent.create_sandbox(create).await {
        Ok(_) => match vm.guest_network() {
            Some(net) => configure_network(agent.as_ref(), net).await,
            None => Ok(()),
        },
        Err(e) => Err(e.context(format_args!("creating sandbox {id} in the guest"))),
    };
    if let Err(e) = created {
        if let Err(se) = vm.shutdown(Shutdown::Orderly).await {
            tracing::warn!("shutting down sandbox {id} after a failed CreateSandbox: {se}");
        }
        return Err(e);
    }
    Ok(Sandbox {
        id,
        agent,
        share,
        containers: Members::default(),
        exited: vm.exited(),
        vm: Some(vm),
    })
}
