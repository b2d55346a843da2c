//! A blocking CRI client for the suites (k8s-cri over containerd's socket, every call bounded) and kubelet-like pod and container configs.

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

/// The CRI types (runtime.v1), for building requests and reading replies.
pub use k8s_cri::v1 as api;

/// Bound on one CRI call; RunPodSandbox boots a VM, which under TCG takes a few seconds.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound on connecting to the socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the CRI plugin becoming ready (runtime and CNI network) after containerd answers.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The runtime handler the shipped containerd snippet names for this runtime.
pub const KATA_HANDLER: &str = "kata";
/// The pod annotation containerd routes to its runtime handler named `untrusted`.
pub const UNTRUSTED_WORKLOAD: &str = "io.kubernetes.cri.untrusted-workload";

/// A CRI runtime-service client; each method is one RPC that fails after [`CALL_TIMEOUT`].
pub struct Cri {
    // Declared before the runtime that drives it, so it is dropped first.
    client: RuntimeServiceClient<Channel>,
    rt: tokio::runtime::Runtime,
    /// containerd's log, next to its socket.
    log: PathBuf,
}

impl Cri {
    /// Connects to the CRI service on containerd's socket.
    pub fn connect(socket: &Path) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the CRI client's runtime")?;
        let path = socket.to_path_buf();
        // The URI is required by tonic but unused: the connector dials the socket.
        let endpoint = Endpoint::from_static("http://localhost").connect_timeout(CONNECT_TIMEOUT);
        let connector = tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        let channel = rt
            .block_on(bounded(
                CONNECT_TIMEOUT,
                endpoint.connect_with_connector(connector),
            ))
            .with_context(|| format!("connecting to {}", socket.display()))?
            .with_context(|| format!("connecting to {}", socket.display()))?;
        Ok(Cri {
            client: RuntimeServiceClient::new(channel),
            rt,
            log: socket.with_file_name("containerd.log"),
        })
    }

    /// Runs one RPC on a clone of the client (clones share the connection), bounded.
    fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let fut = f(self.client.clone());
        match self.rt.block_on(bounded(CALL_TIMEOUT, fut)) {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => bail!("CRI {what}: {:?}: {}", status.code(), status.message()),
            Err(e) => Err(e).context(format!("CRI {what}")),
        }
    }

    /// Waits (bounded) until the CRI plugin answers and reports both RuntimeReady and
    /// NetworkReady (the CNI configuration loaded).
    pub fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let last = match self.status() {
                Ok(s) => {
                    let conditions = s.status.map(|s| s.conditions).unwrap_or_default();
                    let ready = |t: &str| conditions.iter().any(|c| c.r#type == t && c.status);
                    if ready("RuntimeReady") && ready("NetworkReady") {
                        return Ok(());
                    }
                    format!("conditions {conditions:?}")
                }
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("CRI not ready within {READY_TIMEOUT:?}: {last}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The runtime's name and version.
    pub fn version(&self) -> Result<api::VersionResponse> {
        self.call("Version", |mut c| async move {
            c.version(api::VersionRequest {
                version: "v1".into(),
            })
            .await
        })
    }

    /// The runtime's conditions.
    pub fn status(&self) -> Result<api::StatusResponse> {
        self.call("Status", |mut c| async move {
            c.status(api::StatusRequest { verbose: false }).await
        })
    }

    /// RunPodSandbox under a runtime handler ("" = containerd's default); returns its id.
    pub fn run_pod(&self, config: &api::PodSandboxConfig, handler: &str) -> Result<String> {
        let req = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        self.call("RunPodSandbox", |mut c| async move {
            c.run_pod_sandbox(req).await
        })
        .map(|r| r.pod_sandbox_id)
    }

    /// The pod's status with containerd's verbose info (its runtime, spec, pid ...).
    pub fn pod_status(&self, pod: &str) -> Result<api::PodSandboxStatusResponse> {
        let req = api::PodSandboxStatusRequest {
            pod_sandbox_id: pod.to_string(),
            verbose: true,
        };
        self.call("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(req).await
        })
    }

    /// The ids of the pods containerd lists.
    pub fn list_pods(&self) -> Result<Vec<String>> {
        self.call("ListPodSandbox", |mut c| async move {
            c.list_pod_sandbox(api::ListPodSandboxRequest::default())
                .await
        })
        .map(|r| r.items.into_iter().map(|p| p.id).collect())
    }

    pub fn stop_pod(&self, pod: &str) -> Result<()> {
        let req = api::StopPodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        };
        self.call("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(req).await
        })
        .map(drop)
    }

    pub fn remove_pod(&self, pod: &str) -> Result<()> {
        let req = api::RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        };
        self.call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(req).await
        })
        .map(drop)
    }

    /// CreateContainer in a pod (`pod_config` as given to RunPodSandbox); returns its id.
    pub fn create_container(
        &self,
        pod: &str,
        config: &api::ContainerConfig,
        pod_config: &api::PodSandboxConfig,
    ) -> Result<String> {
        let req = api::CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        };
        self.call("CreateContainer", |mut c| async move {
            c.create_container(req).await
        })
        .map(|r| r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        let req = api::StartContainerRequest {
            container_id: id.to_string(),
        };
        self.call("StartContainer", |mut c| async move {
            c.start_container(req).await
        })
        .map(drop)
    }

    /// StopContainer: SIGTERM (the image's stop signal), SIGKILL after `grace_secs`.
    pub fn stop_container(&self, id: &str, grace_secs: i64) -> Result<()> {
        let req = api::StopContainerRequest {
            container_id: id.to_string(),
            timeout: grace_secs,
        };
        self.call("StopContainer", |mut c| async move {
            c.stop_container(req).await
        })
        .map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        let req = api::RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.call("RemoveContainer", |mut c| async move {
            c.remove_container(req).await
        })
        .map(drop)
    }

    /// UpdateContainerResources with `linux` (what kubelet sends on an in-place resize).
    pub fn update_container_resources(
        &self,
        id: &str,
        linux: api::LinuxContainerResources,
    ) -> Result<()> {
        let req = api::UpdateContainerResourcesRequest {
            container_id: id.to_string(),
            linux: Some(linux),
            ..Default::default()
        };
        self.call("UpdateContainerResources", |mut c| async move {
            c.update_container_resources(req).await
        })
        .map(drop)
    }

    pub fn container_status(&self, id: &str) -> Result<api::ContainerStatus> {
        let req = api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        self.call("ContainerStatus", |mut c| async move {
            c.container_status(req).await
        })?
        .status
        .context("ContainerStatus: reply without a status")
    }

    /// ExecSync `cmd` in a container; the runtime kills it after `timeout_secs`.
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_secs: i64,
    ) -> Result<api::ExecSyncResponse> {
        let req = api::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_secs,
        };
        self.call("ExecSync", |mut c| async move { c.exec_sync(req).await })
    }

    /// ExecSync `cmd` (each run bounded by `timeout_secs`) until it exits 0 with `want` in its
    /// stdout, for at most `within` (a server in the container may still be starting); panics
    /// with the last answer.
    pub fn exec_until(
        &self,
        id: &str,
        cmd: &[&str],
        want: &str,
        timeout_secs: i64,
        within: Duration,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let out = self.exec_sync(id, cmd, timeout_secs).expect("ExecSync");
            let stdout = crate::text(&out.stdout);
            if out.exit_code == 0 && stdout.contains(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{cmd:?} in {id} did not print {want:?} within {within:?}: exit {}, stdout {stdout:?}, stderr {:?}",
                out.exit_code,
                crate::text(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `sh -c script` in a container through ExecSync (bounded by `timeout_secs`); it must
    /// exit 0. Returns its trimmed stdout.
    pub fn sh(&self, id: &str, script: &str, timeout_secs: i64) -> String {
        let out = self
            .exec_sync(id, &["sh", "-c", script], timeout_secs)
            .expect("ExecSync");
        assert_eq!(
            out.exit_code,
            0,
            "{script:?} in {id}: stdout {:?} stderr {:?}",
            crate::text(&out.stdout),
            crate::text(&out.stderr)
        );
        crate::text(&out.stdout).trim().to_string()
    }

    /// RunPodSandbox that must fail: returns its error. A pod that ran anyway is removed and
    /// the test panics.
    pub fn run_pod_error(&self, config: &api::PodSandboxConfig, handler: &str) -> String {
        match self.run_pod(config, handler) {
            Ok(id) => {
                let _guard = self.guard(&id);
                panic!("RunPodSandbox succeeded where it must fail (pod {id})");
            }
            Err(e) => format!("{e:#}"),
        }
    }

    pub fn container_stats(&self, id: &str) -> Result<api::ContainerStats> {
        let req = api::ContainerStatsRequest {
            container_id: id.to_string(),
        };
        self.call("ContainerStats", |mut c| async move {
            c.container_stats(req).await
        })?
        .stats
        .context("ContainerStats: reply without stats")
    }

    /// PortForward: the streaming URL containerd hands out for `port` of `pod`.
    pub fn port_forward(&self, pod: &str, port: i32) -> Result<String> {
        let req = api::PortForwardRequest {
            pod_sandbox_id: pod.to_string(),
            port: vec![port],
        };
        self.call(
            "PortForward",
            |mut c| async move { c.port_forward(req).await },
        )
        .map(|r| r.url)
    }

    /// The path of the pod's network namespace, from its verbose status (the sandbox's runtime
    /// spec).
    pub fn pod_netns(&self, pod: &str) -> Result<String> {
        let status = self.pod_status(pod)?;
        let info: serde_json::Value = status
            .info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or_default();
        info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["type"] == "network"))
            .and_then(|n| n["path"].as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("pod {pod}: no network namespace path: {info}"))
    }

    /// Stops and removes the pod when dropped, so a failing test does not leave its VM
    /// behind (after a test that removed it, a no-op).
    pub fn guard(&self, pod: &str) -> PodGuard<'_> {
        PodGuard {
            cri: self,
            pod: pod.to_string(),
        }
    }
}

