//! The pool daemon (`containerd-shim-kata-v2 pool`): root's, one per run root. Per
//! configuration a shim's `start` asked for, it keeps `[factory] vm_cache_number` pooled shims
//! booted while the host has memory to spare, hands each to one `start` and boots another.
//! A pooled shim lives as long as its connection to the daemon: a daemon that stops takes the
//! waiting VMs with it, never the adopted ones.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use super::{
    pool_dir, receive, send, socket_path, Adoption, PoolStatus, Reply, Request, POOLED_SHIM_ARG,
    POOLED_VM_PREFIX,
};
use crate::config::{self, LoadRequest};
use crate::hypervisor::layout::{run_root, VmPaths};
use crate::vm::launcher::MIN_HOST_OVERHEAD_MIB;

/// How long a pooled shim may take to become a pod's shim once told to.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pooled VMs of one configuration failing in a row before its pool stops refilling (until the
/// next `start` asks for it).
const MAX_FAILURES_IN_A_ROW: u32 = 3;
/// How long a stopping daemon waits for its pooled shims to tear their VMs down.
const STOP_GRACE: Duration = Duration::from_secs(60);
/// The daemon's log is cut back to nothing at start past this size.
const MAX_LOG_BYTES: u64 = 8 << 20;
/// Memory the host keeps beyond a new pooled VM: a quarter of it, and at least this.
const MIN_HOST_RESERVE_MIB: u64 = 1024;

/// A pooled shim whose VM answered, waiting for a pod.
struct Waiting {
    vm_id: String,
    shim_pid: u32,
    handoff: oneshot::Sender<(Adoption, oneshot::Sender<Reply>)>,
}

#[derive(Default)]
struct Pool {
    wanted: u32,
    ready: VecDeque<Waiting>,
    booting: HashSet<String>,
    served: u64,
    failed: u64,
    failures_in_a_row: u32,
    holding_back: Option<String>,
}

#[derive(Default)]
struct Daemon {
    pools: Mutex<HashMap<PathBuf, Pool>>,
    /// Waits on each pooled shim process, so a stopping daemon can wait for them.
    children: Mutex<Vec<JoinHandle<()>>>,
    stopping: Notify,
    /// Set once stopping: no pooled shim is started after.
    stopped: std::sync::atomic::AtomicBool,
    next_id: std::sync::atomic::AtomicU64,
}

/// Runs the daemon until a Stop request or SIGTERM, filling the pools of `configs` from the
/// start (and of every configuration a `start` asks for). A second daemon for the same run
/// root exits at once.
pub async fn run(configs: Vec<PathBuf>) -> anyhow::Result<()> {
    let dir = pool_dir();
    private_dir(&dir)?;
    let log = open_log(&dir.join("daemon.log"))?;
    crate::logging::init_to(log, false);
    let lock = std::fs::File::create(dir.join("daemon.lock")).context("pool lock file")?;
    // Held until the daemon returns.
    let _lock = match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err(_) => {
            tracing::info!("another pool daemon serves {}", dir.display());
            return Ok(());
        }
    };
    let socket = socket_path();
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("binding the pool socket {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .context("pool socket permissions")?;
    tracing::info!("pool daemon serving {}", socket.display());
    let daemon = Arc::new(Daemon::default());
    for c in configs {
        daemon.clone().refill_later(c);
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((conn, _)) => {
                    let d = daemon.clone();
                    tokio::spawn(async move { d.serve(conn).await });
                }
                Err(e) => tracing::warn!("pool socket accept: {e}"),
            },
            _ = daemon.stopping.notified() => break,
            _ = term.recv() => break,
        }
    }
    tracing::info!("pool daemon stopping");
    let _ = std::fs::remove_file(&socket);
    drop(listener);
    daemon.stop().await;
    Ok(())
}

/// `dir` as a directory only root can enter, made if missing; refused if it is a symlink or
/// someone else's.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(run_root()).context("run root")?;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    let m = std::fs::symlink_metadata(dir).with_context(|| dir.display().to_string())?;
    if !m.is_dir() || m.uid() != 0 {
        anyhow::bail!("{} is not a directory of root's", dir.display());
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod {}", dir.display()))
}

