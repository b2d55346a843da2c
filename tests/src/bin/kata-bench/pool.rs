//! The warm start: `ctr run --rm` served by the VM pool (`[factory] vm_cache_number = 1` in a
//! copy of the configuration), each run once the pool holds a ready VM again (the wait is not
//! timed), and the host memory one waiting pooled VM costs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kata_shim::pool::{client, PoolStatus, POOLED_VM_PREFIX};

use crate::memory::{self, SandboxMemory};
use crate::stats::Samples;

/// Bound on a pooled VM becoming ready (a boot under TCG at low priority).
const READY_LIMIT: Duration = Duration::from_secs(120);

/// What the warm runs measured.
pub struct Warm {
    pub runs: Samples,
    /// Runs a pooled VM served (the others booted cold and are not in `runs`).
    pub served: usize,
    pub attempts: usize,
    /// One waiting pooled VM: QEMU, helpers and its pooled shim.
    pub pooled_vm: SandboxMemory,
}

/// The configuration copy with a pool of one.
pub fn config() -> PathBuf {
    kata_e2e::config_variant("bench-pool", "vm_cache_number", "1")
}

fn pool_of(rt: &tokio::runtime::Runtime, config: &Path) -> Result<Option<PoolStatus>> {
    let all = rt.block_on(client::status()).context("pool status")?;
    Ok(all.into_iter().find(|p| p.config == config))
}

/// Waits until `config`'s pool has a VM ready; returns its status.
pub fn wait_ready(rt: &tokio::runtime::Runtime, config: &Path) -> Result<PoolStatus> {
    let deadline = Instant::now() + READY_LIMIT;
    loop {
        if let Some(p) = pool_of(rt, config)? {
            if p.ready >= 1 {
                return Ok(p);
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "no pooled VM ready for {} within {READY_LIMIT:?}: {:?}",
                config.display(),
                pool_of(rt, config)?
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Memory of the one pooled VM waiting: its directory in the run root and its shim (the
/// first pid the daemon reports).
pub fn pooled_memory(status: &PoolStatus) -> Result<SandboxMemory> {
    let root = kata_e2e::sandbox_run_dir();
    let dir = std::fs::read_dir(root)
        .with_context(|| format!("reading {root}"))?
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(POOLED_VM_PREFIX)
                && e.file_type().is_ok_and(|t| t.is_dir())
        })
        .map(|e| e.path())
        .context("no pooled VM directory in the run root")?;
    let shim = *status.pids.first().context("no pooled shim pid")?;
    memory::measure(&dir, shim as i32)
}

/// Stops the pool daemon (and its waiting VMs).
pub fn stop(rt: &tokio::runtime::Runtime) -> Result<()> {
    rt.block_on(client::stop()).context("stopping the pool")
}

/// Served count of `config`'s pool (0 without one).
pub fn served(rt: &tokio::runtime::Runtime, config: &Path) -> Result<u64> {
    Ok(pool_of(rt, config)?.map_or(0, |p| p.served))
}
