//! Sandbox state: its storages and the map of containers.
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::mount::{umount2, MntFlags};
use oci_spec::runtime::Spec;
use protocol::agent::Storage;
use tracing::{info, warn};

use crate::error::{AgentError, Result};
use crate::runtime::container::{self, Container};
use crate::runtime::process::Process;
use crate::runtime::stdio_connections::StdioConnections;
use crate::runtime::{cgroup, mount};
use crate::validate;

/// How often GetOOMEvent looks at the containers' memory.events.
const OOM_POLL: Duration = Duration::from_millis(500);

#[derive(Default)]
pub struct Sandbox {
    pub id: Mutex<Option<String>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids being created right now: a second create of the same id is refused.
    creating: Mutex<HashSet<String>>,
    storages: Mutex<Vec<PathBuf>>,
    oom_seen: Mutex<HashMap<String, u64>>,
    /// OOM kills recorded but not yet handed to GetOOMEvent, oldest first.
    oom_pending: Mutex<VecDeque<String>>,
    oom_recorded: tokio::sync::Notify,
    /// Stdio connections the host opened for processes it is about to create.
    pub stdio_connections: StdioConnections,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Mounts storages in order; on failure unmounts the ones already mounted.
pub fn mount_storages(storages: &[Storage]) -> Result<Vec<PathBuf>> {
    let mut done = Vec::new();
    for s in storages {
        let r = validate::path_under(&s.mount_point, protocol::GUEST_RUN_DIR)
            .and_then(|mp| validate::no_symlinks_below(&mp, protocol::GUEST_RUN_DIR).map(|()| mp))
            .map_err(AgentError::from)
            .and_then(|mp| {
                mount::mount_storage(s, &mp)
                    .map(|()| mp)
                    .map_err(AgentError::InvalidArgument)
            });
        match r {
            Ok(mp) => done.push(mp),
            Err(e) => {
                unmount_all(&done);
                return Err(e);
            }
        }
    }
    Ok(done)
}

pub fn unmount_all(points: &[PathBuf]) {
    for p in points.iter().rev() {
        if let Err(e) = umount2(p, MntFlags::MNT_DETACH) {
            if e != nix::errno::Errno::EINVAL {
                warn!("unmounting {}: {e}", p.display());
            }
        }
    }
}

impl Sandbox {
    pub fn create(&self, id: &str, storages: &[Storage]) -> Result<()> {
        validate::id("sandbox id", id)?;
        {
            let cur = lock(&self.id);
            if let Some(existing) = cur.as_ref() {
                return Err(AgentError::AlreadyExists(format!(
                    "sandbox {existing:?} already created"
                )));
            }
        }
        let mounted = mount_storages(storages)?;
        *lock(&self.id) = Some(id.to_string());
        lock(&self.storages).extend(mounted);
        info!(sandbox = id, "sandbox created");
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Arc<Container>> {
        validate::container_id(id)?;
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("container {id:?} not found")))
    }

    pub fn all(&self) -> Vec<Arc<Container>> {
        lock(&self.containers).values().cloned().collect()
    }

    pub async fn create_container(
        &self,
        id: &str,
        spec_json: &[u8],
        storages: &[Storage],
    ) -> Result<Arc<Container>> {
        // Taken first: a create refused below drops them (the host sees EOF), so none waits on.
        let conns = self.stdio_connections.take(id, "");
        validate::container_id(id)?;
        let spec: Spec = serde_json::from_slice(spec_json)
            .map_err(|e| AgentError::InvalidArgument(format!("invalid OCI spec: {e}")))?;
        {
            let containers = lock(&self.containers);
            let mut creating = lock(&self.creating);
            if containers.contains_key(id) || !creating.insert(id.to_string()) {
                return Err(AgentError::AlreadyExists(format!(
                    "container {id:?} already exists"
                )));
            }
        }
        let result = async {
            let join = self.namespaces_to_join(id, &spec)?;
            let mounted = mount_storages(storages)?;
            match Container::create(id, spec, mounted.clone(), join, conns).await {
                Ok(c) => Ok(c),
                Err(e) => {
                    unmount_all(&mounted);
                    Err(e)
                }
            }
        }
        .await;
        lock(&self.creating).remove(id);
        let c = Arc::new(result?);
        lock(&self.containers).insert(id.to_string(), c.clone());
        lock(&self.oom_seen).insert(id.to_string(), 0);
        info!(container = id, pid = c.init.pid, "container created");
        Ok(c)
    }

    /// The init of the container whose namespaces the spec of container `id` joins (a pod's
    /// container, the pod sandbox container's): it must be in this sandbox and running.
    fn namespaces_to_join(&self, id: &str, spec: &Spec) -> Result<Option<Arc<Process>>> {
        let Some(other) = container::joined_container(spec)? else {
            return Ok(None);
        };
        let not_there = |why: &str| {
            AgentError::FailedPrecondition(format!(
                "container {id:?} joins the namespaces of container {other:?}, which {why}"
            ))
        };
        let c = lock(&self.containers)
            .get(&other)
            .cloned()
            .ok_or_else(|| not_there("is not in this sandbox"))?;
        if c.init.exited().is_some() {
            return Err(not_there("has exited: its namespaces are gone"));
        }
        Ok(Some(c.init.clone()))
    }

    pub async fn remove_container(&self, id: &str, timeout: Option<Duration>) -> Result<()> {
        let c = self.get(id)?;
        // Last look at memory.events: the cgroup (and its OOM count) goes with the container.
        self.record_oom(&c);
        c.destroy(timeout).await?;
        unmount_all(&c.storages);
        lock(&self.containers).remove(id);
        lock(&self.oom_seen).remove(id);
        self.stdio_connections.forget_container(id);
        info!(container = id, "container removed");
        Ok(())
    }

    /// Records a growth of the container's oom_kill count (once per kill) for GetOOMEvent.
    pub fn record_oom(&self, c: &Container) {
        let n = cgroup::oom_kills(&c.cgroup);
        let grew = {
            let mut seen = lock(&self.oom_seen);
            let last = seen.entry(c.id.clone()).or_insert(0);
            let grew = n > *last;
            *last = (*last).max(n);
            grew
        };
        if grew {
            lock(&self.oom_pending).push_back(c.id.clone());
            self.oom_recorded.notify_one();
        }
    }

    /// Waits until some container was OOM-killed; returns its id. Besides the periodic look
    /// at every container, a container's exit and removal record kills at once, so a
    /// container removed right after its OOM kill is still reported.
    pub async fn next_oom(&self) -> String {
        loop {
            if let Some(id) = lock(&self.oom_pending).pop_front() {
                return id;
            }
            for c in self.all() {
                self.record_oom(&c);
            }
            if let Some(id) = lock(&self.oom_pending).pop_front() {
                return id;
            }
            tokio::select! {
                () = self.oom_recorded.notified() => {}
                () = tokio::time::sleep(OOM_POLL) => {}
            }
        }
    }

    /// Kills every container and unmounts every storage (DestroySandbox).
    pub async fn destroy(&self) {
        for c in self.all() {
            if let Err(e) = self.remove_container(&c.id, None).await {
                warn!(container = %c.id, "removing at sandbox destroy: {e}");
            }
        }
        nix::unistd::sync();
        let storages = std::mem::take(&mut *lock(&self.storages));
        unmount_all(&storages);
    }
}
