//! Where one cold `ctr run`'s time goes, from the lines the shim and the agent log (in
//! containerd's log), and its picture drawn by gnuplot.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use kata_e2e::bounded;

/// One phase of a cold start, in ms from the `ctr run` call.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub start: f64,
    pub end: f64,
}

/// "2026-12-02T01:01:20.789071Z" -> seconds since the epoch.
fn parse_time(s: &str) -> Option<f64> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let sec = t.next()?.parse::<f64>().ok()?;
    // Days from the civil date (proleptic Gregorian), as in Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + sec)
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// The value of `key=<number>` in a log line.
fn field(line: &str, key: &str) -> Option<f64> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The phases of container `id`'s cold start, which `ctr run` began at `began` and ended at
/// `ended`, from containerd's log text.
pub fn phases(log: &str, id: &str, began: SystemTime, ended: SystemTime) -> Result<Vec<Phase>> {
    let t0 = epoch_secs(began);
    let ms = |line: &str| -> Option<f64> {
        let stamp = line.split_whitespace().next()?;
        Some((parse_time(stamp)? - t0) * 1000.0)
    };
    let (sandbox, vm) = (format!("sandbox={id}"), format!("vm={id}"));
    let ours = |l: &&str| {
        l.split_whitespace()
            .any(|t| t == id || t == sandbox || t == vm)
    };
    let lines: Vec<&str> = log.lines().filter(ours).collect();
    let at = |needle: &str| -> Result<f64> {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .and_then(|l| ms(l))
            .with_context(|| format!("no {needle:?} line for {id} in containerd's log"))
    };
    let uptime = |needle: &str| -> Result<f64> {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .and_then(|l| field(l, "uptime_ms"))
            .with_context(|| format!("no {needle:?} line with uptime_ms for {id}"))
    };
    let create = at(&format!("create {id} "))?;
    let helpers = at("helpers started")?;
    let qemu = at("QEMU started")?;
    let ready = at("VM ready")?;
    let agent_start = uptime("kata-agent starting")?;
    let agent_listen = uptime("agent listening")?;
    let created = at(&format!("created {id}"))?;
    let started = at(&format!("started {id}"))?;
    let exited = at(&format!("exited {id}"))?;
    let end = (epoch_secs(ended) - t0) * 1000.0;
    // The guest's clock starts with its kernel: what QEMU did before (loading the kernel and
    // initrd, firmware) and the host's dial after the agent listened fill the rest.
    let kernel_start = ready - agent_listen;
    let marks = [
        ("containerd + shim start", 0.0),
        ("config, cgroup, helpers", create),
        ("QEMU start (to QMP)", helpers),
        ("QEMU load + firmware + dial", qemu),
        ("guest kernel", kernel_start),
        ("agent start to listening", kernel_start + agent_start),
        ("sandbox + container create", ready),
        ("container start", created),
        ("run + exit", started),
        ("delete + teardown", exited),
    ];
    let mut out = Vec::new();
    for (i, (name, start)) in marks.iter().enumerate() {
        let end = marks.get(i + 1).map_or(end, |m| m.1);
        out.push(Phase {
            name,
            start: *start,
            end,
        });
    }
    if out.iter().any(|p| p.end < p.start - 1.0) {
        bail!("{id}: the milestones are out of order: {out:?}");
    }
    Ok(out)
}

/// Draws `phases` as a Gantt chart into `png` with gnuplot.
pub fn draw(phases: &[Phase], title: &str, png: &Path) -> Result<()> {
    let mut data = String::new();
    for p in phases {
        data.push_str(&format!("\"{}\" {:.1} {:.1}\n", p.name, p.start, p.end));
    }
    let dat = png.with_extension("dat");
    std::fs::write(&dat, data).with_context(|| format!("writing {}", dat.display()))?;
    let script = format!(
        r##"set terminal png size 1100,520 font ",11"
set output "{png}"
set title "{title}"
set xlabel "ms since ctr run was called"
set yrange [{top}:-0.6]
set grid xtics
set style fill solid 0.85 border -1
set key off
set offsets 0, graph 0.12, 0, 0
plot "{dat}" using (($2+$3)/2):0:2:3:($0-0.35):($0+0.35):ytic(1) with boxxyerror lc rgb "#3b7dd8", \
     "{dat}" using 3:0:(sprintf(" %d ms", $3-$2)) with labels left
"##,
        png = png.display(),
        dat = dat.display(),
        top = phases.len() as f64 - 0.4,
    );
    let out = bounded("gnuplot", kata_e2e::QUICK_LIMIT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .map(|mut i| i.write_all(script.as_bytes()))
                .transpose()?;
            c.wait_with_output()
        })
        .context("running gnuplot (scripts/setup-host.sh installs gnuplot-nox for `make bench`)")?;
    if !out.status.success() {
        bail!("gnuplot: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_and_fields_parse() {
        assert_eq!(parse_time("1970-01-02T00:00:01.5Z"), Some(86_401.5));
        assert_eq!(parse_time("2026-12-02T00:00:00Z"), Some(1_796_169_600.0));
        assert_eq!(field("x uptime_ms=565 version", "uptime_ms"), Some(565.0));
    }
}
