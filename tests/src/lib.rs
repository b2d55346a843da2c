//! Shared harness for the end-to-end suites: a private containerd per test binary (started
//! through `scripts/containerd.sh`, the same script `make demo` uses), optionally with its CRI
//! plugin (driven through [`cri`]), the locally built busybox image, `ctr` drivers, and checks
//! that a sandbox left nothing behind.
//!
//! Nothing here is faked: a missing part (containerd, QEMU, the shim, the guest) fails the
//! test with a message saying what to build; there is no skip path.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod agent_rpc;
pub mod cri;

/// The runtime name containerd maps to our `containerd-shim-kata-v2` binary.
pub const RUNTIME: &str = "io.containerd.kata.v2";
/// Bound on any one `ctr` call of [`Containerd::ctr`] (a VM boot under TCG included); calls
/// that must answer sooner use [`Containerd::ctr_bounded`].
pub const CTR_CALL_LIMIT: Duration = Duration::from_secs(300);
/// Where the shim keeps each sandbox's VM, helpers and sockets when nothing else says (the
/// shim's `DEFAULT_RUN_ROOT`).
const DEFAULT_SANDBOX_RUN_DIR: &str = "/run/kata-containers";

/// Where the shim under test keeps each sandbox's VM, helpers and sockets, as it decides:
/// `$KATA_RS_RUN_DIR` (the shims inherit the suite's environment through containerd), else
/// `[runtime] run_dir` of build/configuration-qemu.toml, else the default.
pub fn sandbox_run_dir() -> &'static str {
    static DIR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(d) = std::env::var("KATA_RS_RUN_DIR") {
            if !d.is_empty() {
                return d;
            }
        }
        let config = top_dir().join("build/configuration-qemu.toml");
        std::fs::read_to_string(config)
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let v = l.trim().strip_prefix("run_dir")?.trim().strip_prefix('=')?;
                    Some(v.trim().trim_matches('"').to_string())
                })
            })
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| DEFAULT_SANDBOX_RUN_DIR.to_string())
    })
}

/// The directory of sandbox `id` under [`sandbox_run_dir`].
pub fn sandbox_dir(id: &str) -> String {
    format!("{}/{id}", sandbox_run_dir())
}

/// Bound on a harness script (containerd start-up with image builds, install).
pub const SCRIPT_LIMIT: Duration = Duration::from_secs(600);
/// Bound on a quick host command (uname, kill, sed, a config check).
pub const QUICK_LIMIT: Duration = Duration::from_secs(60);

/// `program` under timeout(1): killed (SIGTERM, then SIGKILL 5 s later) after `limit`, so a
/// regression that hangs it fails the test (exit 124) instead of hanging the suite.
pub fn bounded(program: impl AsRef<std::ffi::OsStr>, limit: Duration) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", &limit.as_secs().max(1).to_string()])
        .arg(program);
    cmd
}

/// The checkout this test binary was built from.
pub fn top_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

fn scripts() -> PathBuf {
    top_dir().join("scripts")
}

/// The image every suite runs, as named in scripts/lib.sh.
pub fn test_image() -> String {
    shell_var("TEST_IMAGE")
        .unwrap_or_else(|e| panic!("reading TEST_IMAGE from scripts/lib.sh: {e:#}"))
}

/// The in-guest netfilter image (busybox plus Debian's iptables), as named in scripts/lib.sh;
/// import it with [`Containerd::import_netfilter_image`].
pub fn netfilter_image() -> String {
    shell_var("NETFILTER_IMAGE")
        .unwrap_or_else(|e| panic!("reading NETFILTER_IMAGE from scripts/lib.sh: {e:#}"))
}

/// Reads one variable defined by scripts/lib.sh, the one source of shared paths and names.
pub fn shell_var(name: &str) -> Result<String> {
    let lib = scripts().join("lib.sh");
    let out = bounded("bash", QUICK_LIMIT)
        .arg("-c")
        .arg(format!(". '{}' && printf %s \"${name}\"", lib.display()))
        .output()
        .with_context(|| format!("sourcing {}", lib.display()))?;
    let v = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() || v.is_empty() {
        bail!("{name} is not set by {}", lib.display());
    }
    Ok(v)
}