fn open_log(path: &Path) -> anyhow::Result<std::fs::File> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > MAX_LOG_BYTES) {
        let _ = std::fs::remove_file(path);
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

impl Daemon {
    async fn serve(self: Arc<Self>, conn: UnixStream) {
        // Root only, on top of the socket's mode: the pool hands out VMs and pod sockets.
        match conn.peer_cred() {
            Ok(c) if c.uid() == 0 => {}
            Ok(c) => {
                tracing::warn!("refused a pool client with uid {}", c.uid());
                return;
            }
            Err(e) => {
                tracing::warn!("pool client credentials: {e}");
                return;
            }
        }
        let (r, mut w) = conn.into_split();
        let mut r = BufReader::new(r);
        let request = match receive::<Request>(&mut r).await {
            Ok(req) => req,
            Err(e) => {
                tracing::warn!("pool request: {e}");
                return;
            }
        };
        let reply = match request {
            Request::Ready { config, vm_id } => {
                self.ready(config, vm_id, r, w).await;
                return;
            }
            Request::Take { config, adoption } => self.take(config, adoption).await,
            Request::Status => Reply::Status(self.status()),
            Request::Stop => {
                self.stopping.notify_one();
                // The reply goes once everything is stopped: the connection ends with the
                // daemon, which the client waits for.
                let _ = receive::<Request>(&mut r).await;
                return;
            }
        };
        if let Err(e) = send(&mut w, &reply).await {
            tracing::warn!("pool reply: {e}");
        }
    }

    /// A pooled shim's VM answered: it waits in its pool, its connection held by a task that
    /// hands it a pod or sees it go.
    async fn ready(
        self: Arc<Self>,
        config: PathBuf,
        vm_id: String,
        mut r: BufReader<tokio::net::unix::OwnedReadHalf>,
        mut w: tokio::net::unix::OwnedWriteHalf,
    ) {
        let (tx, rx) = oneshot::channel::<(Adoption, oneshot::Sender<Reply>)>();
        {
            let mut pools = self.lock();
            let pool = pools.entry(config.clone()).or_default();
            if !pool.booting.remove(&vm_id) {
                tracing::warn!(
                    "pooled VM {vm_id} reported ready, but this daemon did not start it"
                );
                return;
            }
            pool.failures_in_a_row = 0;
            let shim_pid = r.get_ref().as_ref().peer_cred().ok().and_then(|c| c.pid());
            pool.ready.push_back(Waiting {
                vm_id: vm_id.clone(),
                shim_pid: shim_pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                handoff: tx,
            });
            tracing::info!(
                "pooled VM {vm_id} ready for {} ({} ready)",
                config.display(),
                pool.ready.len()
            );
        }
        tokio::select! {
            // Anything from a waiting shim, or its end: it is gone.
            _ = receive::<Request>(&mut r) => {
                let mut pools = self.lock();
                if let Some(pool) = pools.get_mut(&config) {
                    pool.ready.retain(|w| w.vm_id != vm_id);
                }
                drop(pools);
                tracing::warn!("pooled VM {vm_id} went away while waiting");
                self.clone().refill_later(config);
            }
            handoff = rx => {
                let Ok((adoption, answer)) = handoff else {
                    return; // dropped by the daemon: the shim sees its connection end
                };
                let reply = match send(&mut w, &Reply::Adopt(adoption)).await {
                    Ok(()) => match tokio::time::timeout(ADOPT_TIMEOUT, receive::<Reply>(&mut r)).await {
                        Ok(Ok(reply)) => reply,
                        Ok(Err(e)) => Reply::Empty { reason: format!("pooled VM {vm_id}: {e}") },
                        Err(_) => Reply::Empty { reason: format!("pooled VM {vm_id} did not take the pod within {ADOPT_TIMEOUT:?}") },
                    },
                    Err(e) => Reply::Empty { reason: format!("pooled VM {vm_id}: {e}") },
                };
                let _ = answer.send(reply);
            }
        }
    }

    /// Hands a ready VM of `config`'s pool to the pod `adoption` describes, and refills.
    async fn take(self: Arc<Self>, config: PathBuf, adoption: Adoption) -> Reply {
        let waiting = {
            let mut pools = self.lock();
            let pool = pools.entry(config.clone()).or_default();
            // A pod asking is a reason to try a pool that failed again.
            pool.failures_in_a_row = 0;
            pool.ready.pop_front()
        };
        self.clone().refill_later(config.clone());
        let Some(w) = waiting else {
            return Reply::Empty {
                reason: format!("no pooled VM ready for {}", config.display()),
            };
        };
        let sandbox = adoption.sandbox_id.clone();
        let (tx, rx) = oneshot::channel();
        if w.handoff.send((adoption, tx)).is_err() {
            return Reply::Empty {
                reason: format!("pooled VM {} went away", w.vm_id),
            };
        }
        let reply = rx.await.unwrap_or_else(|_| Reply::Empty {
            reason: format!("pooled VM {} went away", w.vm_id),
        });
        match &reply {
            Reply::Serving { .. } => {
                if let Some(p) = self.lock().get_mut(&config) {
                    p.served += 1;
                }
                tracing::info!("pooled VM {} adopted by sandbox {sandbox}", w.vm_id);
            }
            other => tracing::warn!("pooled VM {} not adopted by {sandbox}: {other:?}", w.vm_id),
        }
        reply
    }

    fn refill_later(self: Arc<Self>, config: PathBuf) {
        tokio::spawn(async move { self.refill(config).await });
    }

    /// Boots pooled VMs until `config`'s pool holds what its file wants and memory allows;
    /// drops the surplus of a pool its file lowered.
    async fn refill(self: Arc<Self>, config: PathBuf) {
        let path = config.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            config::load(&LoadRequest {
                config_path: Some(path),
                annotations: Default::default(),
            })
        })
        .await;
        let (wanted, need_mib) = match loaded {
            Ok(Ok(l)) => (
                l.config.factory.vm_cache_number,
                u64::from(l.config.vmm.guest().default_memory) + MIN_HOST_OVERHEAD_MIB,
            ),
            Ok(Err(e)) => {
                tracing::warn!("pool for {}: {e}", config.display());
                (0, 0)
            }
            Err(e) => {
                tracing::warn!("pool for {}: {e}", config.display());
                return;
            }
        };
        let mut surplus = Vec::new();
        let mut to_start = Vec::new();
        {
            let mut pools = self.lock();
            let pool = pools.entry(config.clone()).or_default();
            pool.wanted = wanted;
            pool.holding_back = None;
            while pool.ready.len() > wanted as usize {
                surplus.extend(pool.ready.pop_back());
            }
            while pool.ready.len() + pool.booting.len() + to_start.len() < wanted as usize {
                if pool.failures_in_a_row >= MAX_FAILURES_IN_A_ROW {
                    pool.holding_back = Some(format!(
                        "{} pooled VMs in a row failed to boot (see {})",
                        pool.failures_in_a_row,
                        pool_dir().join("daemon.log").display()
                    ));
                    break;
                }
                let pending = (pool.booting.len() + to_start.len()) as u64 * need_mib;
                if let Err(why) = memory_allows(need_mib + pending) {
                    pool.holding_back = Some(why);
                    break;
                }
                let n = self
                    .next_id
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let vm_id = format!("{POOLED_VM_PREFIX}{}-{n}", std::process::id());
                pool.booting.insert(vm_id.clone());
                to_start.push(vm_id);
            }
            if let Some(why) = &pool.holding_back {
                tracing::info!("pool for {}: holding back: {why}", config.display());
            }
        }
        drop(surplus);
        for vm_id in to_start {
            self.start_pooled_shim(config.clone(), vm_id);
        }
    }

    /// Spawns a pooled shim; when it exits before its VM was ready, that counts as a failure.
    fn start_pooled_shim(self: &Arc<Self>, config: PathBuf, vm_id: String) {
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let spawned = std::env::current_exe().and_then(|exe| {
            let log = open_log(&pool_dir().join("daemon.log")).map_err(std::io::Error::other)?;
            let mut cmd = tokio::process::Command::new(exe);
            cmd.arg(POOLED_SHIM_ARG)
                .arg(&config)
                .arg(&vm_id)
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                // Signals to the daemon's group are not the pooled shim's.
                .process_group(0);
            cmd.spawn()
        });
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("starting pooled shim {vm_id}: {e}");
                self.boot_failed(&config, &vm_id);
                return;
            }
        };
        tracing::info!(
            "booting pooled VM {vm_id} for {} (pid {})",
            config.display(),
            child.id().unwrap_or(0)
        );
        let d = self.clone();
        let waiter = tokio::spawn(async move {
            let status = child.wait().await;
            let still_booting = d
                .lock()
                .get(&config)
                .is_some_and(|p| p.booting.contains(&vm_id));
            if still_booting {
                tracing::warn!("pooled shim {vm_id} exited before its VM was ready: {status:?}");
                d.boot_failed(&config, &vm_id);
                d.clone().refill_later(config);
            }
        });
        if let Ok(mut c) = self.children.lock() {
            c.retain(|h| !h.is_finished());
            c.push(waiter);
        }
    }

    fn boot_failed(&self, config: &Path, vm_id: &str) {
        if let Some(p) = self.lock().get_mut(config) {
            p.booting.remove(vm_id);
            p.failed += 1;
            p.failures_in_a_row += 1;
        }
    }

    fn status(&self) -> Vec<PoolStatus> {
        let pools = self.lock();
        let mut out: Vec<PoolStatus> = pools
            .iter()
            .map(|(config, p)| PoolStatus {
                config: config.clone(),
                wanted: p.wanted,
                ready: p.ready.len(),
                booting: p.booting.len(),
                served: p.served,
                failed: p.failed,
                pids: p
                    .ready
                    .iter()
                    .flat_map(|w| {
                        let vm = VmPaths::new(run_root().join(&w.vm_id)).recorded_pids();
                        std::iter::once(w.shim_pid).chain(vm)
                    })
                    .filter(|p| *p > 0)
                    .collect(),
                holding_back: p.holding_back.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.config.cmp(&b.config));
        out
    }

    /// Lets every waiting VM go (their shims tear them down when their connections end) and
    /// waits, bounded, for every pooled shim still booting or stopping.
    async fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let waiting: Vec<Waiting> = self
            .lock()
            .values_mut()
            .flat_map(|p| p.ready.drain(..))
            .collect();
        drop(waiting);
        let children: Vec<JoinHandle<()>> = self
            .children
            .lock()
            .map(|mut c| c.drain(..).collect())
            .unwrap_or_default();
        let all = futures::future::join_all(children);
        if tokio::time::timeout(STOP_GRACE, all).await.is_err() {
            tracing::warn!("pooled shims still running {STOP_GRACE:?} after the stop");
        }
        tracing::info!("pool daemon stopped");
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Pool>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether the host can hold `need_mib` more and keep a quarter of its memory (at least
/// [`MIN_HOST_RESERVE_MIB`]) available; Err says why not.
fn memory_allows(need_mib: u64) -> Result<(), String> {
    let meminfo =
        std::fs::read_to_string("/proc/meminfo").map_err(|e| format!("/proc/meminfo: {e}"))?;
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kib| kib / 1024)
    };
    let (Some(total), Some(available)) = (field("MemTotal:"), field("MemAvailable:")) else {
        return Err("/proc/meminfo has no MemTotal or MemAvailable".into());
    };
    let reserve = (total / 4).max(MIN_HOST_RESERVE_MIB);
    if available < need_mib + reserve {
        return Err(format!(
            "{available} MiB available; a pooled VM needs {need_mib} MiB and the host keeps \
             {reserve} MiB"
        ));
    }
    Ok(())
}
