//! The containerd-facing shim: `start` (one shim per sandbox), `delete` (cleanup after a dead
//! shim) and the server that serves the Task API (`task_service`).

pub mod pooled;
pub mod task_service;

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{spawn, Config, Error, ExitSignal, Flags, Shim, StartOpts};

use self::task_service::TaskService;
use crate::events;
use crate::pool::{self, Adoption};
use crate::resources::rootfs::{self, LinuxMounter};
use crate::resources::spec;
use crate::sandbox::seams::BootRequest;
use crate::sandbox::seams::Platform;
use crate::task::TaskCore;
use crate::vm::launcher::{self, ConfiguredLauncher};

/// Exit status `delete` reports for a task whose shim died (as if SIGKILLed).
const DEAD_SHIM_EXIT_STATUS: u32 = 128 + libc::SIGKILL as u32;

pub struct Service {
    exit: Arc<ExitSignal>,
    id: String,
    namespace: String,
    debug: bool,
}

/// The sandbox a container's bundle (`dir/config.json`) belongs to: containers naming the
/// same sandbox share one shim (and one VM).
pub fn grouping(bundle: &Path, container_id: &str) -> String {
    bundle_spec(bundle)
        .map(|s| spec::sandbox_id(&s, container_id))
        .unwrap_or_else(|| container_id.to_string())
}

/// The bundle's OCI spec, when it has a readable one.
fn bundle_spec(bundle: &Path) -> Option<oci_spec::runtime::Spec> {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| spec::parse(&b, "config.json").ok())
}

#[async_trait]
impl Shim for Service {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            exit: Arc::new(ExitSignal::default()),
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            debug: args.debug,
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let group = grouping(Path::new("."), &opts.id);
        // A new sandbox may get a pooled VM's shim; a container joining a sandbox goes to the
        // sandbox's shim below.
        if group == opts.id {
            if let Some(address) = pooled_shim(&opts, &group).await {
                tokio::fs::write("address", &address)
                    .await
                    .map_err(|e| Error::Other(format!("writing the shim address file: {e}")))?;
                return Ok(address);
            }
        }
        // The socket address derives from the group: a second container of a running sandbox
        // finds that sandbox's shim listening there and gets its address back.
        let address = spawn(opts, &group, Vec::new()).await?;
        tokio::fs::write("address", &address)
            .await
            .map_err(|e| Error::Other(format!("writing the shim address file: {e}")))?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        crate::logging::init_for_delete();
        let bundle =
            std::env::current_dir().map_err(|e| Error::Other(format!("current directory: {e}")))?;
        let sandbox_id = grouping(&bundle, &self.id);
        // Only the sandbox's own container owns the VM; the others go with it.
        if sandbox_id == self.id {
            let cgroups_path = bundle_spec(&bundle).and_then(|s| spec::cgroups_path(&s));
            launcher::cleanup_sandbox(&sandbox_id, cgroups_path.as_deref()).await;
            remove_dead_socket(&bundle, &sandbox_id).await;
        }
        if let Err(e) = rootfs::unmount_bundle_rootfs(&bundle) {
            tracing::warn!("{e}");
        }
        Ok(DeleteResponse {
            exit_status: DEAD_SHIM_EXIT_STATUS,
            exited_at: MessageField::some(events::timestamp(SystemTime::now())),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        crate::logging::init(self.debug);
        let platform = Platform {
            launcher: Arc::new(ConfiguredLauncher),
            mounter: Arc::new(LinuxMounter),
        };
        task_service(
            platform,
            publisher,
            self.namespace.clone(),
            self.exit.clone(),
        )
    }
}

/// The Task API over `platform`, publishing its events to containerd.
pub fn task_service(
    platform: Platform,
    publisher: RemotePublisher,
    namespace: String,
    exit: Arc<ExitSignal>,
) -> TaskService {
    let (tx, rx) = events::channel();
    tokio::spawn(events::run_publisher(rx, publisher, namespace));
    TaskService::new(Arc::new(TaskCore::new(platform, tx, exit)))
}

/// A pooled VM's shim made this sandbox's: Some(its address). None when the configuration
/// turns the pool off, the pod would not fit a pooled VM (annotations or resources that change
/// its VM), or none is ready; the caller starts a shim of its own.
async fn pooled_shim(opts: &StartOpts, sandbox_id: &str) -> Option<String> {
    let bundle = std::env::current_dir().ok()?;
    // containerd passes the runtime options on stdin (the ConfigPath, under CRI).
    let options = tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let mut data = Vec::new();
        std::io::stdin().read_to_end(&mut data).ok()?;
        (!data.is_empty())
            .then(|| containerd_shim::protos::protobuf::Message::parse_from_bytes(&data).ok())
            .flatten()
    })
    .await
    .ok()
    .flatten();
    let spec = bundle_spec(&bundle);
    let req = BootRequest {
        sandbox_id: sandbox_id.to_string(),
        bundle: bundle.clone(),
        annotations: spec
            .as_ref()
            .and_then(|s| s.annotations().clone())
            .unwrap_or_default(),
        config_path: crate::task::runtime_config_path(options.as_ref()),
        netns: spec
            .as_ref()
            .and_then(crate::resources::network::netns_path),
        cgroups_path: None,
    };
    // Quiet: the shim that boots will say what is wrong with the configuration.
    let wanted = ConfiguredLauncher::spec(&req).await.ok()?;
    if wanted.config.factory.vm_cache_number == 0 {
        return None;
    }
    let config = wanted.config.source.clone()?;
    let plain = ConfiguredLauncher::spec(&BootRequest {
        annotations: Default::default(),
        ..req.clone()
    })
    .await
    .ok()?;
    // Pooled VMs boot with a NIC (`pooled::run`).
    if let Some(why) = launcher::pooled_vm_misfit(&plain.config, true, &req, &wanted) {
        tracing::debug!("sandbox {sandbox_id}: {why}");
        return None;
    }
    let adoption = Adoption {
        namespace: opts.namespace.clone(),
        ttrpc_address: opts.ttrpc_address.clone(),
        sandbox_id: sandbox_id.to_string(),
        bundle,
        socket: containerd_shim::socket_address(&opts.address, &opts.namespace, sandbox_id),
        debug: opts.debug,
        start_pid: std::process::id(),
    };
    match pool::client::take(&config, adoption).await {
        Ok(address) => address,
        Err(e) => {
            tracing::warn!("sandbox {sandbox_id}: asking the VM pool: {e}");
            None
        }
    }
}

