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
use crate::resources::network::{GuestNetwork, PodNetwork};
use crate::resources::share::Share;
use crate::sandbox::seams::{BootRequest, SandboxVm, VmLauncher};

/// A pod's VM and the network plumbed for it in the pod's netns (removed after the VM).
struct PodVm {
    vm: Vm,
    net: Option<PodNetwork>,
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
    async fn shutdown(self: Box<Self>) -> TaskResult<()> {
        let PodVm { vm, net } = *self;
        let id = vm.id().to_string();
        let stopped = vm
            .shutdown()
            .await
            .map_err(|e| TaskError::internal(format!("shutting down sandbox {id}: {e}")));
        // After the VM: QEMU no longer holds the taps.
        let unplumbed = match net {
            Some(n) => n.teardown().await.map_err(|e| {
                TaskError::internal(format!("removing the pod network of sandbox {id}: {e}"))
            }),
            None => Ok(()),
        };
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
        tracing::info!(
            "sandbox {}: configuration {}",
            req.sandbox_id,
            loaded.path.display()
        );
        // The VM is named after the sandbox so a dead shim's leftovers are found by its id.
        Ok(VmSpec::new(req.sandbox_id.clone(), cfg))
    }
}

#[async_trait]
impl VmLauncher for ConfiguredLauncher {
    async fn boot(&self, req: BootRequest) -> TaskResult<Box<dyn SandboxVm>> {
        let mut spec = Self::spec(&req).await?;
        let net = match &req.netns {
            Some(path) => PodNetwork::setup(path).await.map_err(|e| {
                TaskError::internal(format!(
                    "setting up the network of sandbox {}: {e}",
                    req.sandbox_id
                ))
            })?,
            None => None,
        };
        spec.net = net.as_ref().map(nics).unwrap_or_default();
        match Vm::boot(&spec).await {
            Ok(vm) => Ok(Box::new(PodVm { vm, net })),
            Err(e) => {
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

/// The shim's `delete` after a crash: kill what the dead shim left running and remove its
/// VM's directory (best effort; failures are logged).
pub async fn cleanup_sandbox(sandbox_id: &str) {
    if let Err(e) = cleanup::cleanup_vm_dir(sandbox_id).await {
        tracing::warn!("cleaning up sandbox {sandbox_id}: {e}");
    }
}
