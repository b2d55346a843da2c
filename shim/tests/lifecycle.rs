//! The container lifecycle driven through `TaskCore` with a fake agent, a fake VM and a fake
//! mounter: event order, ids, pids, exit statuses, stdio draining, cleanup on error and on VM
//! death. No QEMU, no containerd.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::api::{
    CreateTaskRequest, DeleteRequest, ExecProcessRequest, KillRequest, ShutdownRequest,
    StartRequest, StateRequest, StatsRequest, WaitRequest,
};
use containerd_shim::protos::api::Status;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::ttrpc::Code;
use containerd_shim::ExitSignal;
use kata_shim::config::SharedFs;
use kata_shim::error::{TaskError, TaskResult};
use kata_shim::events::{self, EventReceiver, TaskEvent};
use kata_shim::guest::GuestAgent;
use kata_shim::resources::network::{GuestNetwork, PodInterface, PodNeighbour, PodRoute, Scan};
use kata_shim::resources::rootfs::{HostMounter, MountPlan};
use kata_shim::resources::share::Share;
use kata_shim::sandbox::seams::{BootRequest, Platform, SandboxVm, Shutdown, VmLauncher};
use kata_shim::task::TaskCore;
use protocol::agent as pb;
use tokio::sync::{watch, Notify};

const STEP: Duration = Duration::from_secs(10);

/// A guest process of the fake agent: queued output, then EOF once it exited.
#[derive(Default)]
struct FakeProc {
    stdout: VecDeque<Vec<u8>>,
    exit: Option<i32>,
}

#[derive(Default)]
struct FakeAgent {
    procs: Mutex<HashMap<(String, String), FakeProc>>,
    changed: Notify,
    next_pid: AtomicU32,
    calls: Mutex<Vec<String>>,
    fail_create_container: bool,
    /// The VM died: every call fails, as over a broken connection.
    dead: std::sync::atomic::AtomicBool,
    stdin: Mutex<Vec<u8>>,
    /// A lying guest: signals are acknowledged and never end a process.
    ignores_signals: bool,
    fail_update_interface: bool,
    /// A wedged guest: health checks get no answer.
    wedged: std::sync::atomic::AtomicBool,
    checks: AtomicU32,
    /// So many of the next health checks fail (a guest that hiccups).
    failing_checks: AtomicU32,
}

impl FakeAgent {
    fn call(&self, what: impl Into<String>) {
        self.calls.lock().unwrap().push(what.into());
    }
    fn key(cid: &str, eid: &str) -> (String, String) {
        (cid.to_string(), eid.to_string())
    }
    fn add(&self, cid: &str, eid: &str) -> u32 {
        self.procs
            .lock()
            .unwrap()
            .insert(Self::key(cid, eid), FakeProc::default());
        100 + self.next_pid.fetch_add(1, Ordering::SeqCst)
    }
    /// The test plays the guest: output, then exit.
    fn output(&self, cid: &str, eid: &str, data: &[u8]) {
        if let Some(p) = self.procs.lock().unwrap().get_mut(&Self::key(cid, eid)) {
            p.stdout.push_back(data.to_vec());
        }
        self.changed.notify_waiters();
    }
    fn exit(&self, cid: &str, eid: &str, status: i32) {
        if let Some(p) = self.procs.lock().unwrap().get_mut(&Self::key(cid, eid)) {
            p.exit.get_or_insert(status);
        }
        self.changed.notify_waiters();
    }
    /// Waits until `f` gives an answer for process (cid, eid).
    async fn until<T>(
        &self,
        cid: &str,
        eid: &str,
        f: impl Fn(&mut FakeProc) -> Option<T>,
    ) -> TaskResult<T> {
        loop {
            let notified = self.changed.notified();
            if self.dead.load(Ordering::SeqCst) {
                return Err(TaskError::internal("agent connection closed"));
            }
            {
                let mut procs = self.procs.lock().unwrap();
                let p = procs.get_mut(&Self::key(cid, eid)).ok_or_else(|| {
                    TaskError::not_found(format!("process {cid}/{eid} not found"))
                })?;
                if let Some(v) = f(p) {
                    return Ok(v);
                }
            }
            notified.await;
        }
    }
}

