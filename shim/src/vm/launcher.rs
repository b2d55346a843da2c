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
use crate::resources::network::{GuestNetwork, PodNetwork};
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
    async fn spec(req: &BootRequest) -> TaskResult<VmSpec> {
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
        let cgroup = match &req.cgroups_path {
            Some(path) => {
                let c = PodCgroup::create(path, spec.config.runtime.sandbox_cgroup_only)
                    .await
                    .map_err(|e| {
                        TaskError::invalid(format!(
                            "sandbox {}: the pod's host cgroup: {e}",
                            req.sandbox_id
                        ))
                    })?;
                if let Err(e) = check_memory_fits(c.host(), &spec) {
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
                Some(c)
            }
            None => None,
        };
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
    net.taps()
        .iter()
        .map(|t| NetDevice {
            tap: t.name.clone(),
            mac: t.mac.clone(),
            mtu: t.mtu,
            fd: TapFd(t.fd.clone()),
        })
        .collect()
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