/// Fails (never skips) when a part the suite needs was not built.
pub fn require_built(paths: &[PathBuf]) {
    let missing: Vec<String> = paths
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "end-to-end parts missing: {missing:?}; build them with `make build guest` (or run `make e2e`)"
    );
}

/// A private containerd for one test binary; stopped on drop.
pub struct Containerd {
    dir: PathBuf,
    /// containerd and ctr binaries; `None` = the host's (on PATH).
    bin_dir: Option<PathBuf>,
    /// With the CRI plugin, its runtime handlers, CNI network and sandbox image.
    cri: bool,
    /// Extra environment for scripts/containerd.sh (e.g. `KATA_CONF_FILE`).
    env: Vec<(String, String)>,
}

impl Containerd {
    /// Starts (or reuses) a private containerd (the host's) under build/e2e/<name> and
    /// imports the image.
    pub fn start(name: &str) -> Self {
        Self::start_with(name, None, false, &[])
    }

    /// Like [`Containerd::start`] with containerd 2.x, unpacked by scripts/setup-host.sh.
    pub fn start_v2(name: &str) -> Self {
        Self::start_with(name, Some(containerd2_bin_dir()), false, &[])
    }

    /// Like [`Containerd::start`] with the CRI plugin (`CONTAINERD_CRI=1` in
    /// scripts/containerd.sh); drive it with [`Containerd::cri`].
    pub fn start_cri(name: &str) -> Self {
        Self::start_with(name, None, true, &[])
    }

    /// Like [`Containerd::start_cri`] with containerd 2.x.
    pub fn start_cri_v2(name: &str) -> Self {
        Self::start_with(name, Some(containerd2_bin_dir()), true, &[])
    }

    /// A CRI containerd (2.x when `v2`) whose scripts/containerd.sh runs with `env` too, e.g.
    /// `KATA_CONF_FILE` (the handlers' runtime configuration) or `CRI_CNI_EXTRA_PLUGIN`.
    /// Give it a `name` of its own: a running containerd of that name is reused as it is.
    pub fn start_cri_env(name: &str, v2: bool, env: &[(&str, &str)]) -> Self {
        let bin_dir = v2.then(containerd2_bin_dir);
        Self::start_with(name, bin_dir, true, env)
    }

    fn start_with(name: &str, bin_dir: Option<PathBuf>, cri: bool, env: &[(&str, &str)]) -> Self {
        let top = top_dir();
        require_built(&[
            top.join("target/release/containerd-shim-kata-v2"),
            top.join("build/configuration-qemu.toml"),
        ]);
        let dir = top.join("build/e2e").join(name);
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let c = Containerd {
            dir,
            bin_dir,
            cri,
            env,
        };
        {
            // Tests of one binary may share a containerd and run in parallel: count users,
            // so the last one out stops it.
            let mut users = USERS.lock().unwrap_or_else(|p| p.into_inner());
            c.script(&["start"])
                .expect("starting the private containerd");
            *users.entry(c.dir.clone()).or_insert(0) += 1;
        }
        c.script(&["import-image"])
            .expect("importing the test image");
        c
    }

    /// Builds (once) and imports the [`netfilter_image`].
    pub fn import_netfilter_image(&self) {
        self.script(&["import-netfilter-image"])
            .expect("importing the netfilter image");
    }

    /// This containerd's directory (root, state, socket, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A CRI client on this containerd's socket, once CRI reports the runtime and the network
    /// ready (a containerd started with [`Containerd::start_cri`]).
    pub fn cri(&self) -> cri::Cri {
        assert!(
            self.cri,
            "containerd {} runs without CRI",
            self.dir.display()
        );
        cri::Cri::connect(&self.dir.join("containerd.sock"))
            .and_then(|c| c.wait_ready().map(|()| c))
            .unwrap_or_else(|e| panic!("CRI: {e:#}\ncontainerd log:\n{}", self.log_tail(40)))
    }

    /// The ctr binary of this containerd.
    pub fn ctr_bin(&self) -> PathBuf {
        match &self.bin_dir {
            Some(d) => d.join("ctr"),
            None => PathBuf::from("ctr"),
        }
    }

