//! cgroup v2 of the guest: one cgroup per container under /sys/fs/cgroup/kata/.
use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;
use protocol::agent::{CpuStats, IoStats, MemoryStats, PidsStats, StatsContainerResponse};

pub const ROOT: &str = "/sys/fs/cgroup";
const PARENT: &str = "kata";
const CONTROLLERS: &str = "+cpu +memory +pids +io +cpuset";

pub fn container_path(id: &str) -> PathBuf {
    Path::new(ROOT).join(PARENT).join(id)
}

/// Enables the controllers for the kata/ subtree (one at a time: a missing one must not stop
/// the others).
pub fn init_hierarchy() -> Vec<String> {
    let mut warnings = Vec::new();
    let parent = Path::new(ROOT).join(PARENT);
    if let Err(e) = fs::create_dir_all(&parent) {
        warnings.push(format!("creating {}: {e}", parent.display()));
    }
    for dir in [Path::new(ROOT), parent.as_path()] {
        for c in CONTROLLERS.split(' ') {
            if let Err(e) = fs::write(dir.join("cgroup.subtree_control"), c) {
                warnings.push(format!("enabling {c} in {}: {e}", dir.display()));
            }
        }
    }
    warnings
}

pub fn create(path: &Path) -> Result<(), String> {
    fs::create_dir(path).map_err(|e| format!("creating cgroup {}: {e}", path.display()))
}

/// The cgroup v2 files and values for OCI resources.
pub fn translate(res: &LinuxResources) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    if let Some(cpu) = res.cpu() {
        let period = cpu.period().filter(|p| *p > 0).unwrap_or(100_000);
        match cpu.quota() {
            Some(q) if q > 0 => out.push(("cpu.max", format!("{q} {period}"))),
            Some(_) => out.push(("cpu.max", format!("max {period}"))),
            None if cpu.period().is_some() => out.push(("cpu.max", format!("max {period}"))),
            None => {}
        }
        if let Some(shares) = cpu.shares().filter(|s| *s > 0) {
            out.push(("cpu.weight", shares_to_weight(shares).to_string()));
        }
        if let Some(c) = cpu.cpus().as_ref().filter(|c| !c.is_empty()) {
            out.push(("cpuset.cpus", c.clone()));
        }
        if let Some(m) = cpu.mems().as_ref().filter(|m| !m.is_empty()) {
            out.push(("cpuset.mems", m.clone()));
        }
    }
    if let Some(mem) = res.memory() {
        let limit = mem.limit();
        if let Some(l) = limit {
            out.push(("memory.max", limit_value(l)));
        }
        if let Some(r) = mem.reservation() {
            out.push(("memory.low", limit_value(r)));
        }
        // OCI swap is memory+swap; cgroup v2 wants swap alone.
        match (mem.swap(), limit) {
            (Some(s), _) if s < 0 => out.push(("memory.swap.max", "max".into())),
            (Some(s), Some(l)) if l > 0 && s >= l => {
                out.push(("memory.swap.max", (s - l).to_string()))
            }
            _ => {}
        }
    }
    if let Some(p) = res.pids() {
        out.push(("pids.max", limit_value(p.limit())));
    }
    if let Some(w) = res.block_io().as_ref().and_then(|b| b.weight()) {
        out.push(("io.weight", format!("default {}", blkio_to_io_weight(w))));
    }
    let mut out: Vec<(String, String)> = out.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    // cgroup v2 files named directly; they win over the translated values.
    for (k, v) in res.unified().iter().flatten() {
        let plain = !k.is_empty()
            && k.contains('.')
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !plain || k.starts_with("cgroup.") {
            return Err(format!("invalid unified cgroup key {k:?}"));
        }
        out.retain(|(old, _)| old != k);
        out.push((k.clone(), v.clone()));
    }
    Ok(out)
}

/// cgroup v1 blkio.weight [10, 1000] -> cgroup v2 io.weight [1, 10000].
pub fn blkio_to_io_weight(w: u16) -> u64 {
    let w = u64::from(w.clamp(10, 1000));
    1 + (w - 10) * 9999 / 990
}

fn limit_value(v: i64) -> String {
    if v > 0 {
        v.to_string()
    } else {
        "max".into()
    }
}

/// cgroup v1 cpu.shares [2, 262144] -> cgroup v2 cpu.weight [1, 10000].
pub fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

pub fn apply(path: &Path, res: &LinuxResources) -> Result<(), String> {
    for (file, value) in translate(res)? {
        let p = path.join(&file);
        if (file == "memory.swap.max" || file == "io.weight") && !p.exists() {
            continue; // kernel without swap accounting / an I/O scheduler with weights
        }
        fs::write(&p, &value).map_err(|e| format!("writing {value:?} to {}: {e}", p.display()))?;
    }
    Ok(())
}

pub fn pids(path: &Path) -> Vec<i32> {
    fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

pub fn signal_all(path: &Path, sig: nix::sys::signal::Signal) {
    for pid in pids(path) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// SIGKILLs everything in the cgroup (cgroup.kill where the kernel has it).
pub fn kill_all(path: &Path) {
    if fs::write(path.join("cgroup.kill"), "1").is_err() {
        signal_all(path, nix::sys::signal::SIGKILL);
    }
}

pub fn freeze(path: &Path, frozen: bool) -> Result<(), String> {
    fs::write(path.join("cgroup.freeze"), if frozen { "1" } else { "0" })
        .map_err(|e| format!("writing cgroup.freeze in {}: {e}", path.display()))
}

pub fn is_frozen(path: &Path) -> bool {
    key_value(&path.join("cgroup.events"), "frozen") == Some(1)
}

pub fn is_populated(path: &Path) -> bool {
    key_value(&path.join("cgroup.events"), "populated") != Some(0)
}

pub fn remove(path: &Path) -> Result<(), String> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing cgroup {}: {e}", path.display())),
    }
}

