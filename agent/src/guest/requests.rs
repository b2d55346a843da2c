//! Guest-wide requests: details, CPU/memory onlining, memory probe, CopyFile.
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use protocol::agent::{CopyFileRequest, GuestDetailsResponse};

use crate::error::{AgentError, Result};
use crate::validate;

const MEM_BLOCK_SIZE: &str = "/sys/devices/system/memory/block_size_bytes";
const MEM_PROBE: &str = "/sys/devices/system/memory/probe";
const CPU_DIR: &str = "/sys/devices/system/cpu";
const MEM_DIR: &str = "/sys/devices/system/memory";
/// Largest file CopyFile accepts.
const MAX_COPY_SIZE: i64 = 256 << 20;

pub fn details(listen_uptime_ms: u64) -> GuestDetailsResponse {
    let uts = nix::sys::utsname::uname().ok();
    GuestDetailsResponse {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: uts
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        arch: std::env::consts::ARCH.to_string(),
        mem_block_size_bytes: fs::read_to_string(MEM_BLOCK_SIZE)
            .ok()
            .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0),
        support_mem_hotplug_probe: Path::new(MEM_PROBE).exists(),
        listen_uptime_ms,
        agent_rss_bytes: rss_bytes(),
        ..Default::default()
    }
}

/// Resident set size of the agent, from /proc/self/statm (pages).
pub fn rss_bytes() -> u64 {
    let pages: u64 = fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(4096) as u64
}

/// Onlines offline CPUs (up to `nb_cpus`, 0 = all) and, unless cpu_only, memory blocks.
pub fn online_cpu_mem(nb_cpus: u32, cpu_only: bool) -> Result<()> {
    let onlined = online_in(CPU_DIR, "cpu", nb_cpus as usize)?;
    if nb_cpus > 0 && onlined < nb_cpus as usize {
        return Err(AgentError::FailedPrecondition(format!(
            "only {onlined} of {nb_cpus} CPUs could be onlined"
        )));
    }
    if !cpu_only {
        online_in(MEM_DIR, "memory", 0)?;
    }
    Ok(())
}

fn online_in(dir: &str, prefix: &str, max: usize) -> Result<usize> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name
            .strip_prefix(prefix)
            .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let online = e.path().join("online");
        if fs::read_to_string(&online).is_ok_and(|s| s.trim() == "0") {
            fs::write(&online, "1").map_err(|err| {
                AgentError::Internal(format!("onlining {}: {err}", online.display()))
            })?;
            n += 1;
            if max > 0 && n >= max {
                break;
            }
        }
    }
    Ok(n)
}

pub fn mem_probe(addrs: &[u64]) -> Result<()> {
    for a in addrs {
        fs::write(MEM_PROBE, format!("{a:#x}"))
            .map_err(|e| AgentError::Internal(format!("probing memory at {a:#x}: {e}")))?;
    }
    Ok(())
}

/// Writes one chunk of a file under GUEST_RUN_DIR (creating parents with dir_mode).
pub fn copy_file(req: &CopyFileRequest) -> Result<()> {
    let path = validate::path_under(&req.path, protocol::GUEST_RUN_DIR)?;
    if req.offset < 0 || req.file_size < 0 || req.file_size > MAX_COPY_SIZE {
        return Err(AgentError::InvalidArgument(format!(
            "invalid offset {} / file size {} for {}",
            req.offset,
            req.file_size,
            path.display()
        )));
    }
    if req.offset + req.data.len() as i64 > req.file_size {
        return Err(AgentError::InvalidArgument(format!(
            "chunk at offset {} with {} bytes exceeds file size {}",
            req.offset,
            req.data.len(),
            req.file_size
        )));
    }
    let err = |what: &str, e: std::io::Error| {
        AgentError::Internal(format!("{what} {}: {e}", path.display()))
    };
    // A symlink planted under the run dir (e.g. in the shared directory) must not redirect
    // the write elsewhere in the guest.
    validate::no_symlinks_below(&path, protocol::GUEST_RUN_DIR)?;
    if let Some(parent) = path.parent() {
        if !parent.exists() {
            fs::create_dir_all(parent).map_err(|e| err("creating parents of", e))?;
            let mode = if req.dir_mode == 0 {
                0o750
            } else {
                req.dir_mode & 0o7777
            };
            fs::set_permissions(parent, fs::Permissions::from_mode(mode))
                .map_err(|e| err("chmod parent of", e))?;
        }
    }
    let mode = req.file_mode & 0o7777;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(req.offset == 0)
        .mode(if mode == 0 { 0o644 } else { mode })
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| err("opening", e))?;
    f.seek(SeekFrom::Start(req.offset as u64))
        .map_err(|e| err("seeking in", e))?;
    f.write_all(&req.data).map_err(|e| err("writing", e))?;
    // Through the open file: the path itself is never followed again.
    if mode != 0 {
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| err("chmod", e))?;
    }
    std::os::unix::fs::fchown(&f, Some(req.uid), Some(req.gid)).map_err(|e| err("chown", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_file_rejects_paths_outside_run_dir() {
        let req = CopyFileRequest {
            path: "/etc/passwd".into(),
            file_size: 1,
            data: b"x".to_vec(),
            ..Default::default()
        };
        let e = copy_file(&req).unwrap_err().to_string();
        assert!(e.contains("must lie under /run/kata-containers"), "{e}");
        let req = CopyFileRequest {
            path: "/run/kata-containers/../../etc/x".into(),
            ..Default::default()
        };
        assert!(copy_file(&req).is_err());
    }

    #[test]
    fn rss_is_nonzero() {
        assert!(rss_bytes() > 0);
    }
}
