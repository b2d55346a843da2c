//! The systemd cgroup driver against a private `dbus-daemon` and a small mock of systemd's
//! `org.freedesktop.systemd1` manager, over a fake cgroupfs root (these hosts have no systemd
//! as PID 1): the scope systemd is asked for, where the pod's cgroup ends up, where the shim
//! goes, and what is left after removal or a failed start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kata_shim::resources::host_cgroup::{CgroupsPath, Hierarchy, LegacyMount};
use kata_shim::resources::pod_cgroup::{CgroupHost, PodCgroup};
use kata_shim::resources::systemd::Systemd;
use tokio::io::AsyncBufReadExt;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue};

/// Bounds the daemon's start-up: a regression fails instead of hanging.
const DAEMON_START: Duration = Duration::from_secs(20);
const POD: &str = "kubepods-burstable-pod1.slice:cri-containerd:abc";
const UNIT: &str = "cri-containerd-abc.scope";
/// Where systemd puts that scope (written out here, not derived by the code under test).
const SCOPE_DIR: &str =
    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-abc.scope";
/// The shim's cgroup before it joins: containerd's.
const ORIGIN: &str = "system.slice/containerd.service";

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Start {
        unit: String,
        mode: String,
        slice: String,
        pids: Vec<u32>,
        delegate: bool,
    },
    Stop(String),
}

/// systemd's manager, as far as the driver uses it: starting a scope makes its cgroup in the
/// hierarchies systemd manages (PIDs recorded, not written: the fake's cgroup.procs is a
/// plain file), stopping removes it, and each job ends with JobRemoved.
struct MockManager {
    /// The roots of the hierarchies systemd manages.
    managed: Vec<PathBuf>,
    /// A unit in this slice gets a failed job.
    failing_slice: &'static str,
    calls: Arc<Mutex<Vec<Call>>>,
    jobs: AtomicU32,
    scopes: Mutex<HashMap<String, PathBuf>>,
}

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.systemd1")]
enum ManagerError {
    #[zbus(error)]
    ZBus(zbus::Error),
    NoSuchUnit(String),
}

impl MockManager {
    fn record(&self, call: Call) {
        self.calls.lock().expect("calls").push(call);
    }

    async fn finish(
        &self,
        emitter: &SignalEmitter<'_>,
        unit: &str,
        result: &str,
    ) -> OwnedObjectPath {
        let id = self.jobs.fetch_add(1, Ordering::SeqCst) + 1;
        let job = OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{id}"))
            .expect("job path");
        // Sent before the reply: the client must not miss a signal that overtakes it.
        Self::job_removed(emitter, id, job.as_ref(), unit, result)
            .await
            .expect("emit JobRemoved");
        job
    }
}

