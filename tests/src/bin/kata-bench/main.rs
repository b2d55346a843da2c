//! kata-bench (`make bench`): start, exec, stdio and memory figures of the VM runtime, each
//! beside its reference measured in the same run (the bare VM boot, runc, the raw vsock), as
//! a table on stdout, build/bench/results.json and build/bench/cold-start.png. Never asserted.

mod memory;
mod pool;
mod raw_vsock;
mod stats;
mod timeline;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use kata_e2e::cri::{self, Cri, KATA_HANDLER};
use kata_e2e::{pids_matching, require_built, sandbox_dir, test_image, top_dir, Containerd};
use kata_shim::config::{self as shim_config, LoadRequest};
use kata_shim::vm::{Vm, VmSpec};
use serde_json::{json, Value};

use stats::{ratio, round, Samples};

const KATA: &str = kata_e2e::RUNTIME;
const RUNC: &str = "io.containerd.runc.v2";
/// Bytes per stdio and raw vsock throughput run.
const STREAM_BYTES: u64 = 64 << 20;
/// Sandboxes started together for the concurrency figure.
const CONCURRENT: usize = 10;
/// Idle sandboxes whose memory is averaged (PSS shares what they have in common).
const IDLE_SANDBOXES: usize = 3;
/// The host memory the "sandboxes per 8 GiB" figure divides.
const HOST_BUDGET_MIB: f64 = 8192.0;
/// The vsock port of the raw throughput runs (any port the guest does not serve).
const RAW_PORT: u32 = 5000;
/// Bound on one ctr call, a boot under TCG included.
const CTR_LIMIT: Duration = Duration::from_secs(180);
/// Where the probe is bind-mounted in the throughput containers.
const PROBE_IN_CONTAINER: &str = "/kata-vsock-probe";
/// How long idle sandboxes settle before their memory is read.
const IDLE_SETTLE: Duration = Duration::from_secs(3);

/// The targets of issue 16, printed beside the figures.
mod target {
    pub const COLD_OVER_FLOOR: f64 = 1.15;
    pub const FLOOR_MS: f64 = 450.0;
    pub const WARM_OVER_RUNC: f64 = 2.0;
    pub const STDIO_OF_RAW: f64 = 0.80;
    pub const BEYOND_GUEST_MIB: f64 = 40.0;
    pub const CONCURRENT_OVER_ONE: f64 = 4.0;
}

struct Bench {
    ctrd: Containerd,
    runs: usize,
    out: PathBuf,
    probe: PathBuf,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kata-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn step(what: &str) {
    eprintln!("==> {what}");
}

const USAGE: &str = "usage: kata-bench [RUNS] | kata-bench floor [RUNS] [CONFIG]";

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count =
        |a: Option<&String>| -> Result<usize> { a.map_or(Ok(7), |a| a.parse().context(USAGE)) };
    if args.first().map(String::as_str) == Some("floor") {
        // The floor alone, for kernel, initrd and QEMU option work: "before" and "after".
        let config = args.get(2).map_or_else(default_config, PathBuf::from);
        let rt = tokio::runtime::Runtime::new()?;
        let mut floor = Samples::default();
        for _ in 0..count(args.get(1))? {
            floor.push(floor_once(&rt, &config)?);
        }
        println!("floor ({}): {}", config.display(), floor.show("ms"));
        return Ok(());
    }
    let runs = count(args.first())?;
    let top = top_dir();
    let probe = top.join(format!(
        "target/{}-unknown-linux-musl/release/kata-vsock-probe",
        std::env::consts::ARCH
    ));
    require_built(std::slice::from_ref(&probe));
    let out = top.join("build/bench");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let b = Bench {
        ctrd: Containerd::start_cri("bench"),
        runs,
        out,
        probe,
    };
    b.run()
}