    fn script(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = bounded("bash", SCRIPT_LIMIT);
        cmd.arg(scripts().join("containerd.sh"))
            .args(args)
            .env("CONTAINERD_DIR", &self.dir);
        if let Some(d) = &self.bin_dir {
            cmd.env("CONTAINERD_BIN", d.join("containerd"))
                .env("CTR_BIN", d.join("ctr"));
        }
        if self.cri {
            cmd.env("CONTAINERD_CRI", "1");
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .context("running scripts/containerd.sh")?;
        if !out.status.success() {
            bail!("containerd.sh {args:?}: {}", text(&out.stderr));
        }
        Ok(out)
    }

    /// Stops containerd and starts it again on the same state (its shims, and their VMs,
    /// keep running meanwhile); `between` runs while it is down.
    pub fn restart(&self, between: impl FnOnce()) {
        self.script(&["stop"])
            .expect("stopping the private containerd");
        between();
        self.script(&["start"])
            .expect("starting the private containerd again");
    }

    /// `ctr events` from now on; [`Events::stop`] returns what it printed.
    pub fn events(&self) -> Events {
        let sock = self.log_path().with_file_name("containerd.sock");
        // Bounded in case the test never stops it.
        let child = bounded(self.ctr_bin(), CTR_CALL_LIMIT)
            .args(["-a", &sock.to_string_lossy(), "events"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr events");
        Events(child)
    }

    /// Fails unless sandbox `id` left nothing behind within `timeout` (see [`leftovers`]) and
    /// it was the shim that tore it down (see [`assert_shim_tore_down`]).
    pub fn assert_left_nothing(&self, id: &str, timeout: Duration) {
        let left = wait_clean(id, timeout);
        assert!(
            left.is_empty(),
            "sandbox {id} left things behind: {left:#?}\ncontainerd log:\n{}",
            self.log_tail(30)
        );
        assert_shim_tore_down(&self.log_path(), id);
    }

    /// containerd's own log: the shim's and the guest's lines end up here.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// The tail of containerd's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `ctr` against this containerd with stdin closed.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_with_stdin(args, None)
    }

    /// `ctr` with the given bytes on stdin (`None` = no stdin), killed after
    /// [`CTR_CALL_LIMIT`] so that no call, clean-up guards' included, can hang a suite.
    pub fn ctr_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = self.ctr_command(args, CTR_CALL_LIMIT);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("spawning ctr");
        if let Some(data) = stdin {
            use std::io::Write;
            let mut w = child.stdin.take().expect("ctr stdin is piped");
            w.write_all(data).expect("writing ctr stdin");
        }
        child.wait_with_output().expect("waiting for ctr")
    }

    /// `ctr` with stdin closed, killed after `limit` (coreutils `timeout`): a hung call fails
    /// the test instead of hanging it (exit status 124 then).
    pub fn ctr_bounded(&self, args: &[&str], limit: Duration) -> Output {
        self.ctr_command(args, limit)
            .stdin(Stdio::null())
            .output()
            .expect("spawning timeout ctr")
    }

    /// `timeout -k 5 LIMIT ctr -a SOCK args...`.
    fn ctr_command(&self, args: &[&str], limit: Duration) -> Command {
        let mut cmd = bounded(self.ctr_bin(), limit);
        cmd.arg("-a")
            .arg(self.dir.join("containerd.sock"))
            .args(args);
        cmd
    }

    /// Starts a detached container with extra ctr flags (`--privileged`, `--mount`,
    /// `--annotation` ...), each ctr call bounded by `limit`, and waits until it runs.
    pub fn run_detached_with_flags(&self, id: &str, flags: &[&str], cmd: &[&str], limit: Duration) {
        let image = test_image();
        let mut args = vec!["run", "-d", "--runtime", RUNTIME];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[&image, id]);
        args.extend_from_slice(cmd);
        let out = self.ctr_bounded(&args, limit);
        assert!(
            out.status.success(),
            "ctr run -d {id} ({:?}): {}\ncontainerd log:\n{}",
            out.status,
            text(&out.stderr),
            self.log_tail(40)
        );
        self.wait_status(id, "RUNNING", limit);
    }

