//! The pod's host cgroup through its life, in either driver: made before the VM boots (for
//! the systemd form, as a scope systemd starts), the shim in it while it must be, the OOM
//! killer's verdict on it, and its removal after the VM (or after a dead shim).

use std::path::PathBuf;

use super::host_cgroup::{
    return_pid, systemd_is_running, write_pid, CgroupError, CgroupsPath, Hierarchy, HostCgroup,
};
use super::systemd::{Scope, Systemd};

/// How long the VM's processes may take to leave its cgroup after the VM stopped (an
/// OOM-killed QEMU frees its guest RAM first) before what is left is killed.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The host as the pod's cgroup sees it: its hierarchies, systemd's manager where the path
/// needs it, and where the shim runs now (`/proc/self/cgroup`), to return it there.
#[derive(Debug, Clone)]
pub struct CgroupHost {
    pub hierarchy: Hierarchy,
    pub systemd: Option<Systemd>,
    pub shim_cgroup: String,
}

impl CgroupHost {
    /// This host, for `path`: systemd's manager is reached only for a systemd-form path, and
    /// such a path on a host whose PID 1 is not systemd is refused naming the mismatch.
    pub async fn detect(path: &CgroupsPath) -> Result<Self, CgroupError> {
        let systemd = match path {
            CgroupsPath::Systemd { spec, .. } => {
                if !systemd_is_running() {
                    return Err(CgroupError::SystemdNotRunning { path: spec.clone() });
                }
                Some(
                    Systemd::system()
                        .await
                        .map_err(|source| CgroupError::Systemd {
                            path: spec.clone(),
                            source: Box::new(source),
                        })?,
                )
            }
            CgroupsPath::Fs(_) => None,
        };
        blocking(move || {
            let shim_cgroup =
                std::fs::read_to_string("/proc/self/cgroup").map_err(|source| CgroupError::Io {
                    context: "read /proc/self/cgroup".into(),
                    source,
                })?;
            Ok(CgroupHost {
                hierarchy: Hierarchy::detect()?,
                systemd,
                shim_cgroup,
            })
        })
        .await
    }
}

/// The pod's cgroup, and where the shim is relative to it.
#[derive(Debug)]
pub struct PodCgroup {
    cgroup: HostCgroup,
    hierarchy: Hierarchy,
    /// The systemd scope holding it, and the manager that started it.
    scope: Option<(Systemd, Scope)>,
    /// Where the shim was before, one dir per hierarchy.
    shim_origin: Vec<PathBuf>,
    /// The shim is in the cgroup now: under `sandbox_cgroup_only`, and in a systemd scope
    /// until the VM's processes hold it (systemd starts no scope without a process, and
    /// collects an emptied one).
    shim_inside: bool,
    /// `sandbox_cgroup_only`: the shim stays until the cgroup is removed.
    shim_stays: bool,
    /// Its OOM-kill count when the VM was placed in it.
    oom_kills_before: Option<u64>,
}

impl PodCgroup {
    /// The cgroup `path` names on this host; under `sandbox_cgroup_only` the shim joins it.
    pub async fn create(path: &str, shim_joins: bool) -> Result<Self, CgroupError> {
        let parsed = CgroupsPath::parse(path)?;
        let host = CgroupHost::detect(&parsed).await?;
        Self::create_on(&host, parsed, shim_joins).await
    }

    /// [`PodCgroup::create`] on `host`. Leaves nothing behind when it fails.
    pub async fn create_on(
        host: &CgroupHost,
        path: CgroupsPath,
        shim_joins: bool,
    ) -> Result<Self, CgroupError> {
        let shim = std::process::id();
        let shim_origin = host.hierarchy.dirs_of(&host.shim_cgroup);
        let scope = match &path {
            CgroupsPath::Systemd { spec, scope } => {
                let systemd = host
                    .systemd
                    .clone()
                    .ok_or_else(|| CgroupError::SystemdNotRunning { path: spec.clone() })?;
                systemd
                    .start_scope(scope, shim)
                    .await
                    .map_err(|source| CgroupError::Systemd {
                        path: spec.clone(),
                        source: Box::new(source),
                    })?;
                Some((systemd, scope.clone()))
            }
            CgroupsPath::Fs(_) => None,
        };
        let hierarchy = host.hierarchy.clone();
        let origin = shim_origin.clone();
        let made = blocking(move || {
            let mut cgroup = HostCgroup::create(&path, &hierarchy)?;
            // In every hierarchy, also those systemd does not manage.
            if shim_joins {
                if let Err(e) = cgroup.add(shim) {
                    let _ = return_pid(&hierarchy, shim, &origin);
                    cgroup.remove();
                    return Err(e);
                }
            }
            let oom_kills_before = cgroup.oom_kills();
            Ok((cgroup, oom_kills_before))
        })
        .await;
        match made {
            Ok((cgroup, oom_kills_before)) => Ok(PodCgroup {
                cgroup,
                hierarchy: host.hierarchy.clone(),
                shim_inside: shim_joins || scope.is_some(),
                scope,
                shim_origin,
                shim_stays: shim_joins,
                oom_kills_before,
            }),
            Err(e) => {
                if let Some((systemd, scope)) = scope {
                    let hierarchy = host.hierarchy.clone();
                    let origin = shim_origin.clone();
                    let _ = blocking(move || return_pid(&hierarchy, shim, &origin)).await;
                    stop_scope(&systemd, &scope.unit).await;
                }
                Err(e)
            }
        }
    }