impl Bench {
    fn run(&self) -> Result<()> {
        step("warm-up: one run of each runtime (image unpacked, host caches filled; not counted)");
        self.ctr_run(KATA, &kata_e2e::unique_id("bench-warm"))?;
        self.ctr_run(RUNC, &kata_e2e::unique_id("bench-warm"))?;

        step(&format!(
            "floor, cold ctr run (kata) and ctr run (runc), interleaved, {} runs",
            self.runs
        ));
        let (floor, cold, runc, timelines) = self.starts()?;

        step(&format!(
            "warm ctr run (VM pool of 1), {} runs, each once a pooled VM is ready again",
            self.runs
        ));
        let warm = self.warm_starts()?;

        step(&format!(
            "CRI pod start (RunPodSandbox + CreateContainer + StartContainer), {} runs each",
            self.runs
        ));
        let (pod_kata, pod_runc) = self.pod_starts()?;

        step("exec latency and stdio throughput");
        let kata_c = self.throughput_container(KATA)?;
        let runc_c = self.throughput_container(RUNC)?;
        let exec_kata = self.exec_latency(&kata_c)?;
        let exec_runc = self.exec_latency(&runc_c)?;
        let streams = self.streams(&kata_c, &runc_c, exec_kata.median(), exec_runc.median())?;
        self.ctrd.force_remove(&kata_c);
        self.ctrd.force_remove(&runc_c);

        step(&format!("host memory of {IDLE_SANDBOXES} idle sandboxes"));
        let mem = self.idle_memory()?;

        step(&format!("{CONCURRENT} concurrent cold ctr run"));
        let concurrent = self.concurrent()?;

        let timeline = median_timeline(&timelines, &cold)?;
        let png = self.out.join("cold-start.png");
        timeline::draw(
            &timeline,
            &format!(
                "Cold ctr run --rm (kata, busybox true): the median of {} runs, {} ms; floor {} ms",
                self.runs,
                round(cold.median()),
                round(floor.median())
            ),
            &png,
        )?;

        let results = Results {
            runs: self.runs,
            floor,
            cold,
            runc,
            warm,
            pod_kata,
            pod_runc,
            exec_kata,
            exec_runc,
            streams,
            mem,
            concurrent,
            timeline,
        };
        print!("{}", results.table());
        let path = self.out.join("results.json");
        let text = serde_json::to_string_pretty(&results.json())?;
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nwrote {} and {}", path.display(), png.display());
        Ok(())
    }

    /// `ctr run --rm` of busybox `true`: wall time in ms, and when it began and ended.
    fn ctr_run(&self, runtime: &str, id: &str) -> Result<(f64, SystemTime, SystemTime)> {
        self.ctr_run_with(runtime, &[], id)
    }

