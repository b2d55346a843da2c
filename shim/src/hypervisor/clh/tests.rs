//! The backend against a fake cloud-hypervisor: the "VMM" is a shell script (it sleeps, or
//! exits at once, as each test needs) and its API is a server in the test process on the
//! socket path the backend expects, answering as the API description documents. Nothing
//! here boots a VM: these machines have no cloud-hypervisor and no usable KVM.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::api::{FsConfig, NetConfig, VmState};
use super::schema;
use super::*;
use crate::config::{Arch, Config, GuestConfig, SharedFs};
use crate::guest::vsock::Dialer;
use crate::hypervisor::{Devices, Hypervisor, HypervisorError, VmPaths};

const CONFIG_FILE: &str = "/etc/kata-containers/configuration-clh.toml";

/// One request as the fake API received it.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Value>,
}

impl Recorded {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A fixed answer replacing the documented behaviour of one endpoint.
#[derive(Clone)]
struct Override {
    path: &'static str,
    status: u16,
    body: &'static str,
}

struct FakeState {
    vm: Option<(Value, VmState)>,
}

/// The fake API server.
struct FakeApi {
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeApi {
    /// Listens on `socket`. On `vmm.shutdown` it stops the "VMM" named by `pidfile` with
    /// SIGTERM, as the real one exits.
    fn start(socket: &Path, pidfile: PathBuf, overrides: Vec<Override>) -> FakeApi {
        let listener = UnixListener::bind(socket).expect("bind fake API");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(Mutex::new(FakeState { vm: None }));
        let recorded = requests.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (recorded, state, pidfile, overrides) = (
                    recorded.clone(),
                    state.clone(),
                    pidfile.clone(),
                    overrides.clone(),
                );
                tokio::spawn(async move {
                    serve_connection(conn, recorded, state, pidfile, overrides).await;
                });
            }
        });
        FakeApi { requests }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }

    /// "METHOD /path" of every request, repeated pings at the start folded into one.
    fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self.requests() {
            let l = r.line();
            if out.last() == Some(&l) && l.ends_with("vmm.ping") {
                continue;
            }
            out.push(l);
        }
        out
    }
}

/// Serves requests on one connection until the client closes it (keep-alive, like the real
/// server: the client must not wait for the end of the connection).
async fn serve_connection(
    conn: UnixStream,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    state: Arc<Mutex<FakeState>>,
    pidfile: PathBuf,
    overrides: Vec<Override>,
) {
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                if n.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().expect("content-length");
                }
                headers.push((n.to_string(), v.trim().to_string()));
            }
        }
        let mut body = vec![0u8; length];
        r.read_exact(&mut body).await.expect("body");
        let body = (!body.is_empty()).then(|| serde_json::from_slice(&body).expect("JSON body"));
        let req = Recorded {
            method,
            path,
            headers,
            body,
        };
        recorded.lock().expect("lock").push(req.clone());

        let over = overrides
            .iter()
            .find(|o| req.path == format!("/api/v1/{}", o.path));
        let (status, answer) = match over {
            Some(o) => (o.status, o.body.to_string()),
            None => documented(&req, &mut state.lock().expect("lock")),
        };
        let mut out = format!(
            "HTTP/1.1 {status} \r\nServer: Cloud Hypervisor API\r\nConnection: keep-alive\r\n"
        );
        if status != 204 {
            out.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                answer.len()
            ));
        }
        out.push_str("\r\n");
        if status != 204 {
            out.push_str(&answer);
        }
        if r.get_mut().write_all(out.as_bytes()).await.is_err() {
            return;
        }
        // The documented vmm.shutdown ends the VMM; an overridden one leaves it running.
        if req.path == "/api/v1/vmm.shutdown" && over.is_none() {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
}