/// The dead shim's ttrpc socket, as its `address` file in the bundle names it (a killed shim
/// could not remove it): only a socket directly in containerd's shim socket directory.
async fn remove_dead_socket(bundle: &Path, sandbox_id: &str) {
    let Ok(address) = tokio::fs::read_to_string(bundle.join("address")).await else {
        return;
    };
    let dir = Path::new(containerd_shim::SOCKET_ROOT).join("s");
    let Some(path) = address.trim().strip_prefix("unix://").map(Path::new) else {
        return;
    };
    let inside = path.parent() == Some(dir.as_path())
        && path.file_name().is_some_and(|n| {
            n.to_str()
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_hexdigit()))
        });
    if !inside {
        tracing::warn!(
            "not removing shim socket {}: not in {}",
            path.display(),
            dir.display()
        );
        return;
    }
    use std::os::unix::fs::FileTypeExt;
    match tokio::fs::symlink_metadata(path).await {
        Ok(m) if m.file_type().is_socket() => match tokio::fs::remove_file(path).await {
            Ok(()) => tracing::warn!(
                "sandbox {sandbox_id}: shim socket {} was left behind by its shim; removed it",
                path.display()
            ),
            Err(e) => tracing::warn!("removing shim socket {}: {e}", path.display()),
        },
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_naming_a_sandbox_share_its_shim() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path();
        std::fs::write(
            bundle.join("config.json"),
            r#"{"annotations": {"io.kubernetes.cri.sandbox-id": "pod-1"}}"#,
        )
        .unwrap();
        assert_eq!(grouping(bundle, "app"), "pod-1");
        std::fs::write(bundle.join("config.json"), r#"{"process": {}}"#).unwrap();
        assert_eq!(
            grouping(bundle, "app"),
            "app",
            "no annotation: a sandbox of its own"
        );
        std::fs::remove_file(bundle.join("config.json")).unwrap();
        assert_eq!(
            grouping(bundle, "app"),
            "app",
            "no spec: a sandbox of its own"
        );
    }
}
