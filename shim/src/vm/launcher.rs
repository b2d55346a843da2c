//! The launcher: configuration file + the pod's allowlisted annotations -> a [`VmSpec`], booted
//! into a [`Vm`] that a sandbox adopts (the `sandbox::seams` a real shim runs on).

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{cleanup, Vm, VmSpec};
use crate::config::{self, LoadRequest};
use crate::error::{TaskError, TaskResult};
use crate::guest::GuestAgent;
use crate::resources::share::Share;
use crate::sandbox::seams::{BootRequest, SandboxVm, VmLauncher};

#[async_trait]
impl SandboxVm for Vm {
    fn agent(&self) -> Arc<dyn GuestAgent> {
        Arc::new(Vm::agent(self).clone())
    }
    fn share(&self) -> &Share {
        Vm::share(self)
    }
    fn exited(&self) -> watch::Receiver<bool> {
        Vm::exited(self)
    }
    async fn shutdown(self: Box<Self>) -> TaskResult<()> {
        let id = self.id().to_string();
        Vm::shutdown(*self)
            .await
            .map_err(|e| TaskError::internal(format!("shutting down sandbox {id}: {e}")))
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
        let spec = Self::spec(&req).await?;
        let vm = Vm::boot(&spec).await.map_err(|e| {
            TaskError::internal(format!(
                "starting the VM of sandbox {}: {e}",
                req.sandbox_id
            ))
        })?;
        Ok(Box::new(vm))
    }
}

/// The shim's `delete` after a crash: kill what the dead shim left running and remove its
/// VM's directory (best effort; failures are logged).
pub async fn cleanup_sandbox(sandbox_id: &str) {
    if let Err(e) = cleanup::cleanup_vm_dir(sandbox_id).await {
        tracing::warn!("cleaning up sandbox {sandbox_id}: {e}");
    }
}