#[async_trait]
impl GuestAgent for FakeAgent {
    async fn create_sandbox(&self, req: pb::CreateSandboxRequest) -> TaskResult<()> {
        self.call(format!(
            "create_sandbox {} {}",
            req.sandbox_id, req.hostname
        ));
        Ok(())
    }
    async fn create_container(
        &self,
        req: pb::CreateContainerRequest,
    ) -> TaskResult<pb::CreateContainerResponse> {
        self.call(format!("create_container {}", req.container_id));
        if self.fail_create_container {
            return Err(TaskError::internal(
                "agent CreateContainer: no such file /bin/nothing",
            ));
        }
        let spec: serde_json::Value = serde_json::from_slice(&req.oci_spec_json).unwrap();
        assert_eq!(
            spec.pointer("/root/path").unwrap(),
            &serde_json::json!(format!(
                "{}/{}/rootfs",
                protocol::GUEST_SHARED_DIR,
                req.container_id
            ))
        );
        Ok(pb::CreateContainerResponse {
            pid: self.add(&req.container_id, ""),
            ..Default::default()
        })
    }
    async fn start_container(&self, req: pb::StartContainerRequest) -> TaskResult<()> {
        self.call(format!("start_container {}", req.container_id));
        Ok(())
    }
    async fn remove_container(&self, req: pb::RemoveContainerRequest) -> TaskResult<()> {
        self.call(format!("remove_container {}", req.container_id));
        let keys: Vec<_> = self
            .procs
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.0 == req.container_id)
            .cloned()
            .collect();
        for (c, e) in keys {
            self.exit(&c, &e, 137);
        }
        Ok(())
    }
    async fn exec_process(
        &self,
        req: pb::ExecProcessRequest,
    ) -> TaskResult<pb::ExecProcessResponse> {
        self.call(format!("exec_process {} {}", req.container_id, req.exec_id));
        Ok(pb::ExecProcessResponse {
            pid: self.add(&req.container_id, &req.exec_id),
            ..Default::default()
        })
    }
    async fn signal_process(&self, req: pb::SignalProcessRequest) -> TaskResult<()> {
        self.call(format!(
            "signal_process {} {:?} {}",
            req.container_id, req.exec_id, req.signal
        ));
        if !self.ignores_signals {
            self.exit(&req.container_id, &req.exec_id, 128 + req.signal as i32);
        }
        Ok(())
    }
    async fn wait_process(
        &self,
        req: pb::WaitProcessRequest,
    ) -> TaskResult<pb::WaitProcessResponse> {
        let status = self
            .until(&req.container_id, &req.exec_id, |p| p.exit)
            .await?;
        Ok(pb::WaitProcessResponse {
            status,
            ..Default::default()
        })
    }
    async fn read_stdout(&self, req: pb::ReadStreamRequest) -> TaskResult<pb::ReadStreamResponse> {
        let data = self
            .until(&req.container_id, &req.exec_id, |p| {
                match p.stdout.pop_front() {
                    Some(d) => Some(d),
                    None => p.exit.map(|_| Vec::new()),
                }
            })
            .await?;
        Ok(pb::ReadStreamResponse {
            data,
            ..Default::default()
        })
    }
    async fn read_stderr(&self, req: pb::ReadStreamRequest) -> TaskResult<pb::ReadStreamResponse> {
        self.until(&req.container_id, &req.exec_id, |p| p.exit)
            .await?;
        Ok(pb::ReadStreamResponse::default())
    }
    async fn write_stdin(
        &self,
        req: pb::WriteStreamRequest,
    ) -> TaskResult<pb::WriteStreamResponse> {
        self.stdin.lock().unwrap().extend_from_slice(&req.data);
        Ok(pb::WriteStreamResponse {
            len: req.data.len() as u32,
            ..Default::default()
        })
    }
    async fn close_stdin(&self, req: pb::CloseStdinRequest) -> TaskResult<()> {
        self.call(format!(
            "close_stdin {} {:?}",
            req.container_id, req.exec_id
        ));
        self.changed.notify_waiters();
        Ok(())
    }
    async fn tty_win_resize(&self, _req: pb::TtyWinResizeRequest) -> TaskResult<()> {
        Ok(())
    }
    async fn pause_container(&self, _req: pb::PauseContainerRequest) -> TaskResult<()> {
        Ok(())
    }
    async fn resume_container(&self, _req: pb::ResumeContainerRequest) -> TaskResult<()> {
        Ok(())
    }
    async fn update_container(&self, _req: pb::UpdateContainerRequest) -> TaskResult<()> {
        Ok(())
    }
    async fn stats_container(
        &self,
        _req: pb::StatsContainerRequest,
    ) -> TaskResult<pb::StatsContainerResponse> {
        Ok(pb::StatsContainerResponse {
            memory: MessageField::some(pb::MemoryStats {
                usage_bytes: 4096,
                ..Default::default()
            }),
            ..Default::default()
        })
    }
    async fn list_processes(
        &self,
        _req: pb::ListProcessesRequest,
    ) -> TaskResult<pb::ListProcessesResponse> {
        Ok(pb::ListProcessesResponse::default())
    }
    async fn get_oom_event(&self, _req: pb::GetOOMEventRequest) -> TaskResult<pb::OOMEvent> {
        std::future::pending().await
    }
    async fn update_interface(&self, req: pb::UpdateInterfaceRequest) -> TaskResult<()> {
        self.call(format!(
            "update_interface {} {}",
            req.interface.name, req.interface.hw_addr
        ));
        if self.fail_update_interface {
            return Err(TaskError::internal("agent UpdateInterface: no link"));
        }
        Ok(())
    }
    async fn update_routes(&self, req: pb::UpdateRoutesRequest) -> TaskResult<()> {
        self.call(format!("update_routes {}", req.routes.routes.len()));
        Ok(())
    }
    async fn add_arp_neighbors(&self, req: pb::AddARPNeighborsRequest) -> TaskResult<()> {
        self.call(format!("add_arp_neighbors {}", req.neighbors.len()));
        Ok(())
    }
    async fn check(&self, _: pb::CheckRequest) -> TaskResult<pb::HealthCheckResponse> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        if self.wedged.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let failing = self
            .failing_checks
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if self.dead.load(Ordering::SeqCst) || failing.is_ok() {
            return Err(TaskError::internal("agent connection closed"));
        }
        Ok(pb::HealthCheckResponse::default())
    }
}