/// What cloud-hypervisor answers, per its API description: 204 for actions, 200 with JSON
/// for queries, 400 for a body that does not validate, 404/405 for the wrong VM state.
fn documented(req: &Recorded, st: &mut FakeState) -> (u16, String) {
    let ep = req.path.strip_prefix("/api/v1/").unwrap_or_default();
    let invalid = |object: &str| {
        let body = req.body.clone().unwrap_or(Value::Null);
        let problems = schema::check(object, &body);
        (!problems.is_empty()).then(|| (400, json!(problems.join("; ")).to_string()))
    };
    let state = st.vm.as_ref().map(|(_, s)| *s);
    match (req.method.as_str(), ep) {
        ("GET", "vmm.ping") => (200, json!({"version": "v0.0-fake", "pid": 1}).to_string()),
        ("PUT", "vm.create") => {
            if let Some(bad) = invalid("VmConfig") {
                return bad;
            }
            st.vm = Some((req.body.clone().unwrap_or(Value::Null), VmState::Created));
            (204, String::new())
        }
        ("PUT", "vm.boot")
        | ("PUT", "vm.pause")
        | ("PUT", "vm.resume")
        | ("PUT", "vm.shutdown") => {
            let (from, to): (&[VmState], VmState) = match ep {
                "vm.boot" => (&[VmState::Created], VmState::Running),
                "vm.pause" => (&[VmState::Running], VmState::Paused),
                "vm.resume" => (&[VmState::Paused], VmState::Running),
                _ => (&[VmState::Running, VmState::Paused], VmState::Shutdown),
            };
            match (st.vm.as_mut(), state) {
                (Some(vm), Some(s)) if from.contains(&s) => {
                    vm.1 = to;
                    (204, String::new())
                }
                (Some(_), _) => (405, json!("VM in the wrong state").to_string()),
                (None, _) => (404, json!("VM not created").to_string()),
            }
        }
        ("GET", "vm.info") => match &st.vm {
            Some((config, s)) => (200, json!({"config": config, "state": s}).to_string()),
            None => (404, String::new()),
        },
        ("PUT", "vmm.shutdown") => (204, String::new()),
        ("PUT", "vm.add-net") => match invalid("NetConfig") {
            Some(bad) => bad,
            None => (
                200,
                json!({"id": "_net1", "bdf": "0000:00:06.0"}).to_string(),
            ),
        },
        ("PUT", "vm.add-fs") => match invalid("FsConfig") {
            Some(bad) => bad,
            None => (204, String::new()),
        },
        _ => (404, json!("unknown endpoint").to_string()),
    }
}

/// A sandbox dir, a kernel, an initrd and a stand-in for /dev/kvm in a tempdir.
struct Env {
    tmp: tempfile::TempDir,
    paths: VmPaths,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("s1");
        std::fs::create_dir(&dir).expect("sandbox dir");
        for f in ["vmlinux", "initrd.img", "kvm"] {
            std::fs::write(tmp.path().join(f), b"").expect("file");
        }
        Env {
            tmp,
            paths: VmPaths::new(dir),
        }
    }

    /// The VM's shared directory.
    fn shared(&self) -> PathBuf {
        self.paths.dir().join("shared")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// An executable shell script; `@TMP@` in `body` stands for the tempdir.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.file(name);
        let text = format!(
            "#!/bin/sh\n{}\n",
            body.replace("@TMP@", &self.tmp.path().display().to_string())
        );
        std::fs::write(&path, text).expect("script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn config(&self, clh_path: PathBuf) -> (Config, ClhConfig) {
        let c = Config {
            source: Some(CONFIG_FILE.into()),
            ..Config::default()
        };
        let clh = ClhConfig {
            path: clh_path,
            guest: GuestConfig {
                kernel: self.file("vmlinux"),
                initrd: self.file("initrd.img"),
                shared_fs: SharedFs::None,
                ..GuestConfig::default()
            },
        };
        (c, clh)
    }

    fn backend(&self, config: &Config, clh: ClhConfig, timeouts: ClhTimeouts) -> Clh {
        Clh::new(
            config,
            clh,
            Devices::sharing(self.shared()),
            "s1",
            self.paths.clone(),
            CgroupJoin::default(),
        )
        .with_timeouts(timeouts)
        .with_kvm_device(self.file("kvm"))
    }

    fn fake_api(&self, overrides: Vec<Override>) -> FakeApi {
        FakeApi::start(
            &api_socket(&self.paths),
            self.paths.pidfile(PROCESS_NAME),
            overrides,
        )
    }

    /// Nothing of the backend is left: the process is gone (reaped) and the sandbox dir holds
    /// no socket and no pid file, only logs.
    fn assert_clean(&self, pid: Option<u32>) {
        if let Some(pid) = pid {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "process {pid} still exists"
            );
        }
        for e in std::fs::read_dir(self.paths.dir()).expect("read dir") {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            let ft = e.file_type().expect("file type");
            assert!(!ft.is_socket(), "socket {name} left behind");
            assert!(
                name.ends_with(".log") || name == "shared",
                "{name} left behind"
            );
        }
    }
}