pub fn oom_kills(path: &Path) -> u64 {
    key_value(&path.join("memory.events"), "oom_kill").unwrap_or(0)
}

/// `key value` lines (cpu.stat, memory.stat, memory.events, cgroup.events).
fn key_value(file: &Path, key: &str) -> Option<u64> {
    parse_key_value(&fs::read_to_string(file).ok()?, key)
}

pub fn parse_key_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next()?.parse().ok())
            .flatten()
    })
}

fn single(file: &Path) -> u64 {
    fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

pub fn stats(path: &Path) -> StatsContainerResponse {
    let read = |f: &str| fs::read_to_string(path.join(f)).unwrap_or_default();
    let cpu_stat = read("cpu.stat");
    let kv = |t: &str, k: &str| parse_key_value(t, k).unwrap_or(0);
    let cpu = CpuStats {
        usage_usec: kv(&cpu_stat, "usage_usec"),
        user_usec: kv(&cpu_stat, "user_usec"),
        system_usec: kv(&cpu_stat, "system_usec"),
        nr_periods: kv(&cpu_stat, "nr_periods"),
        nr_throttled: kv(&cpu_stat, "nr_throttled"),
        throttled_usec: kv(&cpu_stat, "throttled_usec"),
        ..Default::default()
    };
    let mem_stat = read("memory.stat");
    let mem_events = read("memory.events");
    let memory = MemoryStats {
        usage_bytes: single(&path.join("memory.current")),
        limit_bytes: single(&path.join("memory.max")), // "max" parses to 0 = unlimited
        anon_bytes: kv(&mem_stat, "anon"),
        file_bytes: kv(&mem_stat, "file"),
        max_usage_bytes: single(&path.join("memory.peak")),
        oom_events: kv(&mem_events, "oom"),
        oom_kill_events: kv(&mem_events, "oom_kill"),
        ..Default::default()
    };
    let pids = PidsStats {
        current: single(&path.join("pids.current")),
        limit: single(&path.join("pids.max")),
        ..Default::default()
    };
    let mut io = IoStats::default();
    for line in read("io.stat").lines() {
        for field in line.split_whitespace().skip(1) {
            let Some((k, v)) = field.split_once('=') else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "rbytes" => io.read_bytes += v,
                "wbytes" => io.write_bytes += v,
                "rios" => io.read_ios += v,
                "wios" => io.write_ios += v,
                _ => {}
            }
        }
    }
    StatsContainerResponse {
        cpu: Some(cpu).into(),
        memory: Some(memory).into(),
        pids: Some(pids).into(),
        io: Some(io).into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn translation() {
        let r = res(r#"{"cpu":{"quota":50000,"period":100000,"shares":1024},
                        "memory":{"limit":268435456,"swap":536870912},
                        "pids":{"limit":100}}"#);
        let t = translate(&r).unwrap();
        let t: Vec<(&str, String)> = t.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        assert!(t.contains(&("cpu.max", "50000 100000".into())));
        assert!(t.contains(&("cpu.weight", "39".into())));
        assert!(t.contains(&("memory.max", "268435456".into())));
        assert!(t.contains(&("memory.swap.max", "268435456".into())));
        assert!(t.contains(&("pids.max", "100".into())));

        let t = translate(&res(
            r#"{"cpu":{"quota":-1},"memory":{"limit":-1,"swap":-1},"pids":{"limit":0}}"#,
        ))
        .unwrap();
        let t: Vec<(&str, String)> = t.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        assert!(t.contains(&("cpu.max", "max 100000".into())));
        assert!(t.contains(&("memory.max", "max".into())));
        assert!(t.contains(&("memory.swap.max", "max".into())));
        assert!(t.contains(&("pids.max", "max".into())));
        assert!(translate(&res("{}")).unwrap().is_empty());
        let t = translate(&res(
            r#"{"pids":{"limit":5},"blockIO":{"weight":500},"unified":{"pids.max":"7","memory.high":"1000000"}}"#,
        ))
        .unwrap();
        assert!(t.contains(&("pids.max".into(), "7".into())));
        assert!(!t.contains(&("pids.max".into(), "5".into())));
        assert!(t.contains(&("memory.high".into(), "1000000".into())));
        assert!(t.contains(&("io.weight".into(), "default 4950".into())));
        assert!(translate(&res(r#"{"unified":{"../x":"1"}}"#)).is_err());
        assert!(translate(&res(r#"{"unified":{"cgroup.procs":"1"}}"#)).is_err());
    }

    #[test]
    fn weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1), 1);
    }

    #[test]
    fn key_values() {
        let t = "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n";
        assert_eq!(parse_key_value(t, "oom_kill"), Some(1));
        assert_eq!(parse_key_value(t, "oom"), Some(2));
        assert_eq!(parse_key_value(t, "nope"), None);
    }
}