fn prop<T: TryFrom<OwnedValue>>(props: &[(String, OwnedValue)], name: &str) -> Option<T> {
    props
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.try_clone().ok())
        .and_then(|v| T::try_from(v).ok())
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl MockManager {
    async fn start_transient_unit(
        &self,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        name: String,
        mode: String,
        properties: Vec<(String, OwnedValue)>,
        _aux: Vec<(String, Vec<(String, OwnedValue)>)>,
    ) -> Result<OwnedObjectPath, ManagerError> {
        let slice: String = prop(&properties, "Slice").unwrap_or_default();
        self.record(Call::Start {
            unit: name.clone(),
            mode,
            slice: slice.clone(),
            pids: prop(&properties, "PIDs").unwrap_or_default(),
            delegate: prop(&properties, "Delegate").unwrap_or(false),
        });
        if slice == self.failing_slice {
            return Ok(self.finish(&emitter, &name, "failed").await);
        }
        let dir = PathBuf::from(SCOPE_DIR);
        for root in &self.managed {
            let d = root.join(&dir);
            std::fs::create_dir_all(&d).expect("mock mkdir");
            std::fs::write(d.join("cgroup.procs"), "").expect("mock cgroup.procs");
        }
        self.scopes
            .lock()
            .expect("scopes")
            .insert(name.clone(), dir);
        Ok(self.finish(&emitter, &name, "done").await)
    }

    async fn stop_unit(
        &self,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        name: String,
        _mode: String,
    ) -> Result<OwnedObjectPath, ManagerError> {
        self.record(Call::Stop(name.clone()));
        let Some(dir) = self.scopes.lock().expect("scopes").remove(&name) else {
            return Err(ManagerError::NoSuchUnit(format!("Unit {name} not loaded.")));
        };
        for root in &self.managed {
            std::fs::remove_dir_all(root.join(&dir)).expect("mock rmdir");
        }
        Ok(self.finish(&emitter, &name, "done").await)
    }

    async fn subscribe(&self) {}

    #[zbus(signal)]
    async fn job_removed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

/// A private bus with the mock manager on it, and the fake cgroup root.
struct Bus {
    _daemon: tokio::process::Child,
    _server: zbus::Connection,
    address: String,
    calls: Arc<Mutex<Vec<Call>>>,
    tmp: tempfile::TempDir,
}

impl Bus {
    /// `managed`: the hierarchies (below the fake root) systemd manages.
    async fn start(managed: &[&str]) -> Bus {
        let tmp = tempfile::tempdir().expect("tempdir");
        let socket = tmp.path().join("bus");
        let config = tmp.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .expect("bus config");
        // Under CI a missing dbus-daemon fails here (scripts/setup-host.sh installs it).
        let mut daemon = tokio::process::Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile", "--print-address"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("dbus-daemon (package dbus-daemon) runs");
        let stdout = daemon.stdout.take().expect("stdout");
        let mut line = String::new();
        tokio::time::timeout(
            DAEMON_START,
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("dbus-daemon prints its address in time")
        .expect("read the address");
        let address = line.trim().to_string();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mock = MockManager {
            managed: managed.iter().map(|m| tmp.path().join(m)).collect(),
            failing_slice: "broken.slice",
            calls: calls.clone(),
            jobs: AtomicU32::new(0),
            scopes: Mutex::new(HashMap::new()),
        };
        let server = zbus::connection::Builder::address(address.as_str())
            .expect("address")
            .name("org.freedesktop.systemd1")
            .expect("name")
            .serve_at("/org/freedesktop/systemd1", mock)
            .expect("serve")
            .build()
            .await
            .expect("mock manager on the bus");
        Bus {
            _daemon: daemon,
            _server: server,
            address,
            calls,
            tmp,
        }
    }

    fn root(&self) -> &Path {
        self.tmp.path()
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    /// The host: `hierarchy`, the mock manager, and the shim in containerd's cgroup (made in
    /// each hierarchy root, so the shim's return there is seen).
    async fn host(&self, hierarchy: Hierarchy) -> CgroupHost {
        let roots: Vec<PathBuf> = match &hierarchy {
            Hierarchy::Unified(r) => vec![r.clone()],
            Hierarchy::Legacy(m) => m.iter().map(|m| m.mount_point.clone()).collect(),
        };
        for r in &roots {
            std::fs::create_dir_all(r.join(ORIGIN)).expect("origin");
            std::fs::write(r.join(ORIGIN).join("cgroup.procs"), "").expect("origin procs");
        }
        let lines = match &hierarchy {
            Hierarchy::Unified(_) => format!("0::/{ORIGIN}\n"),
            Hierarchy::Legacy(m) => m
                .iter()
                .enumerate()
                .map(|(i, m)| format!("{}:{}:/{ORIGIN}\n", i + 1, m.controllers.join(",")))
                .collect(),
        };
        CgroupHost {
            hierarchy,
            systemd: Some(Systemd::at(&self.address).await.expect("connect")),
            shim_cgroup: lines,
        }
    }
}

fn procs(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default()
}

fn shim_pid() -> String {
    std::process::id().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_systemd_path_is_a_delegated_scope_the_shim_holds_until_the_vm_runs() {
    let bus = Bus::start(&["unified"]).await;
    let root = bus.root().join("unified");
    let host = bus.host(Hierarchy::Unified(root.clone())).await;

    let mut cg = PodCgroup::create_on(&host, CgroupsPath::parse(POD).expect("parses"), false)
        .await
        .expect("the scope starts");
    assert_eq!(
        bus.calls(),
        [Call::Start {
            unit: UNIT.into(),
            mode: "replace".into(),
            slice: "kubepods-burstable-pod1.slice".into(),
            pids: vec![std::process::id()],
            delegate: true,
        }]
    );
    assert_eq!(cg.host().leaves(), [root.join(SCOPE_DIR)]);
    assert!(
        cg.host().procs_files().is_ok(),
        "helpers can join the scope"
    );
    assert_eq!(
        procs(&root.join(ORIGIN)),
        "",
        "the shim holds the scope while the VM boots"
    );

    cg.vm_started().await;
    assert_eq!(
        procs(&root.join(ORIGIN)),
        shim_pid(),
        "then goes back to containerd's cgroup"
    );

    cg.remove().await;
    assert_eq!(bus.calls().last(), Some(&Call::Stop(UNIT.into())));
    assert!(!root.join(SCOPE_DIR).exists(), "systemd removed the scope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_sandbox_cgroup_only_the_shim_stays_in_the_scope_until_it_is_removed() {
    let bus = Bus::start(&["unified"]).await;
    let root = bus.root().join("unified");
    let host = bus.host(Hierarchy::Unified(root.clone())).await;

    let mut cg = PodCgroup::create_on(&host, CgroupsPath::parse(POD).expect("parses"), true)
        .await
        .expect("the scope starts");
    assert_eq!(procs(&root.join(SCOPE_DIR)), shim_pid(), "the shim joined");
    cg.vm_started().await;
    assert_eq!(procs(&root.join(ORIGIN)), "", "the shim stays");

    cg.remove().await;
    assert_eq!(
        procs(&root.join(ORIGIN)),
        shim_pid(),
        "it left before the stop"
    );
    assert_eq!(bus.calls().last(), Some(&Call::Stop(UNIT.into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_v1_the_shim_makes_the_scope_dir_in_hierarchies_systemd_does_not_manage() {
    let bus = Bus::start(&["systemd", "memory"]).await;
    let root = bus.root().to_path_buf();
    let cpuset = root.join("cpuset");
    std::fs::create_dir_all(&cpuset).expect("mkdir");
    std::fs::write(cpuset.join("cpuset.cpus"), "0-1\n").expect("write");
    std::fs::write(cpuset.join("cpuset.mems"), "0\n").expect("write");
    let mount = |name: &str, controller: &str| LegacyMount {
        mount_point: root.join(name),
        controllers: vec![controller.into()],
    };
    let host = bus
        .host(Hierarchy::Legacy(vec![
            mount("cpuset", "cpuset"),
            mount("memory", "memory"),
            mount("systemd", "name=systemd"),
        ]))
        .await;

    let mut cg = PodCgroup::create_on(&host, CgroupsPath::parse(POD).expect("parses"), false)
        .await
        .expect("the scope starts");
    assert_eq!(
        cg.host().leaves(),
        [
            cpuset.join(SCOPE_DIR),
            root.join("memory").join(SCOPE_DIR),
            root.join("systemd").join(SCOPE_DIR)
        ]
    );
    assert_eq!(
        std::fs::read_to_string(cpuset.join(SCOPE_DIR).join("cpuset.cpus")).expect("inherited"),
        "0-1"
    );
    cg.vm_started().await;
    for h in ["cpuset", "memory", "systemd"] {
        assert_eq!(procs(&root.join(h).join(ORIGIN)), shim_pid(), "{h}");
    }
    // tmpfs is not cgroupfs: the kernel's files are the test's to take away.
    let mut level = cpuset.join(SCOPE_DIR);
    while level != cpuset {
        for f in ["cpuset.cpus", "cpuset.mems"] {
            std::fs::remove_file(level.join(f)).expect("rm");
        }
        level = level.parent().expect("parent").to_path_buf();
    }
    cg.remove().await;
    assert_eq!(bus.calls().last(), Some(&Call::Stop(UNIT.into())));
    assert!(!root.join("memory").join(SCOPE_DIR).exists(), "systemd's");
    assert!(
        !cpuset.join("kubepods.slice").exists(),
        "the shim's own levels"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_job_names_the_unit_and_result_and_leaves_nothing() {
    let bus = Bus::start(&["unified"]).await;
    let root = bus.root().join("unified");
    let host = bus.host(Hierarchy::Unified(root.clone())).await;

    let e = PodCgroup::create_on(
        &host,
        CgroupsPath::parse("broken.slice:cri-containerd:abc").expect("parses"),
        false,
    )
    .await
    .expect_err("a failed job fails the pod");
    assert_eq!(
        e.to_string(),
        "cgroupsPath \"broken.slice:cri-containerd:abc\": systemd start of \
         cri-containerd-abc.scope ended with job result \"failed\""
    );
    let entries: Vec<_> = std::fs::read_dir(&root)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(entries, ["system.slice"], "only the shim's origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_scope_systemd_already_collected_is_not_an_error() {
    let bus = Bus::start(&["unified"]).await;
    let systemd = Systemd::at(&bus.address).await.expect("connect");
    assert!(!systemd.stop_unit(UNIT).await.expect("no such unit is fine"));
}
