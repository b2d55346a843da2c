//! Host memory of one idle sandbox from /proc/<pid>/smaps, split into guest RAM touched,
//! TCG's translation cache, QEMU itself, its helper daemons and the shim.

use std::path::Path;

use anyhow::{Context, Result};

/// One sandbox's host memory, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct SandboxMemory {
    /// Guest RAM QEMU has touched (resident pages of its RAM backend), counted once however
    /// many processes map it (vhost-user helpers do).
    pub guest_ram: u64,
    /// TCG's translation cache (QEMU's anonymous executable mapping); none under KVM.
    pub tcg_cache: u64,
    /// QEMU's own proportional share: everything else it maps.
    pub qemu: u64,
    /// virtiofsd and the vsock daemon, their guest RAM mappings left out.
    pub helpers: u64,
    pub shim: u64,
    /// What one more sandbox adds beyond guest RAM and TCG cache: the pages QEMU, the helpers
    /// and the shim have to themselves (shared binaries and files counted by PSS are not
    /// loaded again).
    pub private_beyond_guest: u64,
}

impl SandboxMemory {
    pub fn total(&self) -> u64 {
        self.guest_ram + self.tcg_cache + self.beyond_guest()
    }

    /// What the sandbox costs besides the guest's RAM and the TCG cache.
    pub fn beyond_guest(&self) -> u64 {
        self.qemu + self.helpers + self.shim
    }
}

/// Per mapping class, the KiB one process's smaps reports.
#[derive(Debug, Default)]
struct Split {
    guest_rss: u64,
    tcg_pss: u64,
    other_pss: u64,
    /// Private_Clean + Private_Dirty outside guest RAM and the TCG cache.
    other_private: u64,
}

/// The guest RAM backend QEMU maps (`memory-backend-memfd`, shared with vhost-user daemons).
fn is_guest_ram(header: &str) -> bool {
    header.contains("memory-backend")
}

/// An anonymous, executable and writable mapping: TCG's code buffer.
fn is_tcg_cache(header: &str) -> bool {
    // range perms offset dev inode [path]: no path, inode 0.
    let f: Vec<&str> = header.split_whitespace().collect();
    f.len() == 5 && f[1].starts_with("rwx") && f[4] == "0"
}

fn split(smaps: &str) -> Split {
    let mut s = Split::default();
    let (mut guest, mut tcg) = (false, false);
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            guest = is_guest_ram(line);
            tcg = is_tcg_cache(line);
            continue;
        }
        let kib = || {
            f.clone()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match first {
            "Rss:" if guest => s.guest_rss += kib(),
            "Pss:" if tcg => s.tcg_pss += kib(),
            "Pss:" if !guest => s.other_pss += kib(),
            "Private_Clean:" | "Private_Dirty:" if !guest && !tcg => s.other_private += kib(),
            _ => {}
        }
    }
    s
}

fn smaps_of(pid: i32) -> Result<Split> {
    let path = format!("/proc/{pid}/smaps");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(split(&text))
}

fn pid_in(file: &Path) -> Result<i32> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{}: not a pid", file.display()))
}

/// The memory of the sandbox whose VM directory is `dir` and whose shim is `shim`.
pub fn measure(dir: &Path, shim: i32) -> Result<SandboxMemory> {
    let qemu = smaps_of(pid_in(&dir.join("qemu.pid"))?)?;
    let mut m = SandboxMemory {
        guest_ram: qemu.guest_rss,
        tcg_cache: qemu.tcg_pss,
        qemu: qemu.other_pss,
        ..Default::default()
    };
    let shim = smaps_of(shim)?;
    m.shim = shim.other_pss;
    m.private_beyond_guest = qemu.other_private + shim.other_private;
    let mut helper_pids = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if name.ends_with(".pid") && name != "qemu.pid" {
            let pid = pid_in(&path)?;
            if !helper_pids.contains(&pid) {
                helper_pids.push(pid);
            }
        }
    }
    for pid in helper_pids {
        // A helper that already left (virtiofsd's parent, say) costs nothing.
        if let Ok(s) = smaps_of(pid) {
            m.helpers += s.other_pss + s.tcg_pss;
            m.private_beyond_guest += s.other_private;
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ram_tcg_and_the_rest_are_told_apart() {
        let smaps = "\
560d89a60000-560d89e67000 r--p 00000000 fe:00 10199107   /usr/bin/qemu-system-x86_64
Rss:                4124 kB
Pss:                2000 kB
Private_Clean:       100 kB
Private_Dirty:        20 kB
7f491ffff000-7f493ffff000 rw-s 00000000 00:01 11095      /memfd:memory-backend-memfd (deleted)
Rss:               51032 kB
Pss:               25516 kB
7f4940000000-7f497ffff000 rwxp 00000000 00:00 0 
Rss:               40960 kB
Pss:               40960 kB
Private_Dirty:     40960 kB
";
        let s = split(smaps);
        assert_eq!((s.guest_rss, s.tcg_pss, s.other_pss), (51032, 40960, 2000));
        assert_eq!(s.other_private, 120);
    }
}