fn quick() -> ClhTimeouts {
    ClhTimeouts {
        api_socket: Duration::from_secs(5),
        api_call: Duration::from_secs(2),
        shutdown: Duration::from_secs(5),
    }
}

/// A "VMM" that records its arguments and stays up.
const SLEEPER: &str = "printf '%s\\n' \"$@\" > @TMP@/clh-args\nexec sleep 600";

/// Reads a file a fake process writes, waiting (bounded) for it: the backend does not wait
/// for the script, only for the API socket, which the test's server already holds.
async fn read_when_written(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(t) = std::fs::read_to_string(path) {
            if t.ends_with('\n') {
                return t;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn boots_through_the_api_then_stops_politely() {
    let env = Env::new();
    let (config, clh) = env.config(env.script("cloud-hypervisor", SLEEPER));
    let api = env.fake_api(vec![]);
    let mut hv = env.backend(&config, clh, quick());
    hv.start().await.expect("start");
    let pid = hv.pid().expect("pid");
    assert!(pid_alive(pid));

    // The VMM got only its API socket.
    let args = read_when_written(&env.file("clh-args")).await;
    let sock = env.paths.dir().join("clh-api.sock");
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        ["--api-socket", &format!("path={}", sock.display())]
    );

    assert_eq!(
        api.lines(),
        [
            "GET /api/v1/vmm.ping",
            "PUT /api/v1/vm.create",
            "PUT /api/v1/vm.boot"
        ]
    );
    let reqs = api.requests();
    let create = &reqs[reqs.len() - 2];
    assert_eq!(create.header("content-type"), Some("application/json"));
    let body = create.body.clone().expect("vm.create body");
    assert_eq!(body, serde_json::to_value(hv.vm_config()).expect("json"));
    let cmdline = body["payload"]["cmdline"].as_str().expect("cmdline");
    assert!(
        cmdline.starts_with(&format!("console={} ", Arch::host().console())),
        "{cmdline}"
    );
    assert_eq!(
        body["vsock"]["socket"],
        env.paths.hybrid_vsock().display().to_string()
    );
    assert_eq!(body["serial"]["mode"], "Socket");
    assert_eq!(
        body["serial"]["socket"],
        env.paths.console_socket().display().to_string()
    );
    assert_eq!(
        hv.agent_dialer(),
        Some(Dialer::Hybrid {
            uds_path: env.paths.hybrid_vsock()
        })
    );

    hv.pause().await.expect("pause");
    assert_eq!(hv.info().await.expect("info").state, VmState::Paused);
    hv.resume().await.expect("resume");
    let info = hv.info().await.expect("info");
    assert_eq!(info.state, VmState::Running);
    assert_eq!(info.config["cpus"]["boot_vcpus"], 1);

    let net = NetConfig {
        tap: Some("tap0_kata".into()),
        mac: Some("02:00:00:00:00:01".into()),
        ..NetConfig::default()
    };
    let dev = hv
        .add_net(&net)
        .await
        .expect("add-net")
        .expect("device info");
    assert_eq!(dev.bdf, "0000:00:06.0");
    let fs = FsConfig {
        tag: "extra".into(),
        socket: env.file("fs2.sock"),
        num_queues: 1,
        queue_size: 1024,
        id: None,
    };
    assert_eq!(hv.add_fs(&fs).await.expect("add-fs"), None);
    assert_eq!(
        api.requests().last().and_then(|r| r.body.clone()),
        Some(serde_json::to_value(&fs).expect("json"))
    );

    let exited = hv.exited();
    assert!(!*exited.borrow());
    let t = Instant::now();
    hv.stop(Duration::ZERO).await.expect("stop");
    // It exited because of vmm.shutdown (the fake's SIGTERM), well before the kill deadline.
    assert!(t.elapsed() < quick().shutdown, "{:?}", t.elapsed());
    let status = hv.exit_status().expect("status");
    assert!(status.contains("SIGTERM"), "{status}");
    assert!(*exited.borrow());
    let lines = api.lines();
    assert_eq!(
        lines[lines.len() - 2..],
        ["PUT /api/v1/vm.shutdown", "PUT /api/v1/vmm.shutdown"]
    );
    env.assert_clean(Some(pid));

    // stop is idempotent: nothing more is sent.
    let n = api.requests().len();
    hv.stop(Duration::ZERO).await.expect("stop again");
    assert_eq!(api.requests().len(), n);
}

/// The API socket shows up late, first as something that refuses connections (as between
/// the VMM's bind and listen): start waits for both within its deadline.
#[tokio::test]
async fn waits_for_a_late_api_socket_that_first_refuses() {
    let env = Env::new();
    let (config, clh) = env.config(env.script("cloud-hypervisor", SLEEPER));
    let sock = api_socket(&env.paths);
    let pidfile = env.paths.pidfile(PROCESS_NAME);
    let late_api = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(&sock, b"").expect("placeholder");
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::remove_file(&sock).expect("remove placeholder");
        FakeApi::start(&sock, pidfile, vec![])
    });
    let mut hv = env.backend(&config, clh, quick());
    let t = Instant::now();
    hv.start().await.expect("start");
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    let api = late_api.await.expect("fake API");
    assert_eq!(api.lines()[0], "GET /api/v1/vmm.ping");
    hv.stop(Duration::ZERO).await.expect("stop");
    env.assert_clean(hv.pid());
}

