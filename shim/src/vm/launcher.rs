//! The launcher: configuration file + the pod's allowlisted annotations -> a [`VmSpec`], booted
//! into a [`Vm`] that a sandbox adopts (the `sandbox::seams` a real shim runs on).

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{cleanup, Vm, VmSpec};
use crate::config::{self, LoadRequest};
use crate::error::{TaskError, TaskResult};
use crate::guest::GuestAgent;
use crate::hypervisor::devices::{NetDevice, TapFd};
use crate::hypervisor::CgroupJoin;
use crate::resources::host_cgroup::HostCgroup;
use crate::resources::network::{GuestNetwork, HeldTap, PodNetwork, Tap};
use crate::resources::pod_cgroup::PodCgroup;
use crate::resources::share::Share;
use crate::sandbox::seams::{BootRequest, SandboxVm, Shutdown, VmLauncher};

/// A pod's VM, the network plumbed for it in the pod's netns and the host cgroup its
/// processes run in (both removed after the VM).
struct PodVm {
    vm: Vm,
    net: Option<PodNetwork>,
    cgroup: Option<PodCgroup>,
}

#[async_trait]
impl SandboxVm for PodVm {
    fn agent(&self) -> Arc<dyn GuestAgent> {
        Arc::new(self.vm.agent().clone())
    }
    fn share(&self) -> &Share {
        self.vm.share()
    }
    fn exited(&self) -> watch::Receiver<bool> {
        self.vm.exited()
    }
    fn guest_network(&self) -> Option<&GuestNetwork> {
        self.net.as_ref().map(PodNetwork::guest)
    }
    fn host_oom(&self) -> Option<String> {
        self.cgroup.as_ref().and_then(PodCgroup::host_oom)
    }
    async fn shutdown(self: Box<Self>, how: Shutdown) -> TaskResult<()> {
        let PodVm { vm, net, cgroup } = *self;
        let id = vm.id().to_string();
        let stopped = match how {
            Shutdown::Orderly => vm.shutdown().await,
            Shutdown::Abandon => vm.abandon().await,
        };
        let stopped =
            stopped.map_err(|e| TaskError::internal(format!("shutting down sandbox {id}: {e}")));
        // After the VM: QEMU no longer holds the taps.
        let unplumbed = match net {
            Some(n) => n.teardown().await.map_err(|e| {
                TaskError::internal(format!("removing the pod network of sandbox {id}: {e}"))
            }),
            None => Ok(()),
        };
        // After the VM: its processes have left the cgroup.
        if let Some(c) = cgroup {
            c.remove().await;
        }
        stopped.and(unplumbed)
    }
}

/// Resolves the configuration for a sandbox and boots its VM.
pub struct ConfiguredLauncher;

impl ConfiguredLauncher {
    /// The VmSpec for `req`: the configuration file it selects, with its annotations applied.
    pub async fn spec(req: &BootRequest) -> TaskResult<VmSpec> {
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
        // The configured size is the guest's base; the pod's limits are added to it.
        let pod = config::PodResources::from_annotations(&req.annotations)
            .map_err(|e| TaskError::invalid(format!("pod resources: {e}")))?;
        let capped = pod
            .apply(&mut cfg, crate::hypervisor::host::cpu_count())
            .map_err(|e| TaskError::invalid(format!("pod resources: {e}")))?;
        if let Some(max) = capped {
            tracing::warn!(
                "sandbox {}: the pod's CPU limit asks for {} more vCPUs; the VM gets {max}, its maximum",
                req.sandbox_id,
                pod.vcpus
            );
        }
        let guest = cfg.vmm.guest();
        tracing::info!(
            "sandbox {}: configuration {}, {} vCPUs, {} MiB (pod: +{} vCPUs, +{} MiB)",
            req.sandbox_id,
            loaded.path.display(),
            guest.default_vcpus,
            guest.default_memory,
            pod.vcpus,
            pod.memory_mib
        );
        // The VM is named after the sandbox so a dead shim's leftovers are found by its id.
        Ok(VmSpec::new(req.sandbox_id.clone(), cfg))
    }
}