    /// `ctr run --rm --runtime kata <image> <id> <cmd...>` plus extra ctr flags.
    pub fn run(&self, flags: &[&str], id: &str, cmd: &[&str]) -> Output {
        let image = test_image();
        let mut args = vec!["run", "--rm", "--runtime", RUNTIME];
        args.extend_from_slice(flags);
        args.push(&image);
        args.push(id);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// Starts a detached container (`ctr run -d`).
    pub fn run_detached(&self, id: &str, cmd: &[&str]) {
        self.start_detached(id, &[], cmd);
    }

    /// Starts a detached container under a runtime configuration of its own
    /// (`--runtime-config-path`) and waits until it runs.
    pub fn run_detached_with_config(&self, id: &str, config: &Path, cmd: &[&str]) {
        let config = config.to_string_lossy();
        self.start_detached(id, &["--runtime-config-path", &config], cmd);
        self.wait_status(id, "RUNNING", Duration::from_secs(60));
    }

    fn start_detached(&self, id: &str, flags: &[&str], cmd: &[&str]) {
        let image = test_image();
        let mut args = vec!["run", "-d", "--runtime", RUNTIME];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[&image, id]);
        args.extend_from_slice(cmd);
        let out = self.ctr(&args);
        assert!(
            out.status.success(),
            "ctr run -d {id}: {}\ncontainerd log:\n{}",
            text(&out.stderr),
            self.log_tail(40)
        );
    }

    /// The STATUS column of `ctr task ls` for a task, if listed.
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr(&["task", "ls"]);
        text(&out.stdout).lines().skip(1).find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.first() == Some(&id)).then(|| cols.get(2).unwrap_or(&"").to_string())
        })
    }

    /// Waits (bounded) until a task reaches `status`.
    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.task_status(id);
            if now.as_deref() == Some(status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} did not reach {status} within {timeout:?} (now {now:?})\ncontainerd log:\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `cmd` in the task with `ctr task exec` until it exits 0 (bounded).
    pub fn wait_exec_ok(&self, id: &str, cmd: &[&str], timeout: Duration) {
        self.wait_exec(id, cmd, true, timeout);
    }

    /// Runs `cmd` in `id` (`ctr task exec`) until it fails, for at most `timeout`.
    pub fn wait_exec_fails(&self, id: &str, cmd: &[&str], timeout: Duration) {
        self.wait_exec(id, cmd, false, timeout);
    }

    fn wait_exec(&self, id: &str, cmd: &[&str], succeed: bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let want = if succeed { "succeed" } else { "fail" };
        for n in 0.. {
            let eid = format!("probe{n}");
            let mut args = vec!["task", "exec", "--exec-id", &eid, id];
            args.extend_from_slice(cmd);
            if self.ctr(&args).status.success() == succeed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{cmd:?} in {id} did not {want} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Deletes a stopped task and its container; returns the exit code containerd reported.
    pub fn delete_task(&self, id: &str) -> i32 {
        let out = self.ctr(&["task", "delete", id]);
        let err = text(&out.stderr);
        assert!(
            out.status.success(),
            "ctr task delete {id}: {err}\ncontainerd log:\n{}",
            self.log_tail(40)
        );
        let rm = self.ctr(&["container", "rm", id]);
        assert!(
            rm.status.success(),
            "ctr container rm {id}: {}",
            text(&rm.stderr)
        );
        // ctr reports a non-zero exit code only as a warning line.
        err.split("non-zero exit code ")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Removes the task and container `id` when dropped, so a failing test does not leave
    /// its VM running (on success the test has removed it already; this is then a no-op).
    pub fn guard<'a>(&'a self, id: &str) -> TaskGuard<'a> {
        TaskGuard {
            ctrd: self,
            id: id.to_string(),
        }
    }

    /// Force-removes a task and container, ignoring errors (test clean-up).
    pub fn force_remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        let _ = self.ctr(&["task", "delete", "-f", id]);
        let _ = self.ctr(&["container", "rm", id]);
    }
}

/// A running `ctr events`.
pub struct Events(std::process::Child);