/// The API socket exists but never accepts a connection: a named timeout, quoting the
/// connect error and the VMM's log.
#[tokio::test]
async fn api_refusing_connections_until_the_deadline_is_a_named_timeout() {
    let env = Env::new();
    let (config, clh) = env.config(env.script(
        "cloud-hypervisor",
        "echo 'cloud-hypervisor: stuck before listen' >&2\nexec sleep 600",
    ));
    std::fs::write(api_socket(&env.paths), b"").expect("placeholder");
    let timeouts = ClhTimeouts {
        api_socket: Duration::from_millis(300),
        ..quick()
    };
    let mut hv = env.backend(&config, clh, timeouts);
    let msg = hv.start().await.expect_err("must fail").to_string();
    assert!(
        msg.contains("cloud-hypervisor API not answering within 300ms"),
        "{msg}"
    );
    assert!(msg.contains("GET /api/v1/vmm.ping: connect"), "{msg}");
    assert!(msg.contains("stuck before listen"), "{msg}");
    env.assert_clean(hv.pid());
}

#[tokio::test]
async fn vmm_ignoring_shutdown_is_killed_after_the_grace_period() {
    let env = Env::new();
    let (config, clh) = env.config(env.script("cloud-hypervisor", SLEEPER));
    // Answers vmm.shutdown but never exits.
    let _api = env.fake_api(vec![Override {
        path: "vmm.shutdown",
        status: 204,
        body: "",
    }]);
    let timeouts = ClhTimeouts {
        shutdown: Duration::from_millis(300),
        ..quick()
    };
    let mut hv = env.backend(&config, clh, timeouts);
    hv.start().await.expect("start");
    let pid = hv.pid().expect("pid");
    let t = Instant::now();
    hv.stop(Duration::ZERO).await.expect("stop");
    let status = hv.exit_status().expect("status");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?} {status}",
        t.elapsed()
    );
    assert!(status.contains("SIGKILL"), "{status}");
    env.assert_clean(Some(pid));
}