struct FakeVm {
    agent: Arc<FakeAgent>,
    share: Share,
    exited: watch::Sender<bool>,
    shutdowns: Arc<AtomicU32>,
    shutdown_kinds: Arc<Mutex<Vec<Shutdown>>>,
    network: Option<GuestNetwork>,
}

#[async_trait]
impl SandboxVm for FakeVm {
    fn agent(&self) -> Arc<dyn GuestAgent> {
        self.agent.clone()
    }
    fn share(&self) -> &Share {
        &self.share
    }
    fn exited(&self) -> watch::Receiver<bool> {
        self.exited.subscribe()
    }
    fn guest_network(&self) -> Option<&GuestNetwork> {
        self.network.as_ref()
    }
    async fn shutdown(self: Box<Self>, how: Shutdown) -> TaskResult<()> {
        self.shutdowns.fetch_add(1, Ordering::SeqCst);
        self.shutdown_kinds.lock().unwrap().push(how);
        self.exited.send_replace(true);
        Ok(())
    }
}

struct FakeLauncher {
    agent: Arc<FakeAgent>,
    vm_dir: PathBuf,
    boots: Mutex<Vec<BootRequest>>,
    shutdowns: Arc<AtomicU32>,
    shutdown_kinds: Arc<Mutex<Vec<Shutdown>>>,
    /// Sender of the booted VM's "exited" flag, so a test can kill the VM.
    vm_exited: Mutex<Option<watch::Sender<bool>>>,
    fail: Option<String>,
    /// What the booted VM's pod network tells the agent.
    network: Option<GuestNetwork>,
}

#[async_trait]
impl VmLauncher for FakeLauncher {
    async fn boot(&self, req: BootRequest) -> TaskResult<Box<dyn SandboxVm>> {
        self.boots.lock().unwrap().push(req);
        if let Some(f) = &self.fail {
            return Err(TaskError::invalid(f.clone()));
        }
        let (tx, _) = watch::channel(false);
        *self.vm_exited.lock().unwrap() = Some(tx.clone());
        Ok(Box::new(FakeVm {
            agent: self.agent.clone(),
            share: Share::in_vm_dir(&self.vm_dir, SharedFs::VirtioFs),
            exited: tx,
            shutdowns: self.shutdowns.clone(),
            shutdown_kinds: self.shutdown_kinds.clone(),
            network: self.network.clone(),
        }))
    }
}

#[derive(Default)]
struct FakeMounter {
    mounted: Mutex<Vec<String>>,
    unmounted: Mutex<Vec<String>>,
}

impl HostMounter for FakeMounter {
    fn mount(&self, plan: &MountPlan) -> TaskResult<()> {
        self.mounted.lock().unwrap().push(plan.container_id.clone());
        Ok(())
    }
    fn unmount(&self, plan: &MountPlan) -> TaskResult<()> {
        self.unmounted
            .lock()
            .unwrap()
            .push(plan.container_id.clone());
        Ok(())
    }
}

struct Harness {
    core: TaskCore,
    events: EventReceiver,
    agent: Arc<FakeAgent>,
    launcher: Arc<FakeLauncher>,
    mounter: Arc<FakeMounter>,
    exit: Arc<ExitSignal>,
    dir: tempfile::TempDir,
}

fn harness_with(agent: FakeAgent, fail_boot: Option<&str>) -> Harness {
    harness_full(agent, fail_boot, None)
}

fn harness_full(
    agent: FakeAgent,
    fail_boot: Option<&str>,
    network: Option<GuestNetwork>,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let agent = Arc::new(agent);
    let launcher = Arc::new(FakeLauncher {
        agent: agent.clone(),
        vm_dir: dir.path().to_path_buf(),
        boots: Mutex::new(Vec::new()),
        shutdowns: Arc::new(AtomicU32::new(0)),
        shutdown_kinds: Arc::new(Mutex::new(Vec::new())),
        vm_exited: Mutex::new(None),
        fail: fail_boot.map(str::to_string),
        network,
    });
    let mounter = Arc::new(FakeMounter::default());
    let (tx, events) = events::channel();
    let exit = Arc::new(ExitSignal::default());
    let platform = Platform {
        launcher: launcher.clone(),
        mounter: mounter.clone(),
    };
    Harness {
        core: TaskCore::new(platform, tx, exit.clone()),
        events,
        agent,
        launcher,
        mounter,
        exit,
        dir,
    }
}

fn harness() -> Harness {
    harness_with(FakeAgent::default(), None)
}