impl Events {
    /// Stops it and returns its output. SIGTERM to timeout(1), which passes it on to `ctr
    /// events` (SIGKILL would orphan it and leave its output pipe open).
    pub fn stop(self) -> String {
        let _ = bounded("kill", QUICK_LIMIT)
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let out = self.0.wait_with_output().expect("ctr events output");
        text(&out.stdout)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let mut users = USERS.lock().unwrap_or_else(|p| p.into_inner());
        let n = users.entry(self.dir.clone()).or_insert(1);
        *n -= 1;
        if *n == 0 {
            users.remove(&self.dir);
            let _ = self.script(&["stop"]);
        }
    }
}

/// containerd 2.x's bin directory (unpacked by scripts/setup-host.sh); fails if missing.
pub fn containerd2_bin_dir() -> PathBuf {
    let dir = PathBuf::from(shell_var("CONTAINERD2_DIR").expect("CONTAINERD2_DIR in lib.sh"))
        .join("usr/bin");
    require_built(&[dir.join("containerd"), dir.join("ctr")]);
    dir
}

/// How many live [`Containerd`] handles use each containerd directory.
static USERS: std::sync::Mutex<std::collections::BTreeMap<PathBuf, usize>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// See [`Containerd::guard`].
pub struct TaskGuard<'a> {
    ctrd: &'a Containerd,
    id: String,
}

impl Drop for TaskGuard<'_> {
    fn drop(&mut self) {
        if self.ctrd.task_status(&self.id).is_some() {
            self.ctrd.force_remove(&self.id);
        }
    }
}

/// Lossy UTF-8 of command output.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// Where the host's cgroup hierarchies are mounted.
const HOST_CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How deep below a hierarchy's root a sandbox's cgroup is looked for
/// (`kubepods/burstable/pod<uid>/<id>` is 4).
const CGROUP_SEARCH_DEPTH: usize = 6;

/// Host cgroup directories named `name`, in any hierarchy.
pub fn host_cgroups_named(name: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, name: &str, depth: usize, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if !t.is_dir() {
                continue;
            }
            let p = e.path();
            if e.file_name() == name {
                found.push(p.clone());
            }
            if depth > 0 {
                walk(&p, name, depth - 1, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(
        Path::new(HOST_CGROUP_ROOT),
        name,
        CGROUP_SEARCH_DEPTH + 1,
        &mut found,
    );
    found
}

/// Names (`/proc/<pid>/comm`, at most 15 bytes) of the processes a sandbox runs on the host.
const SANDBOX_PROCESS_NAMES: [&str; 4] = [
    "qemu-system-",
    "virtiofsd",
    "vhost-device-vs",
    "containerd-shim",
];

/// Zombies of the processes a sandbox runs (a zombie has no command line to name its
/// sandbox by): an exit nobody reaped. Children of this test process are left out: the suites
/// that boot VMs in-process stand in for a shim, and one that plays a dead shim never reaps.
pub fn sandbox_zombies() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let Ok(stat) = std::fs::read_to_string(p.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ...: comm may hold spaces and parentheses; the state follows the
        // last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next().unwrap_or_default();
        let ppid = rest.next().unwrap_or_default();
        if state == "Z" && ppid != me && SANDBOX_PROCESS_NAMES.iter().any(|n| comm.starts_with(n)) {
            found.push(format!(
                "zombie {} ({comm})",
                p.file_name().to_string_lossy()
            ));
        }
    }
    found
}

/// What a sandbox may have left behind: processes whose command line names its directory,
/// mounts under it, the directory itself, a host cgroup named after it, and any unreaped
/// sandbox process. Empty means clean.
pub fn leftovers(sandbox_id: &str) -> Vec<String> {
    let dir = sandbox_dir(sandbox_id);
    let mut found = sandbox_zombies();
    for cg in host_cgroups_named(sandbox_id) {
        found.push(format!("cgroup {}", cg.display()));
    }
    if Path::new(&dir).exists() {
        found.push(format!("directory {dir}"));
    }
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
        // A path component equal to the id: `x-1` must not match `x-10`'s mounts.
        let names_sandbox = |l: &&str| {
            l.split_whitespace()
                .any(|field| field.split('/').any(|c| c == sandbox_id))
        };
        for l in mounts.lines().filter(names_sandbox) {
            found.push(format!("mount {l}"));
        }
    }
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let pid = p.file_name().to_string_lossy().to_string();
            if !pid.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let helpers = ["qemu-system", "virtiofsd", "vhost-device-vsock"];
            let helper =
                cmdline.contains(&format!("{dir}/")) && helpers.iter().any(|b| cmdline.contains(b));
            // The shim names its sandbox with -id, not by directory.
            let shim = cmdline.contains("containerd-shim-kata-v2")
                && cmdline.contains(&format!(" -id {sandbox_id} "));
            if helper || shim {
                found.push(format!("process {pid}: {cmdline}"));
            }
        }
    }
    found
}