#[tokio::test]
async fn missing_binary_names_the_path_and_the_key() {
    let env = Env::new();
    let (config, clh) = env.config(env.file("no-such-cloud-hypervisor"));
    let mut hv = env.backend(&config, clh, quick());
    let err = hv.start().await.expect_err("must fail");
    let msg = err.to_string();
    assert!(matches!(err, HypervisorError::MissingFile { .. }), "{msg}");
    assert!(msg.contains("no-such-cloud-hypervisor"), "{msg}");
    assert!(
        msg.contains(&format!("[hypervisor.clh] path in {CONFIG_FILE}")),
        "{msg}"
    );
    assert_eq!(hv.pid(), None);
    env.assert_clean(None);
    assert_eq!(std::fs::read_dir(env.paths.dir()).expect("dir").count(), 0);
}

#[tokio::test]
async fn vmm_exiting_early_reports_its_output() {
    let env = Env::new();
    let (config, clh) = env.config(env.script(
        "cloud-hypervisor",
        "echo 'Error booting VM: failed to open the hypervisor interface' >&2\nexit 1",
    ));
    let mut hv = env.backend(&config, clh, quick());
    let err = hv.start().await.expect_err("must fail");
    let msg = err.to_string();
    assert!(matches!(err, HypervisorError::Exited { .. }), "{msg}");
    assert!(
        msg.contains("cloud-hypervisor exited (exit status: 1)"),
        "{msg}"
    );
    assert!(
        msg.contains("failed to open the hypervisor interface"),
        "{msg}"
    );
    env.assert_clean(hv.pid());
}

#[tokio::test]
async fn api_socket_never_appearing_is_a_named_timeout_with_the_log_tail() {
    let env = Env::new();
    let (config, clh) = env.config(env.script(
        "cloud-hypervisor",
        "echo 'cloud-hypervisor: starting, no API yet' >&2\nexec sleep 600",
    ));
    let timeouts = ClhTimeouts {
        api_socket: Duration::from_millis(300),
        ..quick()
    };
    let mut hv = env.backend(&config, clh, timeouts);
    let err = hv.start().await.expect_err("must fail");
    let msg = err.to_string();
    assert!(
        matches!(err, HypervisorError::SocketTimeout { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("clh-api.sock did not appear within 300ms"),
        "{msg}"
    );
    assert!(msg.contains("starting, no API yet"), "{msg}");
    let pid = hv.pid().expect("spawned");
    env.assert_clean(Some(pid));
    assert!(*hv.exited().borrow());
}

#[tokio::test]
async fn api_error_on_vm_create_quotes_method_endpoint_status_and_body() {
    let env = Env::new();
    let (config, clh) = env.config(env.script("cloud-hypervisor", SLEEPER));
    let api = env.fake_api(vec![Override {
        path: "vm.create",
        status: 500,
        body: "\"Error creating VM: InvalidPayload\"",
    }]);
    let mut hv = env.backend(&config, clh, quick());
    let err = hv.start().await.expect_err("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains(
            "PUT /api/v1/vm.create answered 500 Internal Server Error: \"Error creating VM: InvalidPayload\""
        ),
        "{msg}"
    );
    assert!(!api.lines().iter().any(|l| l.ends_with("vm.boot")));
    assert_eq!(hv.agent_dialer(), None);
    let pid = hv.pid().expect("spawned");
    env.assert_clean(Some(pid));
}

#[tokio::test]
async fn api_error_on_ping_fails_start() {
    let env = Env::new();
    let (config, clh) = env.config(env.script("cloud-hypervisor", SLEEPER));
    let _api = env.fake_api(vec![Override {
        path: "vmm.ping",
        status: 503,
        body: "",
    }]);
    let mut hv = env.backend(&config, clh, quick());
    let msg = hv.start().await.expect_err("must fail").to_string();
    assert!(
        msg.contains("GET /api/v1/vmm.ping answered 503 Service Unavailable: (empty body)"),
        "{msg}"
    );
    env.assert_clean(hv.pid());
}

#[tokio::test]
async fn api_error_on_pause_is_reported() {
    // A VM that was never created cannot be paused (404): that must surface as an error.
    let env = Env::new();
    let (config, clh) = env.config(env.script("cloud-hypervisor", SLEEPER));
    let _api = env.fake_api(vec![]);
    let hv = env.backend(&config, clh, quick());
    // Not started: the API socket exists (the fake) but no VM was created.
    let msg = hv.pause().await.expect_err("must fail").to_string();
    assert!(
        msg.contains("PUT /api/v1/vm.pause answered 404 Not Found: \"VM not created\""),
        "{msg}"
    );
}

#[tokio::test]
async fn no_kvm_is_named_before_anything_starts() {
    let env = Env::new();
    let (config, clh) = env.config(env.script("cloud-hypervisor", SLEEPER));
    let mut hv = env
        .backend(&config, clh, quick())
        .with_kvm_device(env.file("no-kvm"));
    let msg = hv.start().await.expect_err("must fail").to_string();
    assert!(msg.contains("cloud-hypervisor needs KVM"), "{msg}");
    assert!(msg.contains("no-kvm"), "{msg}");
    assert_eq!(hv.pid(), None);
    env.assert_clean(None);
}

#[tokio::test]
async fn virtio_9p_is_rejected_with_its_key() {
    let env = Env::new();
    let (config, mut clh) = env.config(env.script("cloud-hypervisor", SLEEPER));
    clh.guest.shared_fs = SharedFs::Virtio9p;
    let mut hv = env.backend(&config, clh, quick());
    let msg = hv.start().await.expect_err("must fail").to_string();
    assert!(
        msg.contains(&format!("[hypervisor.clh] shared_fs in {CONFIG_FILE}")),
        "{msg}"
    );
    assert!(msg.contains("no virtio-9p"), "{msg}");
    assert_eq!(hv.pid(), None);
}

/// Unmounts what a test mounted under the sandbox dir, also when an assertion failed.
struct UnmountOnDrop(PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        let errors = crate::resources::mount_table::unmount_all_under(&self.0);
        if !errors.is_empty() && !std::thread::panicking() {
            panic!("unmount under {}: {errors:?}", self.0.display());
        }
    }
}

