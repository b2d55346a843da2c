//! Facts about the host a VM command line needs: TSC frequency, CPU count, QEMU version.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Host TSC frequency in kHz, or None if it cannot be found. Sources, best first:
/// sysfs `tsc_freq_khz` (some kernels), the kernel log's TSC calibration lines, /proc/cpuinfo.
/// Blocking (reads files): call from spawn_blocking.
pub fn tsc_khz() -> Option<u64> {
    if let Some(khz) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return Some(khz);
    }
    if let Some(khz) = read_kmsg().as_deref().and_then(tsc_khz_from_kernel_log) {
        return Some(khz);
    }
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .as_deref()
        .and_then(tsc_khz_from_cpuinfo)
}

/// Reads the kernel ring buffer from /dev/kmsg without blocking (one record per read).
fn read_kmsg() -> Option<String> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .ok()?;
    let mut out = String::new();
    let mut buf = vec![0u8; 8192];
    // Bounded: the ring buffer is finite, but never loop forever on a chatty kernel.
    for _ in 0..100_000 {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                if rec.contains("tsc") {
                    out.push_str(&rec);
                }
            }
            // EPIPE: a record was overwritten while reading; keep going.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    Some(out)
}

/// "tsc: Refined TSC clocksource calibration: 2599.998 MHz" (preferred) or
/// "tsc: Detected 2600.000 MHz processor".
pub fn tsc_khz_from_kernel_log(log: &str) -> Option<u64> {
    let find = |marker: &str| {
        log.lines().rev().find_map(|l| {
            let rest = &l[l.find(marker)? + marker.len()..];
            mhz_to_khz(rest.split_whitespace().next()?)
        })
    };
    find("Refined TSC clocksource calibration: ").or_else(|| find("tsc: Detected "))
}

/// The first "cpu MHz : 2600.000" line of /proc/cpuinfo.
pub fn tsc_khz_from_cpuinfo(cpuinfo: &str) -> Option<u64> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k.trim() == "cpu MHz" {
            mhz_to_khz(v.trim())
        } else {
            None
        }
    })
}

fn mhz_to_khz(s: &str) -> Option<u64> {
    let mhz: f64 = s.parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// Number of online host CPUs.
pub fn cpu_count() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// Parses `qemu-system-x86_64 --version`: "QEMU emulator version 7.2.22 (Debian ...)".
pub fn parse_qemu_version(out: &str) -> Option<(u32, u32)> {
    let rest = &out[out.find("version ")? + "version ".len()..];
    let v = rest.split_whitespace().next()?;
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// Runs `<qemu> --version`.
pub async fn qemu_version(qemu: &Path) -> Result<(u32, u32), String> {
    let out = tokio::process::Command::new(qemu)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("{} --version: {e}", qemu.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_qemu_version(&text)
        .ok_or_else(|| format!("{} --version: unexpected output {text:?}", qemu.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_from_kernel_log() {
        let log = "[    0.000056] tsc: Detected 2600.000 MHz processor\n\
                   [    1.2] tsc: Refined TSC clocksource calibration: 2599.998 MHz\n";
        assert_eq!(tsc_khz_from_kernel_log(log), Some(2_599_998));
        let log = "6,12,56,-;tsc: Detected 2600.000 MHz processor\n";
        assert_eq!(tsc_khz_from_kernel_log(log), Some(2_600_000));
        assert_eq!(tsc_khz_from_kernel_log("nothing here"), None);
    }

    #[test]
    fn tsc_from_cpuinfo() {
        let c = "processor\t: 0\nmodel name\t: X\ncpu MHz\t\t: 2600.000\ncache size\t: 1\n";
        assert_eq!(tsc_khz_from_cpuinfo(c), Some(2_600_000));
        assert_eq!(tsc_khz_from_cpuinfo("processor: 0\n"), None);
    }

    #[test]
    fn qemu_versions() {
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n"),
            Some((7, 2))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 10.0.2\n"),
            Some((10, 0))
        );
        assert_eq!(parse_qemu_version("garbage"), None);
    }
}