#[async_trait]
impl VmLauncher for ConfiguredLauncher {
    async fn boot(&self, req: BootRequest) -> TaskResult<Box<dyn SandboxVm>> {
        let mut spec = Self::spec(&req).await?;
        let cgroup = pod_cgroup(&req, &mut spec).await?;
        let net = match &req.netns {
            Some(path) => match PodNetwork::setup(path).await {
                Ok(n) => n,
                Err(e) => {
                    if let Some(c) = cgroup {
                        c.remove().await;
                    }
                    return Err(TaskError::internal(format!(
                        "setting up the network of sandbox {}: {e}",
                        req.sandbox_id
                    )));
                }
            },
            None => None,
        };
        spec.net = net.as_ref().map(nics).unwrap_or_default();
        match Vm::boot(&spec).await {
            Ok(vm) => {
                let mut cgroup = cgroup;
                if let Some(c) = cgroup.as_mut() {
                    c.vm_started().await;
                }
                Ok(Box::new(PodVm { vm, net, cgroup }))
            }
            Err(e) => {
                if let Some(c) = cgroup {
                    c.remove().await;
                }
                // Which guest failed to boot, and from which configuration: what an operator
                // checks first.
                let guest = spec.config.vmm.guest();
                let source = spec.config.source.as_ref().map_or_else(
                    || "built-in defaults".to_string(),
                    |p| p.display().to_string(),
                );
                if let Some(n) = net {
                    if let Err(ne) = n.teardown().await {
                        tracing::warn!(
                            "removing the network of sandbox {} after a failed boot: {ne}",
                            req.sandbox_id
                        );
                    }
                }
                Err(TaskError::internal(format!(
                    "starting the VM of sandbox {} (kernel {}, initrd {}, configuration {source}): {e}",
                    req.sandbox_id,
                    guest.kernel.display(),
                    guest.initrd.display()
                )))
            }
        }
    }
}

/// The pod's host cgroup the sandbox spec names, made and checked against the VM's size; the
/// VM's processes are to join it (`spec.cgroup`). None without a cgroups path.
async fn pod_cgroup(req: &BootRequest, spec: &mut VmSpec) -> TaskResult<Option<PodCgroup>> {
    let Some(path) = &req.cgroups_path else {
        return Ok(None);
    };
    let c = PodCgroup::create(path, spec.config.runtime.sandbox_cgroup_only)
        .await
        .map_err(|e| {
            TaskError::invalid(format!(
                "sandbox {}: the pod's host cgroup: {e}",
                req.sandbox_id
            ))
        })?;
    if let Err(e) = check_memory_fits(c.host(), spec) {
        c.remove().await;
        return Err(e);
    }
    match c.host().procs_files() {
        Ok(files) => spec.cgroup = CgroupJoin::new(files),
        Err(e) => {
            c.remove().await;
            return Err(TaskError::internal(format!("the pod's host cgroup: {e}")));
        }
    }
    tracing::info!(
        "sandbox {}: VM processes in cgroup {path} ({})",
        req.sandbox_id,
        c.host()
            .leaves()
            .iter()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Some(c))
}

/// A pooled VM, adopted by the sandbox `req` boots, when it is the VM the sandbox would
/// boot: the same configuration after the pod's annotations and resources. Its processes move
/// into the pod's cgroup, and the tap it booted with (a `microvm` VM gets its NICs at boot
/// only) moves into the pod's netns and is wired to the pod's interface. Otherwise the pooled
/// VM is stopped and the sandbox boots its own, and why is logged.
pub struct PooledLauncher {
    vm: tokio::sync::Mutex<Option<(Vm, Option<HeldTap>)>>,
}

impl PooledLauncher {
    /// `vm` booted with `nic` as its one NIC (None: booted without one).
    pub fn new(vm: Vm, nic: Option<HeldTap>) -> Self {
        PooledLauncher {
            vm: tokio::sync::Mutex::new(Some((vm, nic))),
        }
    }
}

/// Why a pooled VM (`has_nic`: booted with a held tap) cannot serve `req` (None: it can).
pub fn pooled_vm_misfit(
    vm_config: &crate::config::Config,
    has_nic: bool,
    req: &BootRequest,
    spec: &VmSpec,
) -> Option<String> {
    if req.netns.is_some() && !has_nic {
        return Some("the pod has a network namespace, and the pooled VM has no NIC".into());
    }
    if spec.config != *vm_config {
        return Some(
            "the pod's configuration differs from the pooled VM's (another file, an annotation or the pod's resources)"
                .into(),
        );
    }
    None
}

#[async_trait]
impl VmLauncher for PooledLauncher {
    async fn boot(&self, req: BootRequest) -> TaskResult<Box<dyn SandboxVm>> {
        let Some((vm, nic)) = self.vm.lock().await.take() else {
            return ConfiguredLauncher.boot(req).await;
        };
        let spec = match ConfiguredLauncher::spec(&req).await {
            Ok(s) => s,
            Err(e) => {
                stop_unused(vm).await;
                return Err(e);
            }
        };
        if let Some(why) = pooled_vm_misfit(vm.config(), nic.is_some(), &req, &spec) {
            tracing::warn!(
                "sandbox {}: pooled VM not used ({why}); booting its own",
                req.sandbox_id
            );
            stop_unused(vm).await;
            return ConfiguredLauncher.boot(req).await;
        }
        let mut spec = spec;
        let mut cgroup = match pod_cgroup(&req, &mut spec).await {
            Ok(c) => c,
            Err(e) => {
                stop_unused(vm).await;
                return Err(e);
            }
        };
        if let Some(c) = cgroup.as_mut() {
            if let Err(e) = c.adopt(vm.process_ids()).await {
                stop_unused(vm).await;
                if let Some(c) = cgroup {
                    c.remove().await;
                }
                return Err(TaskError::internal(format!(
                    "sandbox {}: moving the pooled VM into the pod's cgroup: {e}",
                    req.sandbox_id
                )));
            }
            c.vm_started().await;
        }
        let net = match (&req.netns, nic) {
            (Some(path), Some(nic)) => match PodNetwork::adopt(path, nic).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(
                        "sandbox {}: the pooled VM's NIC could not be handed over ({e}); booting its own",
                        req.sandbox_id
                    );
                    stop_unused(vm).await;
                    if let Some(c) = cgroup {
                        c.remove().await;
                    }
                    return ConfiguredLauncher.boot(req).await;
                }
            },
            _ => None,
        };
        tracing::info!(
            "sandbox {}: running in a pooled VM booted {:?} before",
            req.sandbox_id,
            vm.boot_time()
        );
        Ok(Box::new(PodVm { vm, net, cgroup }))
    }
}