/// virtio-fs: virtiofsd (a fake recording its arguments; the test binds its socket) starts
/// alongside the VMM, its socket goes into vm.create, and stop ends both. Mounts the shared
/// dir onto itself like the real start does (needs root, as the shim does).
#[tokio::test]
async fn virtio_fs_starts_virtiofsd_and_hands_its_socket_to_the_vmm() {
    let env = Env::new();
    let _unmount = UnmountOnDrop(env.paths.dir().to_path_buf());
    let (config, mut clh) = env.config(env.script("cloud-hypervisor", SLEEPER));
    clh.guest.shared_fs = SharedFs::VirtioFs;
    clh.guest.virtio_fs_daemon = env.script(
        "virtiofsd",
        "printf '%s\\n' \"$@\" > @TMP@/fs-args\nexec sleep 600",
    );
    let _fs_socket = UnixListener::bind(env.paths.virtiofsd_socket()).expect("bind");
    let api = env.fake_api(vec![]);
    let mut hv = env.backend(&config, clh, quick());
    hv.start().await.expect("start");
    let fs_args = read_when_written(&env.file("fs-args")).await;
    let body = api
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("vm.create"))
        .and_then(|r| r.body)
        .expect("vm.create");
    hv.stop(Duration::ZERO).await.expect("stop");

    assert!(
        fs_args
            .lines()
            .any(|a| a == format!("--socket-path={}", env.paths.virtiofsd_socket().display())),
        "{fs_args}"
    );
    assert!(
        fs_args
            .lines()
            .any(|a| a == format!("--shared-dir={}", env.shared().display())),
        "{fs_args}"
    );
    // No device nodes, no file capabilities through the share.
    assert!(
        fs_args.lines().any(|a| a == "--modcaps=-mknod:-setfcap"),
        "{fs_args}"
    );
    assert_eq!(body["fs"][0]["tag"], protocol::SHARED_FS_TAG);
    assert_eq!(
        body["fs"][0]["socket"],
        env.paths.virtiofsd_socket().display().to_string()
    );
    assert_eq!(body["memory"]["shared"], true);
    env.assert_clean(hv.pid());
    assert!(!env.paths.pidfile("virtiofsd").exists());
}