/// `fut` bounded by `limit`, with an error naming the limit.
async fn bounded<F: Future>(limit: Duration, fut: F) -> Result<F::Output> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {limit:?}"))
}

/// See [`Cri::guard`].
pub struct PodGuard<'a> {
    cri: &'a Cri,
    pod: String,
}

impl PodGuard<'_> {
    /// StopPodSandbox and RemovePodSandbox (each must succeed), then asserts the pod left
    /// nothing behind within `timeout` (see [`crate::leftovers`]).
    pub fn remove_leaving_nothing(self, timeout: Duration) {
        let (cri, pod) = (self.cri, self.pod.clone());
        cri.stop_pod(&pod).expect("StopPodSandbox");
        cri.remove_pod(&pod).expect("RemovePodSandbox");
        let log = cri.log.clone();
        drop(self);
        let left = crate::wait_clean(&pod, timeout);
        assert!(left.is_empty(), "{pod} left things behind: {left:#?}");
        crate::assert_shim_tore_down(&log, &pod);
    }
}

impl Drop for PodGuard<'_> {
    fn drop(&mut self) {
        // A pod already removed: StopPodSandbox says NotFound, RemovePodSandbox succeeds.
        let _ = self.cri.stop_pod(&self.pod);
        let _ = self.cri.remove_pod(&self.pod);
    }
}