impl Harness {
    fn bundle(&self, id: &str, spec: serde_json::Value) -> PathBuf {
        let b = self.dir.path().join("bundles").join(id);
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
        std::fs::write(b.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
        b
    }

    fn create_req(&self, id: &str, spec: serde_json::Value) -> CreateTaskRequest {
        CreateTaskRequest {
            id: id.into(),
            bundle: self.bundle(id, spec).to_string_lossy().into_owned(),
            ..Default::default()
        }
    }

    async fn next_event(&mut self) -> TaskEvent {
        tokio::time::timeout(STEP, self.events.recv())
            .await
            .expect("an event in time")
            .expect("channel open")
    }

    /// Creates and starts container `id` (spec hostname "h"), taking both events.
    async fn create_and_start(&mut self, id: &str) {
        self.core
            .create(&self.create_req(id, spec("h")))
            .await
            .unwrap();
        self.next_event().await;
        self.core
            .start(&StartRequest {
                id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        self.next_event().await;
    }

    fn no_event(&mut self) {
        assert!(self.events.try_recv().is_err(), "no further event expected");
    }

    fn shutdowns(&self) -> u32 {
        self.launcher.shutdowns.load(Ordering::SeqCst)
    }
}

fn spec(hostname: &str) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "hostname": hostname,
        "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"}]}
    })
}

async fn state(
    core: &TaskCore,
    id: &str,
    exec_id: &str,
) -> TaskResult<containerd_shim::api::StateResponse> {
    let req = StateRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    core.state_of(&req).await
}

#[tokio::test]
async fn run_to_exit_publishes_events_in_order_and_drains_output_first() {
    let mut h = harness();
    // containerd's side of the stdout FIFO is open before Create.
    let fifo = h.dir.path().join("stdout");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let reader = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(&fifo)
        .unwrap();

    let mut req = h.create_req("c1", spec("host1"));
    req.stdout = fifo.to_string_lossy().into_owned();
    let pid = h.core.create(&req).await.unwrap().pid;
    assert!(pid > 0);
    assert_eq!(h.launcher.boots.lock().unwrap()[0].sandbox_id, "c1");
    assert_eq!(h.agent.calls.lock().unwrap()[0], "create_sandbox c1 host1");
    assert_eq!(*h.mounter.mounted.lock().unwrap(), vec!["c1"]);
    match h.next_event().await {
        TaskEvent::Create(e) => {
            assert_eq!((e.container_id.as_str(), e.pid), ("c1", pid));
            assert_eq!(e.io.stdout, req.stdout);
        }
        e => panic!("expected TaskCreate, got {e:?}"),
    }
    assert_eq!(
        state(&h.core, "c1", "").await.unwrap().status.enum_value(),
        Ok(Status::CREATED)
    );

    let start = StartRequest {
        id: "c1".into(),
        ..Default::default()
    };
    assert_eq!(h.core.start(&start).await.unwrap().pid, pid);
    match h.next_event().await {
        TaskEvent::Start(e) => assert_eq!((e.container_id.as_str(), e.pid), ("c1", pid)),
        e => panic!("expected TaskStart, got {e:?}"),
    }
    assert_eq!(
        state(&h.core, "c1", "").await.unwrap().status.enum_value(),
        Ok(Status::RUNNING)
    );

    // Two waiters at once; both get the status.
    let wait = WaitRequest {
        id: "c1".into(),
        ..Default::default()
    };
    let (w1, w2) = (h.core.wait(&wait), h.core.wait(&wait));
    h.agent.output("c1", "", b"hello ");
    h.agent.output("c1", "", b"tail");
    h.agent.exit("c1", "", 3);
    let (r1, r2) = tokio::time::timeout(STEP, futures::future::join(w1, w2))
        .await
        .unwrap();
    assert_eq!((r1.unwrap().exit_status, r2.unwrap().exit_status), (3, 3));
    match h.next_event().await {
        TaskEvent::Exit(e) => {
            assert_eq!(
                (e.container_id.as_str(), e.id.as_str(), e.pid, e.exit_status),
                ("c1", "c1", pid, 3)
            );
            assert!(e.exited_at.seconds > 0);
        }
        e => panic!("expected TaskExit, got {e:?}"),
    }
    // The exit was published only after all output reached the FIFO: it is all there now,
    // read without waiting for more.
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match reader.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("reading the FIFO: {e}"),
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&got),
        "hello tail",
        "the FIFO's content when TaskExit came"
    );
    let st = state(&h.core, "c1", "").await.unwrap();
    assert_eq!(
        (st.status.enum_value(), st.exit_status),
        (Ok(Status::STOPPED), 3)
    );

    let kill = KillRequest {
        id: "c1".into(),
        signal: 15,
        ..Default::default()
    };
    assert_eq!(h.core.kill(&kill).await.unwrap_err().code, Code::NOT_FOUND);

    let del = h
        .core
        .delete(&DeleteRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((del.pid, del.exit_status), (pid, 3));
    match h.next_event().await {
        TaskEvent::Delete(e) => assert_eq!(
            (e.container_id.as_str(), e.exit_status, e.pid),
            ("c1", 3, pid)
        ),
        e => panic!("expected TaskDelete, got {e:?}"),
    }
    assert_eq!(*h.mounter.unmounted.lock().unwrap(), vec!["c1"]);
    assert_eq!(h.shutdowns(), 1, "the last container's delete stops the VM");
    assert!(h
        .agent
        .calls
        .lock()
        .unwrap()
        .contains(&"remove_container c1".to_string()));
    h.no_event();

    h.core.shutdown(&ShutdownRequest::default()).await.unwrap();
    tokio::time::timeout(STEP, h.exit.wait())
        .await
        .expect("shutdown signals the shim to exit");
}