    /// The cgroup's directories.
    pub fn host(&self) -> &HostCgroup {
        &self.cgroup
    }

    /// Moves processes already running (a pooled VM's QEMU and helpers) into the cgroup.
    pub async fn adopt(&self, pids: Vec<u32>) -> Result<(), CgroupError> {
        let leaves = self.cgroup.leaves().to_vec();
        blocking(move || pids.iter().try_for_each(|pid| write_pid(&leaves, *pid))).await
    }

    /// The VM's processes run in the cgroup: a shim that was there only to hold a systemd
    /// scope open goes back where it was.
    pub async fn vm_started(&mut self) {
        if !self.shim_inside || self.shim_stays {
            return;
        }
        if let Err(e) = self.shim_leaves().await {
            tracing::warn!("moving the shim out of cgroup {}: {e}", self.cgroup.path());
            return;
        }
        self.shim_inside = false;
    }

    async fn shim_leaves(&self) -> Result<(), CgroupError> {
        let (hierarchy, origin) = (self.hierarchy.clone(), self.shim_origin.clone());
        blocking(move || return_pid(&hierarchy, std::process::id(), &origin)).await
    }

    /// Some(description) when the OOM killer took a process of the cgroup since the VM was
    /// placed in it.
    pub fn host_oom(&self) -> Option<String> {
        let now = self.cgroup.oom_kills()?;
        (now > self.oom_kills_before.unwrap_or(0)).then(|| {
            let limit = self
                .cgroup
                .memory_limit_mib()
                .map_or_else(|| "no limit".to_string(), |m| format!("limit {m} MiB"));
            format!(
                "pod cgroup {}, {limit}: raise the RuntimeClass overhead or the pod's memory limit",
                self.cgroup.path()
            )
        })
    }

    /// Removes the cgroup once the VM's processes are gone: the shim leaves first (a
    /// systemd stop would kill it), what is left is drained, systemd stops the scope, and
    /// the directories this shim made go.
    pub async fn remove(self) {
        let PodCgroup {
            cgroup,
            hierarchy,
            scope,
            shim_origin,
            shim_inside,
            ..
        } = self;
        let mut cgroup = match blocking(move || {
            if shim_inside {
                if let Err(e) = return_pid(&hierarchy, std::process::id(), &shim_origin) {
                    tracing::warn!("moving the shim out of the pod's cgroup: {e}");
                }
            }
            cgroup.drain(DRAIN_GRACE);
            Ok(cgroup)
        })
        .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("draining the pod's cgroup: {e}");
                return;
            }
        };
        if let Some((systemd, scope)) = &scope {
            stop_scope(systemd, &scope.unit).await;
        }
        let _ = blocking(move || {
            cgroup.remove();
            Ok(())
        })
        .await;
    }

    /// The shim's `delete` after a crash: a systemd scope is stopped (if systemd still has
    /// it), then the leaf the dead shim made is removed.
    pub async fn remove_leftover(path: &str) -> Result<(), CgroupError> {
        let parsed = CgroupsPath::parse(path)?;
        if let CgroupsPath::Systemd { scope, .. } = &parsed {
            if systemd_is_running() {
                let host = CgroupHost::detect(&parsed).await?;
                if let Some(systemd) = &host.systemd {
                    stop_scope(systemd, &scope.unit).await;
                }
            }
        }
        let shown = parsed.to_string();
        let removed =
            blocking(move || HostCgroup::remove_leftover(&parsed, &Hierarchy::detect()?)).await?;
        if removed {
            tracing::warn!("host cgroup {shown} was left behind by its shim; removed it");
        }
        Ok(())
    }
}

/// Stops a scope, logging a failure (removal is best effort; an emptied scope is already
/// gone).
async fn stop_scope(systemd: &Systemd, unit: &str) {
    match systemd.stop_unit(unit).await {
        Ok(true) => {}
        Ok(false) => tracing::debug!("systemd scope {unit} already gone"),
        Err(e) => tracing::warn!("{e}"),
    }
}

/// Runs a cgroupfs step off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CgroupError> + Send + 'static,
) -> Result<T, CgroupError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CgroupError::Io {
            context: "cgroup task".into(),
            source: std::io::Error::other(e),
        })?
}