#[test]
fn guest_kernel_cmdline_is_the_shared_one() {
    let env = Env::new();
    let (mut config, mut clh) = env.config(env.file("clh"));
    let console = format!("console={}", Arch::host().console());
    let hv = env.backend(&config, clh.clone(), quick());
    assert_eq!(
        hv.kernel_cmdline(),
        format!("{console} quiet panic=-1 reboot=k")
    );
    config.agent.enable_debug = true;
    config.agent.debug_console_enabled = true;
    clh.guest.kernel_params = "foo=1".into();
    let hv = env.backend(&config, clh, quick());
    assert_eq!(
        hv.kernel_cmdline(),
        format!("{console} quiet panic=-1 reboot=k agent.log=debug agent.debug_console foo=1")
    );
}

#[test]
fn vmm_command_line() {
    let s = Path::new("/run/kata-containers/s1/clh-api.sock");
    assert_eq!(
        vmm_args(s, false),
        ["--api-socket", "path=/run/kata-containers/s1/clh-api.sock"]
    );
    assert_eq!(vmm_args(s, true).last().map(String::as_str), Some("-vv"));
}

#[test]
fn vcpus_and_memory() {
    let paths = VmPaths::new("/r/s1");
    let mut c = ClhConfig::default();
    c.guest.default_vcpus = 2;
    c.guest.default_maxvcpus = 4;
    c.guest.default_memory = 2048;
    let v = vm_config(&c, String::new(), &paths, 16);
    let cpus = v.cpus.expect("cpus");
    assert_eq!((cpus.boot_vcpus, cpus.max_vcpus), (2, 4));
    assert_eq!(v.memory.expect("memory").size, 2048 * 1024 * 1024);
    // 0 = host CPUs, never fewer than the boot vCPUs.
    c.guest.default_maxvcpus = 0;
    let cpus = vm_config(&c, String::new(), &paths, 16).cpus.expect("cpus");
    assert_eq!(cpus.max_vcpus, 16);
    let cpus = vm_config(&c, String::new(), &paths, 1).cpus.expect("cpus");
    assert_eq!(cpus.max_vcpus, 2);
}

/// configs/configuration-clh.toml documents exactly the keys of [`ClhConfig`], each with its
/// default value, so the file and the code cannot drift apart.
#[test]
fn documented_config_file_matches_the_defaults() {
    let text = include_str!("../../../../configs/configuration-clh.toml");
    let file: toml::Value = toml::from_str(text).expect("valid TOML");
    let section = file["hypervisor"]["clh"]
        .as_table()
        .expect("[hypervisor.clh]");
    let c = ClhConfig::default();
    let d = &c.guest;
    let path = |p: &Path| toml::Value::String(p.display().to_string());
    let int = |n: u32| toml::Value::Integer(n.into());
    let expected: Vec<(&str, toml::Value)> = vec![
        ("path", path(&c.path)),
        ("kernel", path(&d.kernel)),
        ("initrd", path(&d.initrd)),
        (
            "kernel_params",
            toml::Value::String(d.kernel_params.clone()),
        ),
        ("default_vcpus", int(d.default_vcpus)),
        ("default_maxvcpus", int(d.default_maxvcpus)),
        ("default_memory", int(d.default_memory)),
        ("shared_fs", toml::Value::String(d.shared_fs.to_string())),
        ("virtio_fs_daemon", path(&d.virtio_fs_daemon)),
        (
            "virtio_fs_cache",
            toml::Value::String(d.virtio_fs_cache.to_string()),
        ),
        (
            "virtio_fs_extra_args",
            toml::Value::Array(
                d.virtio_fs_extra_args
                    .iter()
                    .map(|a| toml::Value::String(a.clone()))
                    .collect(),
            ),
        ),
        ("enable_debug", toml::Value::Boolean(d.enable_debug)),
    ];
    for (key, value) in &expected {
        assert_eq!(section.get(*key), Some(value), "[hypervisor.clh] {key}");
    }
    let mut documented: Vec<&str> = section.keys().map(String::as_str).collect();
    let mut known: Vec<&str> = expected.iter().map(|(k, _)| *k).collect();
    documented.sort_unstable();
    known.sort_unstable();
    assert_eq!(documented, known);
    assert_eq!(c.path, Path::new(crate::config::DEFAULT_CLH_PATH));
}