#[tokio::test]
async fn exec_and_kill_report_their_own_ids_and_statuses() {
    let mut h = harness();
    let req = h.create_req("c1", spec("h"));
    let init_pid = h.core.create(&req).await.unwrap().pid;
    h.core
        .start(&StartRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    h.next_event().await;
    h.next_event().await;

    let process = serde_json::json!({"args": ["echo", "x"], "cwd": "/"});
    let exec = ExecProcessRequest {
        id: "c1".into(),
        exec_id: "e1".into(),
        spec: MessageField::some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(&process).unwrap(),
            ..Default::default()
        }),
        ..Default::default()
    };
    h.core.exec(&exec).await.unwrap();
    assert_eq!(
        h.core.exec(&exec).await.unwrap_err().code,
        Code::ALREADY_EXISTS
    );
    match h.next_event().await {
        TaskEvent::ExecAdded(e) => {
            assert_eq!((e.container_id.as_str(), e.exec_id.as_str()), ("c1", "e1"))
        }
        e => panic!("expected TaskExecAdded, got {e:?}"),
    }
    assert_eq!(
        state(&h.core, "c1", "e1")
            .await
            .unwrap()
            .status
            .enum_value(),
        Ok(Status::CREATED)
    );
    let epid = h
        .core
        .start(&StartRequest {
            id: "c1".into(),
            exec_id: "e1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .pid;
    assert_ne!(epid, init_pid);
    match h.next_event().await {
        TaskEvent::ExecStarted(e) => assert_eq!((e.exec_id.as_str(), e.pid), ("e1", epid)),
        e => panic!("expected TaskExecStarted, got {e:?}"),
    }
    h.agent.exit("c1", "e1", 4);
    match h.next_event().await {
        TaskEvent::Exit(e) => assert_eq!(
            (e.container_id.as_str(), e.id.as_str(), e.pid, e.exit_status),
            ("c1", "e1", epid, 4)
        ),
        e => panic!("expected TaskExit of the exec, got {e:?}"),
    }
    let d = h
        .core
        .delete(&DeleteRequest {
            id: "c1".into(),
            exec_id: "e1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(d.exit_status, 4);
    h.no_event();
    assert_eq!(h.shutdowns(), 0, "deleting an exec keeps the VM");

    // A running init cannot be deleted; SIGKILL ends it with 137.
    let err = h
        .core
        .delete(&DeleteRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::FAILED_PRECONDITION);
    h.core
        .kill(&KillRequest {
            id: "c1".into(),
            signal: 9,
            ..Default::default()
        })
        .await
        .unwrap();
    match h.next_event().await {
        TaskEvent::Exit(e) => assert_eq!((e.id.as_str(), e.exit_status), ("c1", 137)),
        e => panic!("expected TaskExit, got {e:?}"),
    }
    let stats = h
        .core
        .stats(&StatsRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        stats.stats.type_url,
        kata_shim::task::metrics::METRICS_TYPE_URL
    );
    let m =
        containerd_shim::protos::cgroups_v2::metrics::Metrics::parse_from_bytes(&stats.stats.value)
            .unwrap();
    assert_eq!(m.memory.usage, 4096);
    h.core
        .delete(&DeleteRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(h.shutdowns(), 1);
}

#[tokio::test]
async fn containers_of_one_pod_share_the_vm() {
    let mut h = harness();
    let mut pod = spec("pod");
    pod["annotations"] = serde_json::json!({"io.kubernetes.cri.sandbox-id": "sb1"});
    h.core
        .create(&h.create_req("sb1", pod.clone()))
        .await
        .unwrap();
    h.core.create(&h.create_req("app", pod)).await.unwrap();
    assert_eq!(h.launcher.boots.lock().unwrap().len(), 1, "one VM per pod");
    assert_eq!(h.launcher.boots.lock().unwrap()[0].sandbox_id, "sb1");
    h.next_event().await;
    h.next_event().await;
    h.core
        .delete(&DeleteRequest {
            id: "app".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(h.shutdowns(), 0);
    h.core.shutdown(&ShutdownRequest::default()).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), h.exit.wait())
            .await
            .is_err(),
        "Shutdown with a container left must not exit the shim"
    );
    h.core
        .delete(&DeleteRequest {
            id: "sb1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(h.shutdowns(), 1);
}

#[tokio::test]
async fn vm_death_exits_every_task_with_255_and_delete_cleans_up() {
    let mut h = harness();
    let pid = h
        .core
        .create(&h.create_req("c1", spec("h")))
        .await
        .unwrap()
        .pid;
    h.core
        .start(&StartRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    h.next_event().await;
    h.next_event().await;
    let tx = h.launcher.vm_exited.lock().unwrap().clone().unwrap();
    h.agent.dead.store(true, Ordering::SeqCst);
    h.agent.changed.notify_waiters();
    tx.send_replace(true);
    match h.next_event().await {
        TaskEvent::Exit(e) => assert_eq!((e.id.as_str(), e.pid, e.exit_status), ("c1", pid, 255)),
        e => panic!("expected TaskExit, got {e:?}"),
    }
    let w = h
        .core
        .wait(&WaitRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(w.exit_status, 255);
    let d = h
        .core
        .delete(&DeleteRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(d.exit_status, 255);
    assert!(!h
        .agent
        .calls
        .lock()
        .unwrap()
        .contains(&"remove_container c1".to_string()));
    assert_eq!(*h.mounter.unmounted.lock().unwrap(), vec!["c1"]);
    assert_eq!(h.shutdowns(), 1);
    // The waiter's own report (its agent call failed too) must not publish a second exit.
    match h.events.try_recv() {
        Ok(TaskEvent::Delete(_)) => {}
        other => panic!("expected only TaskDelete, got {other:?}"),
    }
    h.no_event();
}

#[tokio::test]
async fn failed_boot_names_the_cause_and_leaves_nothing() {
    let mut h = harness_with(
        FakeAgent::default(),
        Some("kernel /nonexistent/vmlinux: not found"),
    );
    let err = h
        .core
        .create(&h.create_req("c1", spec("h")))
        .await
        .unwrap_err();
    assert!(err.message.contains("/nonexistent/vmlinux"), "{err}");
    assert!(h.mounter.mounted.lock().unwrap().is_empty());
    h.no_event();
    // A failed Create leaves the shim ready to exit.
    h.core.shutdown(&ShutdownRequest::default()).await.unwrap();
    tokio::time::timeout(STEP, h.exit.wait()).await.unwrap();
}

#[tokio::test]
async fn failed_container_create_unmounts_and_stops_the_vm() {
    let agent = FakeAgent {
        fail_create_container: true,
        ..Default::default()
    };
    let mut h = harness_with(agent, None);
    let err = h
        .core
        .create(&h.create_req("c1", spec("h")))
        .await
        .unwrap_err();
    assert!(
        err.message.contains("/bin/nothing") && err.message.contains("c1"),
        "{err}"
    );
    assert_eq!(*h.mounter.unmounted.lock().unwrap(), vec!["c1"]);
    assert_eq!(h.shutdowns(), 1);
    h.no_event();
    assert_eq!(
        state(&h.core, "c1", "").await.unwrap_err().code,
        Code::NOT_FOUND
    );
}

#[tokio::test]
async fn spec_without_process_fails_before_booting() {
    let mut h = harness();
    let mut s = spec("h");
    s.as_object_mut().unwrap().remove("process");
    let err = h.core.create(&h.create_req("c1", s)).await.unwrap_err();
    assert!(err.message.contains("no process"), "{err}");
    assert!(h.launcher.boots.lock().unwrap().is_empty());
    h.no_event();
}

#[tokio::test]
async fn without_a_spec_hostname_the_vm_is_named_after_the_sandbox() {
    let mut h = harness();
    let mut s = spec("");
    s.as_object_mut().unwrap().remove("hostname");
    h.core.create(&h.create_req("c9", s)).await.unwrap();
    assert_eq!(h.agent.calls.lock().unwrap()[0], "create_sandbox c9 c9");
    h.next_event().await;
}

#[tokio::test]
async fn runtime_options_config_path_reaches_the_launcher() {
    let mut h = harness();
    // runtimeoptions.v1.Options { type_name = 1, config_path = 2 }
    let mut value = vec![0x12, 9];
    value.extend_from_slice(b"/x/k.toml");
    let mut req = h.create_req("c1", spec("h"));
    req.options = MessageField::some(Any {
        type_url: "runtimeoptions.v1.Options".into(),
        value,
        ..Default::default()
    });
    h.core.create(&req).await.unwrap();
    assert_eq!(
        h.launcher.boots.lock().unwrap()[0].config_path.as_deref(),
        Some(Path::new("/x/k.toml"))
    );
    h.next_event().await;
}

impl Harness {
    /// Waits until the fake agent saw CloseStdin.
    async fn stdin_closed(&self) {
        let agent = self.agent.clone();
        let closed = async move {
            loop {
                let notified = agent.changed.notified();
                if agent
                    .calls
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|c| c.starts_with("close_stdin"))
                {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(STEP, closed)
            .await
            .expect("CloseStdin in time");
    }
}

#[tokio::test]
async fn stdin_fifo_is_forwarded_then_closed() {
    let h = harness();
    let fifo = h.dir.path().join("stdin");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut req = h.create_req("c1", spec("h"));
    req.stdin = fifo.to_string_lossy().into_owned();
    h.core.create(&req).await.unwrap();
    // containerd's writer appears after Create, writes and closes.
    let path = fifo.clone();
    tokio::task::spawn_blocking(move || std::fs::write(path, b"input data"))
        .await
        .unwrap()
        .unwrap();
    h.stdin_closed().await;
    assert_eq!(&*h.agent.stdin.lock().unwrap(), b"input data");
}

#[tokio::test]
async fn close_io_without_a_stdin_writer_still_closes_stdin() {
    let h = harness();
    let fifo = h.dir.path().join("stdin");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut req = h.create_req("c1", spec("h"));
    req.stdin = fifo.to_string_lossy().into_owned();
    h.core.create(&req).await.unwrap();
    let close = containerd_shim::api::CloseIORequest {
        id: "c1".into(),
        stdin: true,
        ..Default::default()
    };
    h.core.close_io(&close).await.unwrap();
    h.stdin_closed().await;
    assert!(h.agent.stdin.lock().unwrap().is_empty());
}

#[tokio::test]
async fn pause_resume_and_update() {
    use containerd_shim::api::{PauseRequest, ResumeRequest, UpdateTaskRequest};
    let mut h = harness();
    h.core.create(&h.create_req("c1", spec("h"))).await.unwrap();
    let pause = PauseRequest {
        id: "c1".into(),
        ..Default::default()
    };
    assert_eq!(
        h.core.pause(&pause).await.unwrap_err().code,
        Code::FAILED_PRECONDITION,
        "a created (not started) container cannot be paused"
    );
    h.core
        .start(&StartRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    h.next_event().await;
    h.next_event().await;
    h.core.pause(&pause).await.unwrap();
    match h.next_event().await {
        TaskEvent::Paused(e) => assert_eq!(e.container_id, "c1"),
        e => panic!("expected TaskPaused, got {e:?}"),
    }
    assert_eq!(
        state(&h.core, "c1", "").await.unwrap().status.enum_value(),
        Ok(Status::PAUSED)
    );
    h.core
        .resume(&ResumeRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    match h.next_event().await {
        TaskEvent::Resumed(e) => assert_eq!(e.container_id, "c1"),
        e => panic!("expected TaskResumed, got {e:?}"),
    }
    assert_eq!(
        state(&h.core, "c1", "").await.unwrap().status.enum_value(),
        Ok(Status::RUNNING)
    );
    let mut update = UpdateTaskRequest {
        id: "c1".into(),
        resources: MessageField::some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: br#"{"memory": {"limit": 104857600}}"#.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    };
    h.core.update(&update).await.unwrap();
    update.resources.as_mut().unwrap().value = b"not json".to_vec();
    assert_eq!(
        h.core.update(&update).await.unwrap_err().code,
        Code::INVALID_ARGUMENT
    );
}

/// A guest that acknowledges SIGKILL but never reports the exit cannot keep its pod alive:
/// after the grace period the task exits 137 and the VM is stopped, which ends the other
/// containers' processes (255); Delete then works without the guest.
#[tokio::test(start_paused = true)]
async fn a_guest_that_never_reports_a_sigkilled_exit_loses_its_vm() {
    let agent = FakeAgent {
        ignores_signals: true,
        ..Default::default()
    };
    let mut h = harness_with(agent, None);
    for id in ["c1", "c2"] {
        h.create_and_start(id).await;
    }
    let kill = |signal: i32| KillRequest {
        id: "c1".into(),
        signal: signal as u32,
        ..Default::default()
    };
    // Any other signal may be ignored by the workload: no deadline.
    h.core.kill(&kill(libc::SIGTERM)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    h.no_event();
    assert_eq!(h.shutdowns(), 0);
    h.core.kill(&kill(libc::SIGKILL)).await.unwrap();
    h.core.kill(&kill(libc::SIGKILL)).await.unwrap();
    let mut exits = HashMap::new();
    while exits.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(60), h.events.recv()).await {
            Ok(Some(TaskEvent::Exit(e))) => {
                assert!(exits.insert(e.id.clone(), e.exit_status).is_none(), "{e:?}");
            }
            other => panic!("expected TaskExit, got {other:?}"),
        }
    }
    assert_eq!(exits["c1"], 137);
    assert_eq!(exits["c2"], 255);
    assert_eq!(h.shutdowns(), 1);
    for id in ["c1", "c2"] {
        h.core
            .delete(&DeleteRequest {
                id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert_eq!(h.shutdowns(), 1, "the VM is stopped once");
}

#[tokio::test(start_paused = true)]
async fn a_guest_whose_agent_stops_answering_is_declared_dead_within_30_s() {
    let mut h = harness();
    h.create_and_start("c1").await;
    // An answering agent keeps its VM however long it runs, and so does one that misses a
    // check or two now and then: only missed checks in a row count.
    tokio::time::sleep(Duration::from_secs(60)).await;
    for _ in 0..3 {
        h.agent.failing_checks.store(2, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    assert!(
        h.agent.checks.load(Ordering::SeqCst) >= 20,
        "checked all along"
    );
    assert_eq!(h.shutdowns(), 0);
    h.no_event();

    h.agent.wedged.store(true, Ordering::SeqCst);
    let wedged_at = tokio::time::Instant::now();
    match tokio::time::timeout(Duration::from_secs(60), h.events.recv()).await {
        Ok(Some(TaskEvent::Exit(e))) => assert_eq!((e.id.as_str(), e.exit_status), ("c1", 255)),
        other => panic!("expected TaskExit, got {other:?}"),
    }
    let took = wedged_at.elapsed();
    assert!(
        took <= Duration::from_secs(30),
        "declared dead after {took:?}"
    );
    assert_eq!(
        *h.launcher.shutdown_kinds.lock().unwrap(),
        [Shutdown::Abandon],
        "the VM is stopped once, without asking the guest"
    );
}

/// Create, Start, Kill and Delete repeated (containerd retrying after a timeout or a restart)
/// answer what already happened, and never boot a second VM.
#[tokio::test]
async fn repeated_requests_answer_consistently_and_never_boot_a_second_vm() {
    let mut h = harness();
    h.create_and_start("c1").await;
    let again = h
        .core
        .create(&h.create_req("c1", spec("h")))
        .await
        .unwrap_err();
    assert_eq!(again.code, Code::ALREADY_EXISTS, "{again:?}");
    let start = StartRequest {
        id: "c1".into(),
        ..Default::default()
    };
    let restart = h.core.start(&start).await.unwrap_err();
    assert_eq!(restart.code, Code::FAILED_PRECONDITION, "{restart:?}");
    let kill = KillRequest {
        id: "c1".into(),
        signal: libc::SIGKILL as u32,
        ..Default::default()
    };
    h.core.kill(&kill).await.unwrap();
    match h.next_event().await {
        TaskEvent::Exit(e) => assert_eq!(e.exit_status, 137),
        e => panic!("expected TaskExit, got {e:?}"),
    }
    let killed_again = h.core.kill(&kill).await.unwrap_err();
    assert_eq!(killed_again.code, Code::NOT_FOUND, "{killed_again:?}");
    let delete = DeleteRequest {
        id: "c1".into(),
        ..Default::default()
    };
    assert_eq!(h.core.delete(&delete).await.unwrap().exit_status, 137);
    let deleted_again = h.core.delete(&delete).await.unwrap_err();
    assert_eq!(deleted_again.code, Code::NOT_FOUND, "{deleted_again:?}");
    let start_deleted = h.core.start(&start).await.unwrap_err();
    assert_eq!(start_deleted.code, Code::NOT_FOUND, "{start_deleted:?}");
    assert_eq!(h.launcher.boots.lock().unwrap().len(), 1, "one VM");
}

fn pod_network() -> GuestNetwork {
    GuestNetwork::from_scan(&Scan {
        interfaces: vec![PodInterface {
            index: 2,
            name: "eth0".into(),
            mac: vec![0x0a, 0x58, 0, 0, 0, 5],
            mtu: 1500,
            addresses: vec![("10.88.0.5".parse().unwrap(), 16)],
        }],
        routes: vec![PodRoute {
            dest: None,
            gateway: Some("10.88.0.1".parse().unwrap()),
            device: "eth0".into(),
            source: None,
            scope: 0,
        }],
        neighbours: vec![PodNeighbour {
            ip: "10.88.0.1".parse().unwrap(),
            mac: vec![0xee, 0, 0, 0, 0, 1],
            device: "eth0".into(),
        }],
    })
}

fn harness_with_network(agent: FakeAgent) -> Harness {
    harness_full(agent, None, Some(pod_network()))
}

#[tokio::test]
async fn the_pod_netns_reaches_the_launcher_and_the_agent_is_told_the_network_after_create_sandbox()
{
    let h = harness_with_network(FakeAgent::default());
    h.core
        .create(&h.create_req("p1", spec("pod")))
        .await
        .unwrap();
    assert_eq!(
        h.launcher.boots.lock().unwrap()[0].netns.as_deref(),
        Some(Path::new("/proc/1/ns/net"))
    );
    let calls = h.agent.calls.lock().unwrap().clone();
    assert_eq!(
        calls[..4],
        [
            "create_sandbox p1 pod",
            "update_interface eth0 0a:58:00:00:00:05",
            "update_routes 1",
            "add_arp_neighbors 1",
        ]
    );
    // A container without a netns path (ctr run) boots a VM without a network.
    let h = harness();
    let mut s = spec("c");
    s["linux"]["namespaces"] = serde_json::json!([{"type": "network"}]);
    h.core.create(&h.create_req("c1", s)).await.unwrap();
    assert_eq!(h.launcher.boots.lock().unwrap()[0].netns, None);
}

#[tokio::test]
async fn a_guest_that_cannot_take_the_network_fails_the_sandbox_and_loses_its_vm() {
    let h = harness_with_network(FakeAgent {
        fail_update_interface: true,
        ..Default::default()
    });
    let err = h
        .core
        .create(&h.create_req("p1", spec("pod")))
        .await
        .expect_err("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("configuring interface eth0 (0a:58:00:00:00:05)") && msg.contains("no link"),
        "{msg}"
    );
    assert_eq!(h.shutdowns(), 1);
    assert!(!h
        .agent
        .calls
        .lock()
        .unwrap()
        .iter()
        .any(|c| c.starts_with("create_container")));
}