async fn stop_unused(vm: Vm) {
    let id = vm.id().to_string();
    if let Err(e) = vm.shutdown().await {
        tracing::warn!("stopping pooled VM {id}: {e}");
    }
}

/// What QEMU and its helpers need on the host beyond the guest's RAM, at the least, in MiB
/// (QEMU's own heap, its TCG/KVM structures, virtiofsd, the vsock daemon). A pod cgroup below
/// guest RAM + this would OOM-kill QEMU as it boots; the RuntimeClass overhead should be well
/// above it (docs/kubernetes.md).
pub const MIN_HOST_OVERHEAD_MIB: u64 = 64;

/// Refuses, before boot, a pod cgroup whose memory limit cannot hold the VM: names the
/// shortfall in MiB.
fn check_memory_fits(cgroup: &HostCgroup, spec: &VmSpec) -> TaskResult<()> {
    let Some(limit) = cgroup.memory_limit_mib() else {
        return Ok(());
    };
    let guest = u64::from(spec.config.vmm.guest().default_memory);
    let need = guest + MIN_HOST_OVERHEAD_MIB;
    if limit < need {
        return Err(TaskError::invalid(format!(
            "sandbox {}: the pod's cgroup memory limit ({limit} MiB) is {} MiB short of what \
             its VM needs: {guest} MiB guest RAM + at least {MIN_HOST_OVERHEAD_MIB} MiB for \
             QEMU and its helpers; raise the RuntimeClass overhead (overhead.podFixed.memory) \
             or the pod's limit",
            spec.id,
            need - limit
        )));
    }
    Ok(())
}

/// The VM's NICs: one per tap of the pod network, in its order.
fn nics(net: &PodNetwork) -> Vec<NetDevice> {
    net.taps().iter().map(nic).collect()
}

/// The VM's NIC for `tap`.
pub fn nic(tap: &Tap) -> NetDevice {
    NetDevice {
        tap: tap.name.clone(),
        mac: tap.mac.clone(),
        mtu: tap.mtu,
        fd: TapFd(tap.fd.clone()),
    }
}

/// The shim's `delete` after a crash: kill what the dead shim left running, remove its VM's
/// directory and the pod's host cgroup it made (best effort; failures are logged).
pub async fn cleanup_sandbox(sandbox_id: &str, cgroups_path: Option<&str>) {
    if let Err(e) = cleanup::cleanup_vm_dir(sandbox_id).await {
        tracing::warn!("cleaning up sandbox {sandbox_id}: {e}");
    }
    if let Some(path) = cgroups_path {
        if let Err(e) = PodCgroup::remove_leftover(path).await {
            tracing::warn!("removing the host cgroup of sandbox {sandbox_id}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pooled VM serves a pod only if the pod would get the same VM: the same configuration
    /// after the pod's annotations and resources, and a NIC for a pod with a network namespace
    /// (a `microvm` VM's NIC exists from boot).
    #[test]
    fn a_pooled_vm_fits_only_a_pod_that_would_boot_the_same_vm() {
        let pooled = crate::config::Config::default();
        let req = BootRequest {
            sandbox_id: "p1".into(),
            ..Default::default()
        };
        let same = VmSpec::new("p1", pooled.clone());
        assert_eq!(pooled_vm_misfit(&pooled, false, &req, &same), None);

        let with_net = BootRequest {
            netns: Some("/var/run/netns/p1".into()),
            ..req.clone()
        };
        let why = pooled_vm_misfit(&pooled, false, &with_net, &same).expect("misfit");
        assert!(why.contains("network namespace"), "{why}");
        assert_eq!(
            pooled_vm_misfit(&pooled, true, &with_net, &same),
            None,
            "a pooled VM with a held tap serves a pod with a netns"
        );

        let mut bigger = pooled.clone();
        bigger.vmm.guest_mut().default_memory += 256;
        let why =
            pooled_vm_misfit(&pooled, true, &req, &VmSpec::new("p1", bigger)).expect("misfit");
        assert!(why.contains("configuration differs"), "{why}");
    }
}