/// The 64-hex-digit ids (containerd's sandbox and container ids) a message names.
pub fn ids_in(message: &str) -> Vec<String> {
    message
        .split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() == 64)
        .map(str::to_string)
        .collect()
}

/// A pod config as kubelet writes one (own network namespace from CNI, PID namespace per
/// container, IPC per pod), named `name` with a fresh uid, logging under `log_dir`, plus
/// `annotations`.
pub fn pod_config(
    name: &str,
    log_dir: &Path,
    annotations: &[(&str, &str)],
) -> api::PodSandboxConfig {
    let uid = crate::unique_id(name);
    let labels = HashMap::from([
        ("io.kubernetes.pod.name".to_string(), name.to_string()),
        (
            "io.kubernetes.pod.namespace".to_string(),
            "default".to_string(),
        ),
        ("io.kubernetes.pod.uid".to_string(), uid.clone()),
    ]);
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.to_string(),
            uid,
            namespace: "default".to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: log_dir.to_string_lossy().to_string(),
        labels,
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        linux: Some(api::LinuxPodSandboxConfig {
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container of the test image running `cmd`, logging to `<name>.log` in its pod's log
/// directory (see [`log_path`]).
pub fn container_config(name: &str, cmd: &[&str]) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: crate::test_image(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(api::LinuxContainerConfig {
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Where CRI writes the log of a container made by [`container_config`].
pub fn log_path(pod: &api::PodSandboxConfig, container: &api::ContainerConfig) -> PathBuf {
    Path::new(&pod.log_directory).join(&container.log_path)
}

/// What kubelet asks for a pod without hostNetwork/hostPID/hostIPC/shareProcessNamespace.
fn kubelet_namespaces() -> api::NamespaceOption {
    api::NamespaceOption {
        network: api::NamespaceMode::Pod as i32,
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}