    /// [`Bench::ctr_run`] with more `ctr run` flags.
    fn ctr_run_with(
        &self,
        runtime: &str,
        flags: &[&str],
        id: &str,
    ) -> Result<(f64, SystemTime, SystemTime)> {
        let image = test_image();
        let mut args = vec!["run", "--rm", "--runtime", runtime];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[&image, id, "true"]);
        let began = SystemTime::now();
        let t = Instant::now();
        let out = self.ctrd.ctr_bounded(&args, CTR_LIMIT);
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if !out.status.success() {
            bail!(
                "ctr run {id} ({runtime}): {}\ncontainerd log:\n{}",
                kata_e2e::text(&out.stderr),
                self.ctrd.log_tail(30)
            );
        }
        Ok((ms, began, SystemTime::now()))
    }

    #[allow(clippy::type_complexity)]
    fn starts(
        &self,
    ) -> Result<(
        Samples,
        Samples,
        Samples,
        Vec<(String, SystemTime, SystemTime)>,
    )> {
        let rt = tokio::runtime::Runtime::new()?;
        let (mut floor, mut cold, mut runc) =
            (Samples::default(), Samples::default(), Samples::default());
        let mut timelines = Vec::new();
        for _ in 0..self.runs {
            floor.push(floor_once(&rt, &default_config())?);
            let id = kata_e2e::unique_id("bench-cold");
            let (ms, began, ended) = self.ctr_run(KATA, &id)?;
            cold.push(ms);
            timelines.push((id, began, ended));
            runc.push(self.ctr_run(RUNC, &kata_e2e::unique_id("bench-runc"))?.0);
        }
        Ok((floor, cold, runc, timelines))
    }

    /// Warm `ctr run --rm`s under the pool configuration; a run the pool did not serve (its
    /// served count did not move) is left out and counted.
    fn warm_starts(&self) -> Result<pool::Warm> {
        let rt = tokio::runtime::Runtime::new()?;
        let config = pool::config();
        let flag = config.to_string_lossy().to_string();
        let flags = ["--runtime-config-path", flag.as_str()];
        // A fresh daemon, started by this first (cold, not counted) run.
        pool::stop(&rt)?;
        self.ctr_run_with(KATA, &flags, &kata_e2e::unique_id("bench-pool"))?;
        let status = pool::wait_ready(&rt, &config)?;
        std::thread::sleep(IDLE_SETTLE);
        let pooled_vm = pool::pooled_memory(&status)?;
        let mut runs = Samples::default();
        let mut served = 0;
        for _ in 0..self.runs {
            pool::wait_ready(&rt, &config)?;
            let before = pool::served(&rt, &config)?;
            let (ms, _, _) = self.ctr_run_with(KATA, &flags, &kata_e2e::unique_id("bench-warm"))?;
            if pool::served(&rt, &config)? > before {
                runs.push(ms);
                served += 1;
            }
        }
        pool::stop(&rt)?;
        if served == 0 {
            bail!("the pool served none of {} runs", self.runs);
        }
        Ok(pool::Warm {
            runs,
            served,
            attempts: self.runs,
            pooled_vm,
        })
    }

    fn pod_starts(&self) -> Result<(Samples, Samples)> {
        let cri = self.ctrd.cri();
        let logs = self.out.join("pod-logs");
        std::fs::create_dir_all(&logs)?;
        let (mut kata, mut runc) = (Samples::default(), Samples::default());
        for _ in 0..self.runs {
            kata.push(pod_start(&cri, &logs, KATA_HANDLER)?);
            runc.push(pod_start(&cri, &logs, "")?);
        }
        Ok((kata, runc))
    }

    /// A running container of `runtime` with the probe mounted, for exec and stdio runs.
    fn throughput_container(&self, runtime: &str) -> Result<String> {
        let id = kata_e2e::unique_id("bench-io");
        let mount = format!(
            "type=bind,src={},dst={PROBE_IN_CONTAINER},options=rbind:ro",
            self.probe.display()
        );
        let image = test_image();
        let out = self.ctrd.ctr_bounded(
            &[
                "run",
                "-d",
                "--runtime",
                runtime,
                "--mount",
                &mount,
                &image,
                &id,
                "sleep",
                "100000",
            ],
            CTR_LIMIT,
        );
        if !out.status.success() {
            bail!("ctr run -d {id}: {}", kata_e2e::text(&out.stderr));
        }
        self.ctrd.wait_status(&id, "RUNNING", CTR_LIMIT);
        Ok(id)
    }

    fn exec_latency(&self, id: &str) -> Result<Samples> {
        let mut s = Samples::default();
        for _ in 0..self.runs {
            let exec = kata_e2e::unique_id("e");
            let t = Instant::now();
            let out = self
                .ctrd
                .ctr_bounded(&["task", "exec", "--exec-id", &exec, id, "true"], CTR_LIMIT);
            s.push(t.elapsed().as_secs_f64() * 1000.0);
            if !out.status.success() {
                bail!("exec in {id}: {}", kata_e2e::text(&out.stderr));
            }
        }
        Ok(s)
    }

    /// `ctr task exec` of the probe with stdio carried as `dir` says: the wall time in ms.
    fn probe_exec(&self, id: &str, args: &[&str], stdin: Option<u64>) -> Result<f64> {
        let exec = kata_e2e::unique_id("io");
        let mut cmd = kata_e2e::bounded(self.ctrd.ctr_bin(), CTR_LIMIT);
        cmd.arg("-a")
            .arg(self.ctrd.dir().join("containerd.sock"))
            .args(["task", "exec", "--exec-id", &exec, id, PROBE_IN_CONTAINER])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let t = Instant::now();
        let mut child = cmd.spawn().context("spawning ctr task exec")?;
        let feeder = stdin.map(|bytes| {
            let mut w = child.stdin.take();
            std::thread::spawn(move || -> std::io::Result<()> {
                let buf = vec![0u8; 64 * 1024];
                let mut left = bytes;
                if let Some(w) = w.as_mut() {
                    while left > 0 {
                        let n = left.min(buf.len() as u64) as usize;
                        w.write_all(&buf[..n])?;
                        left -= n as u64;
                    }
                }
                Ok(())
            })
        });
        let mut received = 0u64;
        if let Some(mut out) = child.stdout.take() {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = out.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                received += n as u64;
            }
        }
        let status = child.wait_with_output()?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if let Some(f) = feeder {
            f.join()
                .map_err(|_| anyhow::anyhow!("stdin feeder panicked"))?
                .context("writing the exec's stdin")?;
        }
        if !status.status.success() {
            bail!("probe {args:?} in {id}: {}", kata_e2e::text(&status.stderr));
        }
        if stdin.is_none() && args.first() == Some(&"--to-stdout") && received != STREAM_BYTES {
            bail!("probe {args:?} in {id}: {received} bytes reached ctr, not {STREAM_BYTES}");
        }
        Ok(ms)
    }

    fn streams(&self, kata: &str, runc: &str, exec_kata: f64, exec_runc: f64) -> Result<Streams> {
        let bytes = STREAM_BYTES.to_string();
        let mut s = Streams::default();
        let vm_dir = PathBuf::from(sandbox_dir(kata));
        let mib = STREAM_BYTES as f64 / (1 << 20) as f64;
        // Throughput of a stdio run: its bytes over its wall time less an empty exec's.
        let rate = |wall: f64, exec: f64| mib / ((wall - exec).max(1.0) / 1000.0);
        for _ in 0..self.runs.min(5) {
            s.stdout_kata.push(rate(
                self.probe_exec(kata, &["--to-stdout", &bytes], None)?,
                exec_kata,
            ));
            s.stdout_runc.push(rate(
                self.probe_exec(runc, &["--to-stdout", &bytes], None)?,
                exec_runc,
            ));
            s.stdin_kata.push(rate(
                self.probe_exec(kata, &["--from-stdin", &bytes], Some(STREAM_BYTES))?,
                exec_kata,
            ));
            s.stdin_runc.push(rate(
                self.probe_exec(runc, &["--from-stdin", &bytes], Some(STREAM_BYTES))?,
                exec_runc,
            ));
            s.raw_to_host
                .push(mib / self.raw(kata, &vm_dir, "--to-host")?.as_secs_f64());
            s.raw_from_host
                .push(mib / self.raw(kata, &vm_dir, "--from-host")?.as_secs_f64());
        }
        Ok(s)
    }

    /// One raw vsock stream between the probe in `id` and the host, timed on the host.
    fn raw(&self, id: &str, vm_dir: &Path, dir: &str) -> Result<Duration> {
        let listener = raw_vsock::Listener::bind(vm_dir, RAW_PORT)?;
        let (port, bytes) = (RAW_PORT.to_string(), STREAM_BYTES.to_string());
        let args = [dir.to_string(), port, bytes];
        let ctrd_sock = self.ctrd.dir().join("containerd.sock");
        let (ctr, id) = (self.ctrd.ctr_bin(), id.to_string());
        let probe = std::thread::spawn(move || {
            kata_e2e::bounded(ctr, CTR_LIMIT)
                .arg("-a")
                .arg(ctrd_sock)
                .args([
                    "task",
                    "exec",
                    "--exec-id",
                    &kata_e2e::unique_id("raw"),
                    &id,
                    PROBE_IN_CONTAINER,
                ])
                .args(&args)
                .stdin(Stdio::null())
                .output()
        });
        let took = if dir == "--to-host" {
            listener.receive(STREAM_BYTES)
        } else {
            listener.send(STREAM_BYTES)
        };
        let out = probe
            .join()
            .map_err(|_| anyhow::anyhow!("probe thread panicked"))?
            .context("ctr task exec of the probe")?;
        if !out.status.success() {
            bail!(
                "probe {dir}: {}{}",
                kata_e2e::text(&out.stdout),
                kata_e2e::text(&out.stderr)
            );
        }
        took
    }

    fn idle_memory(&self) -> Result<Vec<memory::SandboxMemory>> {
        let ids: Vec<String> = (0..IDLE_SANDBOXES)
            .map(|_| kata_e2e::unique_id("bench-idle"))
            .collect();
        let _guards: Vec<_> = ids.iter().map(|id| self.ctrd.guard(id)).collect();
        for id in &ids {
            self.ctrd
                .run_detached_with_flags(id, &[], &["sleep", "100000"], CTR_LIMIT);
        }
        std::thread::sleep(IDLE_SETTLE);
        let mut all = Vec::new();
        for id in &ids {
            let id_flag = format!("-id {id}");
            let shim = pids_matching(&["containerd-shim-kata-v2", &id_flag]);
            let Some(&shim) = shim.first() else {
                bail!("no shim process for {id}");
            };
            all.push(memory::measure(Path::new(&sandbox_dir(id)), shim)?);
        }
        Ok(all)
    }

    /// Wall time of [`CONCURRENT`] cold `ctr run --rm` started together.
    fn concurrent(&self) -> Result<f64> {
        let image = test_image();
        let sock = self.ctrd.dir().join("containerd.sock");
        let t = Instant::now();
        let children: Vec<_> = (0..CONCURRENT)
            .map(|_| {
                let id = kata_e2e::unique_id("bench-par");
                kata_e2e::bounded(self.ctrd.ctr_bin(), CTR_LIMIT)
                    .arg("-a")
                    .arg(&sock)
                    .args(["run", "--rm", "--runtime", KATA, &image, &id, "true"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
            })
            .collect::<std::io::Result<_>>()?;
        let mut failed = Vec::new();
        for c in children {
            let out = c.wait_with_output()?;
            if !out.status.success() {
                failed.push(kata_e2e::text(&out.stderr));
            }
        }
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if !failed.is_empty() {
            bail!(
                "{} of {CONCURRENT} concurrent runs failed: {failed:?}",
                failed.len()
            );
        }
        Ok(ms)
    }
}

/// The runtime configuration the private containerd's shims use.
fn default_config() -> PathBuf {
    top_dir().join("build/configuration-qemu.toml")
}

/// The floor: the VM the shim would boot (same configuration and code: `Vm::boot`) to the
/// agent answering, with no shim or containerd; then shut down (not timed).
fn floor_once(rt: &tokio::runtime::Runtime, config: &Path) -> Result<f64> {
    let loaded = shim_config::load(&LoadRequest {
        config_path: Some(config.to_path_buf()),
        ..Default::default()
    })
    .with_context(|| format!("loading {}", config.display()))?;
    let spec = VmSpec::new(kata_e2e::unique_id("bench-floor"), loaded.config);
    let t = Instant::now();
    let vm = rt
        .block_on(Vm::boot(&spec))
        .context("booting the floor VM")?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    rt.block_on(vm.shutdown())
        .context("stopping the floor VM")?;
    Ok(ms)
}

/// RunPodSandbox + CreateContainer + StartContainer under `handler`, in ms; the pod is
/// removed afterwards (not timed).
fn pod_start(cri: &Cri, logs: &Path, handler: &str) -> Result<f64> {
    let config = cri::pod_config("bench", logs, &[]);
    let container = cri::container_config("c", &["sleep", "100000"]);
    let t = Instant::now();
    let pod = cri.run_pod(&config, handler)?;
    let guard = cri.guard(&pod);
    let c = cri.create_container(&pod, &container, &config)?;
    cri.start_container(&c)?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    drop(guard);
    Ok(ms)
}

/// The phases of the cold run whose total is the median.
fn median_timeline(
    runs: &[(String, SystemTime, SystemTime)],
    cold: &Samples,
) -> Result<Vec<timeline::Phase>> {
    let median = cold.median();
    let Some(i) = (0..runs.len()).min_by(|a, b| {
        (cold.0[*a] - median)
            .abs()
            .total_cmp(&(cold.0[*b] - median).abs())
    }) else {
        bail!("no cold runs");
    };
    let (id, began, ended) = &runs[i];
    let log_path = top_dir().join("build/e2e/bench/containerd.log");
    let log = std::fs::read_to_string(&log_path)
        .with_context(|| format!("reading {}", log_path.display()))?;
    timeline::phases(&log, id, *began, *ended)
}

#[derive(Default)]
struct Streams {
    stdout_kata: Samples,
    stdout_runc: Samples,
    stdin_kata: Samples,
    stdin_runc: Samples,
    raw_to_host: Samples,
    raw_from_host: Samples,
}

impl Streams {
    /// Per direction: its name, then kata's, the raw vsock's and runc's samples.
    fn directions(&self) -> [(&'static str, &Samples, &Samples, &Samples); 2] {
        [
            (
                "stdout",
                &self.stdout_kata,
                &self.raw_to_host,
                &self.stdout_runc,
            ),
            (
                "stdin",
                &self.stdin_kata,
                &self.raw_from_host,
                &self.stdin_runc,
            ),
        ]
    }

    fn json(kata: &Samples, raw: &Samples, runc: &Samples) -> Value {
        json!({
            "kata": kata.json("MiB/s"),
            "raw_vsock": raw.json("MiB/s"),
            "runc": runc.json("MiB/s"),
            "of_raw": ratio(kata.median(), raw.median()),
        })
    }
}

struct Results {
    runs: usize,
    floor: Samples,
    cold: Samples,
    runc: Samples,
    warm: pool::Warm,
    pod_kata: Samples,
    pod_runc: Samples,
    exec_kata: Samples,
    exec_runc: Samples,
    streams: Streams,
    mem: Vec<memory::SandboxMemory>,
    concurrent: f64,
    timeline: Vec<timeline::Phase>,
}

/// KiB -> MiB, averaged over sandboxes.
fn avg_mib(mem: &[memory::SandboxMemory], f: impl Fn(&memory::SandboxMemory) -> u64) -> f64 {
    let sum: u64 = mem.iter().map(f).sum();
    round(sum as f64 / mem.len().max(1) as f64 / 1024.0)
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

impl Results {
    fn memory(&self) -> Value {
        let m = &self.mem;
        let total = avg_mib(m, memory::SandboxMemory::total);
        json!({
            "sandboxes_averaged": m.len(),
            "unit": "MiB (PSS; guest RAM as resident pages)",
            "guest_ram_touched": avg_mib(m, |s| s.guest_ram),
            "tcg_translation_cache": avg_mib(m, |s| s.tcg_cache),
            "qemu_itself": avg_mib(m, |s| s.qemu),
            "helpers": avg_mib(m, |s| s.helpers),
            "shim": avg_mib(m, |s| s.shim),
            "total": total,
            "beyond_guest_ram_and_tcg": avg_mib(m, memory::SandboxMemory::beyond_guest),
            "beyond_guest_ram_and_tcg_private": avg_mib(m, |s| s.private_beyond_guest),
            "idle_sandboxes_in_8_gib": (HOST_BUDGET_MIB / total).floor(),
        })
    }

    fn json(&self) -> Value {
        let s = &self.streams;
        let one = self.cold.median();
        json!({
            "runs": self.runs,
            "floor_ms": self.floor.json("ms"),
            "cold_ctr_run_ms": self.cold.json("ms"),
            "runc_ctr_run_ms": self.runc.json("ms"),
            "cold_start_ratio": ratio(self.cold.median(), self.floor.median()),
            "cold_over_runc": ratio(self.cold.median(), self.runc.median()),
            "cri_pod_start_ms": { "kata": self.pod_kata.json("ms"), "runc": self.pod_runc.json("ms"),
                "ratio": ratio(self.pod_kata.median(), self.pod_runc.median()) },
            "exec_ms": { "kata": self.exec_kata.json("ms"), "runc": self.exec_runc.json("ms"),
                "ratio": ratio(self.exec_kata.median(), self.exec_runc.median()) },
            "stream_bytes": STREAM_BYTES,
            "stdout_mib_s": Streams::json(&s.stdout_kata, &s.raw_to_host, &s.stdout_runc),
            "stdin_mib_s": Streams::json(&s.stdin_kata, &s.raw_from_host, &s.stdin_runc),
            "idle_sandbox_memory": self.memory(),
            "concurrent": { "n": CONCURRENT, "wall_ms": round(self.concurrent), "one_ms": round(one),
                "ratio": ratio(self.concurrent, one) },
            "warm_ctr_run_ms": self.warm.runs.json("ms"),
            "warm_over_runc": ratio(self.warm.runs.median(), self.runc.median()),
            "warm_runs_served_by_the_pool": format!("{} of {}", self.warm.served, self.warm.attempts),
            "pooled_vm_memory_mib": {
                "guest_ram_touched": round(self.warm.pooled_vm.guest_ram as f64 / 1024.0),
                "tcg_translation_cache": round(self.warm.pooled_vm.tcg_cache as f64 / 1024.0),
                "qemu_helpers_and_shim": round(self.warm.pooled_vm.beyond_guest() as f64 / 1024.0),
                "total": round(self.warm.pooled_vm.total() as f64 / 1024.0),
            },
            "cold_start_timeline_ms": self.timeline.iter().map(|p| json!({
                "phase": p.name, "start": round(p.start), "end": round(p.end) })).collect::<Vec<_>>(),
            "targets": {
                "cold_start_ratio": target::COLD_OVER_FLOOR,
                "floor_ms": target::FLOOR_MS,
                "warm_over_runc": target::WARM_OVER_RUNC,
                "stdio_of_raw": target::STDIO_OF_RAW,
                "beyond_guest_ram_and_tcg_mib": target::BEYOND_GUEST_MIB,
                "concurrent_ratio": target::CONCURRENT_OVER_ONE,
            },
        })
    }

    fn table(&self) -> String {
        let s = &self.streams;
        let (floor, cold) = (self.floor.median(), self.cold.median());
        let mem = self.memory();
        let beyond = mem["beyond_guest_ram_and_tcg"].as_f64().unwrap_or(f64::NAN);
        let conc = ratio(self.concurrent, cold);
        let mut t = String::new();
        let mut row = |what: &str, kata: String, reference: String, note: String| {
            t.push_str(&format!("{what:<30} {kata:<28} {reference:<34} {note}\n"));
        };
        row(
            "figure",
            "kata (median [min-max])".into(),
            "reference (same run)".into(),
            "ratio / target".into(),
        );
        row(
            "floor: VM boot to agent",
            self.floor.show("ms"),
            "-".into(),
            format!(
                "target <= {} ms: {}",
                target::FLOOR_MS,
                verdict(floor <= target::FLOOR_MS)
            ),
        );
        row(
            "cold ctr run --rm true",
            self.cold.show("ms"),
            format!("floor {}", self.floor.show("ms")),
            format!(
                "{:.2}x floor, target <= {}x: {}",
                cold / floor,
                target::COLD_OVER_FLOOR,
                verdict(cold / floor <= target::COLD_OVER_FLOOR)
            ),
        );
        row(
            "",
            "".into(),
            format!("runc {}", self.runc.show("ms")),
            format!("{:.1}x runc", cold / self.runc.median()),
        );
        let warm = self.warm.runs.median() / self.runc.median();
        row(
            "warm ctr run (VM pool)",
            self.warm.runs.show("ms"),
            format!("runc {}", self.runc.show("ms")),
            format!(
                "{warm:.1}x runc, target <= {}x: {}",
                target::WARM_OVER_RUNC,
                verdict(warm <= target::WARM_OVER_RUNC)
            ),
        );
        row(
            "",
            format!(
                "{} of {} served by the pool",
                self.warm.served, self.warm.attempts
            ),
            format!(
                "a waiting pooled VM: {} MiB PSS",
                round(self.warm.pooled_vm.total() as f64 / 1024.0)
            ),
            format!(
                "guest RAM {} + TCG {} + QEMU, helpers, shim {}",
                round(self.warm.pooled_vm.guest_ram as f64 / 1024.0),
                round(self.warm.pooled_vm.tcg_cache as f64 / 1024.0),
                round(self.warm.pooled_vm.beyond_guest() as f64 / 1024.0)
            ),
        );
        row(
            "CRI pod start",
            self.pod_kata.show("ms"),
            format!("runc {}", self.pod_runc.show("ms")),
            format!(
                "{:.1}x runc",
                self.pod_kata.median() / self.pod_runc.median()
            ),
        );
        row(
            "exec true",
            self.exec_kata.show("ms"),
            format!("runc {}", self.exec_runc.show("ms")),
            format!(
                "{:.1}x runc",
                self.exec_kata.median() / self.exec_runc.median()
            ),
        );
        for (name, kata, raw, runc) in s.directions() {
            let of = ratio(kata.median(), raw.median());
            row(
                &format!("{name}, 64 MiB"),
                kata.show("MiB/s"),
                format!("raw vsock {}", raw.show("MiB/s")),
                format!(
                    "{:.0}% of raw, target >= {:.0}%: {}",
                    of * 100.0,
                    target::STDIO_OF_RAW * 100.0,
                    verdict(of >= target::STDIO_OF_RAW)
                ),
            );
            row(
                "",
                String::new(),
                format!("runc {}", runc.show("MiB/s")),
                String::new(),
            );
        }
        row(
            "idle sandbox, host PSS",
            format!("{} MiB", mem["total"]),
            format!("guest RAM touched {} MiB", mem["guest_ram_touched"]),
            format!("TCG cache {} MiB", mem["tcg_translation_cache"]),
        );
        row(
            "",
            format!("beyond those: {beyond} MiB"),
            format!(
                "QEMU {} + helpers {} + shim {}",
                mem["qemu_itself"], mem["helpers"], mem["shim"]
            ),
            format!(
                "target <= {} MiB: {}",
                target::BEYOND_GUEST_MIB,
                verdict(beyond <= target::BEYOND_GUEST_MIB)
            ),
        );
        row(
            "",
            format!("private: {} MiB", mem["beyond_guest_ram_and_tcg_private"]),
            "what one more sandbox adds".into(),
            String::new(),
        );
        row(
            "idle sandboxes in 8 GiB",
            format!("{}", mem["idle_sandboxes_in_8_gib"]),
            "-".into(),
            String::new(),
        );
        row(
            &format!("{CONCURRENT} concurrent ctr run"),
            format!("{} ms", round(self.concurrent)),
            format!("one cold run {} ms", round(cold)),
            format!(
                "{conc:.2}x, target <= {}x: {}",
                target::CONCURRENT_OVER_ONE,
                verdict(conc <= target::CONCURRENT_OVER_ONE)
            ),
        );
        t.push_str("\nwhere the median cold run's time goes (ms from the ctr call):\n");
        for p in &self.timeline {
            t.push_str(&format!(
                "  {:<30} {:>7.0} .. {:>7.0}  ({:.0} ms)\n",
                p.name,
                p.start,
                p.end,
                p.end - p.start
            ));
        }
        t
    }
}