/// PIDs of the QEMU processes of a sandbox: those whose command line names a path in its
/// directory under [`sandbox_run_dir`].
pub fn sandbox_vms(sandbox_id: &str) -> Vec<i32> {
    pids_matching(&["qemu-system", &format!("{}/", sandbox_dir(sandbox_id))])
}

/// What `containerd-shim-kata-v2 delete` (run by containerd after a shim went away) found left
/// of sandbox `id` and removed, as containerd logged it ("cleanup warnings"): empty when the
/// shim tore its sandbox down itself.
pub fn cleanup_warnings(containerd_log: &Path, id: &str) -> Vec<String> {
    std::fs::read_to_string(containerd_log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("cleanup warnings") && l.contains("left behind") && l.contains(id))
        .map(str::to_string)
        .collect()
}

/// Fails if containerd's clean-up had to remove anything of sandbox `id` (see
/// [`cleanup_warnings`]): the shim must tear its sandbox down itself.
pub fn assert_shim_tore_down(containerd_log: &Path, id: &str) {
    let swept = cleanup_warnings(containerd_log, id);
    assert!(
        swept.is_empty(),
        "sandbox {id}: the shim left these for containerd's clean-up: {swept:#?}"
    );
}

/// Waits (bounded) until a sandbox left nothing behind; returns what is still there.
pub fn wait_clean(sandbox_id: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = leftovers(sandbox_id);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// PIDs of processes whose command line contains all of `needles`.
pub fn pids_matching(needles: &[&str]) -> Vec<i32> {
    let mut pids = Vec::new();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if needles.iter().all(|n| cmdline.contains(n)) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// A container id unique to this run, so reruns never collide with leftovers.
pub fn unique_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A copy of build/configuration-qemu.toml with the first `key = ...` line's value replaced,
/// written to build/e2e/<name>.toml.
pub fn config_variant(name: &str, key: &str, value: &str) -> PathBuf {
    let base = top_dir().join("build/configuration-qemu.toml");
    let text = std::fs::read_to_string(&base).expect("build/configuration-qemu.toml");
    let mut replaced = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if !replaced && l.starts_with(&format!("{key} = ")) {
                replaced = true;
                format!("{key} = {value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(replaced, "key {key} not found in {}", base.display());
    let path = top_dir().join("build/e2e").join(format!("{name}.toml"));
    std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir build/e2e");
    std::fs::write(&path, out.join("\n") + "\n").expect("writing config variant");
    path
}

/// Runs `script` in the guest debug console of sandbox `id` (`kata-ctl --config CONFIG exec`,
/// the built kata-ctl, bounded by a timeout); returns what the shell printed.
pub fn guest_console(config: &Path, id: &str, script: &str) -> Output {
    use std::io::Write;
    let bin = top_dir().join("target/release/kata-ctl");
    let mut child = bounded(&bin, QUICK_LIMIT)
        .arg("--config")
        .arg(config)
        .args(["exec", id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kata-ctl exec");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .expect("writing to kata-ctl exec");
    child.wait_with_output().expect("kata-ctl exec")
}

/// How long a server in a fresh container may take to answer (TCG guest).
pub const SERVE_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP GET of `/index.html` from `addr`, bounded; the whole answer.
pub fn http_get(addr: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let sa: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::other(format!("{addr}: {e}")))?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// Waits (bounded by [`SERVE_TIMEOUT`]) until `addr` serves `want`.
pub fn wait_serves(addr: &str, want: &str) {
    let deadline = Instant::now() + SERVE_TIMEOUT;
    loop {
        let last = match http_get(addr) {
            Ok(body) if body.contains(want) => return,
            Ok(body) => format!("answer {body:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{addr} did not serve {want:?} within {SERVE_TIMEOUT:?}: {last}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
