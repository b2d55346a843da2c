//! The agent API end to end: the real guest (kernel + initrd whose /init is kata-agent) booted
//! through the shim's `Vm::boot` (QEMU, vsock, shared fs), driven RPC by RPC with no
//! containerd in between: containers from a busybox rootfs, stdio, execs, signals, exit codes,
//! stats, pause/resume, bad input answered with errors while the agent keeps serving, destroy.
//!
//! Uses build/configuration-qemu.toml and build/configuration-qemu-aarch64.toml from
//! `make guest`. For agent development KATA_RS_TEST_{CONFIG,INITRD,KERNEL} (x86_64) and
//! KATA_RS_TEST_AARCH64_{CONFIG,INITRD,KERNEL} override the config and the guest.

use std::path::{Path, PathBuf};

use kata_e2e::agent_rpc::{
    create, create_and_start, exec, guest_config, guest_dialer, make_dirs, make_rootfs, read_all,
    remove, run_in_vm, signal, start, wait, Stream, BUSYBOX, STEP,
};
use kata_e2e::*;
use kata_shim::vm::Vm;
use protocol::agent::*;
use serde_json::json;
use tokio::io::AsyncBufReadExt;

/// The suite's OCI spec: the usual one with hostname `agent-test`, capabilities, an rlimit,
/// sysfs and the cgroup fs, pids and memory limits and a sysctl.
fn agent_spec(root: &str, args: &[&str]) -> Vec<u8> {
    kata_e2e::agent_rpc::spec(
        root,
        args,
        json!({
            "hostname": "agent-test",
            "process": {
                "capabilities": {
                    "bounding": ["CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"],
                    "effective": ["CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"],
                    "permitted": ["CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"]
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
            },
            "mounts": [
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                 "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
            ],
            "linux": {
                "resources": {"pids": {"limit": 64}, "memory": {"limit": 134217728}},
                "sysctl": {"kernel.shm_rmid_forced": "1"},
                "maskedPaths": ["/proc/keys"]
            }
        }),
    )
}

/// A busybox rootfs with the directories the suite's specs mount on or write to.
fn busybox_rootfs(busybox: &Path, vm: &Vm, cid: &str) -> String {
    make_rootfs(busybox, vm.share(), cid, |root| {
        make_dirs(root, &["dev", "tmp"])
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_api_end_to_end() {
    let config = guest_config("build/configuration-qemu.toml", "KATA_RS_TEST");
    run_in_vm(config, "agentapi", |vm, sandbox_id| {
        Box::pin(drive(vm, sandbox_id, PathBuf::from(BUSYBOX)))
    })
    .await;
}

/// The same suite against the arm64 guest (QEMU `virt`, TCG on an x86 host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_api_end_to_end_arm64() {
    let config = guest_config(
        "build/configuration-qemu-aarch64.toml",
        "KATA_RS_TEST_AARCH64",
    );
    // busybox-static for arm64, from scripts/lib.sh.
    let busybox = PathBuf::from(
        shell_var("BUSYBOX_ARM64").unwrap_or_else(|e| panic!("BUSYBOX_ARM64: {e:#}")),
    );
    require_built(std::slice::from_ref(&busybox));
    run_in_vm(config, "agentapiarm", move |vm, sandbox_id| {
        Box::pin(drive(vm, sandbox_id, busybox))
    })
    .await;
}

async fn drive(vm: &Vm, sandbox_id: &str, busybox: PathBuf) -> Result<(), String> {
    let busybox = busybox.as_path();
    let agent = vm.agent().with_timeout(STEP);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    agent
        .create_sandbox(CreateSandboxRequest {
            sandbox_id: sandbox_id.into(),
            hostname: "agent-sandbox".into(),
            storages: vec![vm.share().storage()],
            host_time_sec: now.as_secs() as i64,
            host_time_nsec: now.subsec_nanos() as i64,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("CreateSandbox: {e}"))?;

    let details = agent
        .get_guest_details(GuestDetailsRequest::new())
        .await
        .map_err(|e| format!("GetGuestDetails: {e}"))?;
    println!(
        "guest: kernel {} arch {}; agent listening at {} ms of guest uptime; agent RSS {} KiB",
        details.kernel_release,
        details.arch,
        details.listen_uptime_ms,
        details.agent_rss_bytes / 1024
    );
    assert!(details.listen_uptime_ms > 0);
    assert!(details.agent_rss_bytes > 0);
    assert!(
        details.agent_rss_bytes < 10 << 20,
        "agent RSS {} bytes is over the 10 MiB budget",
        details.agent_rss_bytes
    );

    // The log stream (vsock port AGENT_LOG_PORT) replays the buffered early lines to a late
    // reader: the "listening" line was logged long before this connection.
    let dialer = guest_dialer(vm);
    let logs = dialer
        .dial(protocol::AGENT_LOG_PORT)
        .await
        .map_err(|e| format!("dialing the agent log port: {e}"))?;
    let mut logs = tokio::io::BufReader::new(logs).lines();
    let found = tokio::time::timeout(STEP, async {
        while let Ok(Some(line)) = logs.next_line().await {
            if line.contains("kata-agent starting") {
                println!("agent log: {line}");
            }
            if line.contains("agent listening on vsock") {
                println!("agent log: {line}");
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "the log stream carried the agent's startup line"
    );

    // agent.debug_console: a guest shell on DEBUG_CONSOLE_PORT.
    let mut console = dialer
        .dial(protocol::DEBUG_CONSOLE_PORT)
        .await
        .map_err(|e| format!("dialing the debug console: {e}"))?;
    tokio::io::AsyncWriteExt::write_all(&mut console, b"echo dbg-$((6*7)); exit\n")
        .await
        .map_err(|e| format!("writing to the debug console: {e}"))?;
    let mut console = tokio::io::BufReader::new(console).lines();
    let seen = tokio::time::timeout(STEP, async {
        while let Ok(Some(line)) = console.next_line().await {
            if line.contains("dbg-42") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "the debug console ran a shell command");

    // 1. A short-lived container: stdout, stdin, stderr, exit code.
    let root1 = busybox_rootfs(busybox, vm, "c1");
    let pid = create(
        &agent,
        "c1",
        agent_spec(
            &root1,
            &["sh", "-c", "echo hello; cat; echo oops >&2; exit 3"],
        ),
    )
    .await
    .map_err(|e| format!("CreateContainer c1: {e}"))?;
    assert!(pid > 0);
    start(&agent, "c1").await?;
    let n = agent
        .write_stdin(WriteStreamRequest {
            container_id: "c1".into(),
            data: b"from-stdin\n".to_vec(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("WriteStdin: {e}"))?;
    assert_eq!(n.len, 11);
    agent
        .close_stdin(CloseStdinRequest {
            container_id: "c1".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("CloseStdin: {e}"))?;
    assert_eq!(
        read_all(&agent, "c1", "", Stream::Stdout).await,
        "hello\nfrom-stdin\n"
    );
    assert_eq!(read_all(&agent, "c1", "", Stream::Stderr).await, "oops\n");
    assert_eq!(wait(&agent, "c1", "").await, 3);
    assert_eq!(
        wait(&agent, "c1", "c1").await,
        3,
        "exec id == container id is the init"
    );
    remove(&agent, "c1").await?;

    // 1b. A terminal container: the init's stdio is a pty from the container's devpts.
    let root_t = busybox_rootfs(busybox, vm, "t1");
    let mut t_spec: serde_json::Value = serde_json::from_slice(&agent_spec(
        &root_t,
        &["sh", "-c", "tty; read x; echo got-$x"],
    ))
    .unwrap();
    t_spec["process"]["terminal"] = json!(true);
    t_spec["process"]["consoleSize"] = json!({"height": 30, "width": 100});
    create_and_start(&agent, "t1", serde_json::to_vec(&t_spec).unwrap()).await?;
    agent
        .tty_win_resize(TtyWinResizeRequest {
            container_id: "t1".into(),
            rows: 40,
            columns: 120,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("TtyWinResize: {e}"))?;
    agent
        .write_stdin(WriteStreamRequest {
            container_id: "t1".into(),
            data: b"hi\n".to_vec(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("WriteStdin t1: {e}"))?;
    let out = read_all(&agent, "t1", "", Stream::Stdout).await;
    assert!(
        out.contains("/dev/pts/0\r\n") && out.contains("got-hi\r\n"),
        "terminal container printed {out:?}"
    );
    assert_eq!(wait(&agent, "t1", "").await, 0);
    remove(&agent, "t1").await?;

    // 2. A long-lived container: execs, tty, signals, stats, pause/resume.
    let root2 = busybox_rootfs(busybox, vm, "c2");
    // c2 forbids mkdir through seccomp (an OCI profile with a per-syscall errno).
    // CopyFile in two chunks, then bound read-only into c2 as a file mount.
    let copied = format!("{}/sandbox/copied.txt", protocol::GUEST_RUN_DIR);
    for (offset, chunk) in [(0i64, &b"copied "[..]), (7, &b"content\n"[..])] {
        agent
            .copy_file(CopyFileRequest {
                path: copied.clone(),
                file_size: 15,
                file_mode: 0o644,
                dir_mode: 0o755,
                offset,
                data: chunk.to_vec(),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("CopyFile at {offset}: {e}"))?;
    }
    agent
        .set_guest_date_time(SetGuestDateTimeRequest {
            sec: now.as_secs() as i64,
            nsec: now.subsec_nanos() as i64,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("SetGuestDateTime: {e}"))?;
    agent
        .online_cpu_mem(OnlineCPUMemRequest::new())
        .await
        .map_err(|e| format!("OnlineCPUMem: {e}"))?;

    let mut c2_spec: serde_json::Value =
        serde_json::from_slice(&agent_spec(&root2, &["sleep", "1000"])).unwrap();
    c2_spec["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/copied", "type": "bind", "source": copied,
                     "options": ["rbind", "ro"]}),
    );
    c2_spec["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    create_and_start(&agent, "c2", serde_json::to_vec(&c2_spec).unwrap()).await?;

    exec(
        &agent,
        "c2",
        "e1",
        &[
            "sh",
            "-c",
            "echo exec-out; hostname; cat /copied; echo x > /copied || echo ro; \
             cat /proc/sys/kernel/shm_rmid_forced; \
             echo 0 > /proc/sys/kernel/shm_rmid_forced || echo ro",
        ],
        false,
    )
    .await
    .map_err(|e| format!("ExecProcess e1: {e}"))?;
    assert_eq!(
        read_all(&agent, "c2", "e1", Stream::Stdout).await,
        "exec-out\nagent-test\ncopied content\nro\n1\nro\n"
    );
    assert_eq!(wait(&agent, "c2", "e1").await, 0);

    // seccomp: mkdir fails with the profile's errno (EPERM), in an exec like in the init.
    exec(
        &agent,
        "c2",
        "sc",
        &["sh", "-c", "mkdir /tmp/x || echo denied"],
        false,
    )
    .await
    .map_err(|e| format!("ExecProcess sc: {e}"))?;
    assert_eq!(
        read_all(&agent, "c2", "sc", Stream::Stdout).await,
        "denied\n"
    );
    let err = read_all(&agent, "c2", "sc", Stream::Stderr).await;
    assert!(
        err.contains("Operation not permitted"),
        "mkdir said {err:?}"
    );
    assert_eq!(wait(&agent, "c2", "sc").await, 0);
    // Exited, waited and drained: the agent forgot it, and the id can be used again.
    let e = agent
        .wait_process(WaitProcessRequest {
            container_id: "c2".into(),
            exec_id: "sc".into(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not found"), "{e}");
    exec(&agent, "c2", "sc", &["true"], false)
        .await
        .map_err(|e| format!("ExecProcess sc again: {e}"))?;
    assert_eq!(wait(&agent, "c2", "sc").await, 0);

    // The pty comes from the container's devpts: ttyname() resolves inside the container.
    exec(&agent, "c2", "tty1", &["tty"], true)
        .await
        .map_err(|e| format!("ExecProcess tty1: {e}"))?;
    let tty_out = read_all(&agent, "c2", "tty1", Stream::Stdout).await;
    assert!(tty_out.starts_with("/dev/pts/"), "tty printed {tty_out:?}");
    assert_eq!(read_all(&agent, "c2", "tty1", Stream::Stderr).await, "");
    assert_eq!(wait(&agent, "c2", "tty1").await, 0);

    // Concurrent execs: each spawn is its own helper; outputs must not mix.
    let one = |id: &'static str| {
        let agent = &agent;
        async move {
            exec(agent, "c2", id, &["echo", id], false).await?;
            let out = read_all(agent, "c2", id, Stream::Stdout).await;
            let status = wait(agent, "c2", id).await;
            Ok::<_, String>((out, status))
        }
    };
    let (a, b, c, d) = tokio::join!(one("p1"), one("p2"), one("p3"), one("p4"));
    for (id, r) in [("p1", a), ("p2", b), ("p3", c), ("p4", d)] {
        let (out, status) = r.map_err(|e| format!("concurrent exec {id}: {e}"))?;
        assert_eq!((out.as_str(), status), (format!("{id}\n").as_str(), 0));
    }

    exec(&agent, "c2", "e2", &["sleep", "1000"], false)
        .await
        .map_err(|e| format!("ExecProcess e2: {e}"))?;
    signal(&agent, "c2", "e2", 15).await?;
    assert_eq!(wait(&agent, "c2", "e2").await, 128 + 15);

    let stats = agent
        .stats_container(StatsContainerRequest {
            container_id: "c2".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("StatsContainer: {e}"))?;
    println!(
        "c2 stats: cpu {} us, memory {} / {} bytes, pids {} / {}",
        stats.cpu.usage_usec,
        stats.memory.usage_bytes,
        stats.memory.limit_bytes,
        stats.pids.current,
        stats.pids.limit
    );
    assert!(stats.pids.current >= 1);
    assert_eq!(stats.pids.limit, 64);
    assert_eq!(stats.memory.limit_bytes, 134217728);
    assert!(stats.memory.usage_bytes > 0);
    assert!(stats.cpu.usage_usec > 0);

    agent
        .update_container(UpdateContainerRequest {
            container_id: "c2".into(),
            resources_json: br#"{"pids":{"limit":32},"cpu":{"quota":50000,"period":100000}}"#
                .to_vec(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("UpdateContainer: {e}"))?;
    let stats = agent
        .stats_container(StatsContainerRequest {
            container_id: "c2".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("StatsContainer: {e}"))?;
    assert_eq!(stats.pids.limit, 32, "UpdateContainer applied pids.max");
    // The container sees its own cgroup (no cgroup namespace asked): its limits, read-only.
    exec(
        &agent,
        "c2",
        "cg",
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/pids.max; echo 1 > /sys/fs/cgroup/pids.max || echo ro",
        ],
        false,
    )
    .await
    .map_err(|e| format!("ExecProcess cg: {e}"))?;
    assert_eq!(
        read_all(&agent, "c2", "cg", Stream::Stdout).await,
        "32\nro\n"
    );
    assert_eq!(wait(&agent, "c2", "cg").await, 0);

    let procs = agent
        .list_processes(ListProcessesRequest {
            container_id: "c2".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("ListProcesses: {e}"))?;
    assert!(!procs.processes.is_empty());

    agent
        .pause_container(PauseContainerRequest {
            container_id: "c2".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("PauseContainer: {e}"))?;
    agent
        .resume_container(ResumeContainerRequest {
            container_id: "c2".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("ResumeContainer: {e}"))?;

    // 2b. OOM: a container over its memory limit is OOM-killed and GetOOMEvent names it.
    let root_o = busybox_rootfs(busybox, vm, "oom1");
    let mut o_spec: serde_json::Value = serde_json::from_slice(&agent_spec(
        &root_o,
        &["sh", "-c", "a=x; while true; do a=$a$a; done"],
    ))
    .unwrap();
    o_spec["linux"]["resources"]["memory"] = json!({"limit": 16 << 20});
    create_and_start(&agent, "oom1", serde_json::to_vec(&o_spec).unwrap()).await?;
    let oom = tokio::time::timeout(STEP, agent.get_oom_event(GetOOMEventRequest::new()))
        .await
        .map_err(|_| "GetOOMEvent timed out".to_string())?
        .map_err(|e| format!("GetOOMEvent: {e}"))?;
    assert_eq!(oom.container_id, "oom1");
    assert_eq!(wait(&agent, "oom1", "").await, 128 + 9);
    remove(&agent, "oom1").await?;

    // 2c. Networking (netlink): the guest has only `lo`; containers share the guest netns.
    let iface = agent
        .update_interface(UpdateInterfaceRequest {
            interface: Some(Interface {
                name: "lo".into(),
                ip_addresses: vec![
                    IPAddress {
                        address: "127.0.0.1".into(),
                        prefix_len: 8,
                        ..Default::default()
                    },
                    IPAddress {
                        address: "10.9.8.7".into(),
                        prefix_len: 32,
                        ..Default::default()
                    },
                ],
                mtu: 60000,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("UpdateInterface: {e}"))?;
    assert_eq!(iface.mtu, 60000);
    agent
        .update_routes(UpdateRoutesRequest {
            routes: Some(Routes {
                routes: vec![Route {
                    dest: "10.10.0.0/16".into(),
                    device: "lo".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("UpdateRoutes: {e}"))?;
    exec(
        &agent,
        "c2",
        "net",
        &["sh", "-c", "ip addr show lo; ip route"],
        false,
    )
    .await
    .map_err(|e| format!("ExecProcess net: {e}"))?;
    let net = read_all(&agent, "c2", "net", Stream::Stdout).await;
    assert!(
        net.contains("inet 10.9.8.7/32") && net.contains("mtu 60000"),
        "{net}"
    );
    assert!(net.contains("10.10.0.0/16 dev lo"), "{net}");
    assert_eq!(wait(&agent, "c2", "net").await, 0);
    let e = agent
        .add_arp_neighbors(AddARPNeighborsRequest {
            neighbors: vec![ARPNeighbor {
                to_ip: Some(IPAddress {
                    address: "10.9.8.1".into(),
                    ..Default::default()
                })
                .into(),
                device: "nosuch0".into(),
                ll_addr: "02:00:00:00:00:01".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("nosuch0"), "{e}");

    // 3. Bad input: each answered with an error naming the cause; the agent keeps serving.
    let e = create(&agent, "../x", agent_spec(&root2, &["true"]))
        .await
        .unwrap_err();
    assert!(e.contains("invalid container id"), "{e}");
    let e = create(&agent, "c2", agent_spec(&root2, &["true"]))
        .await
        .unwrap_err();
    assert!(e.contains("already exists"), "{e}");
    let e = create(&agent, "c3", b"{\"ociVersion\":\"1.0.2\"}".to_vec())
        .await
        .unwrap_err();
    assert!(
        e.contains("no process") || e.contains("invalid OCI spec"),
        "{e}"
    );
    let e = create(&agent, "c3", b"not json".to_vec())
        .await
        .unwrap_err();
    assert!(e.contains("invalid OCI spec"), "{e}");
    let e = create(&agent, "c3", agent_spec("/", &["true"]))
        .await
        .unwrap_err();
    assert!(e.contains("must lie under /run/kata-containers"), "{e}");
    let e = create(
        &agent,
        "c3",
        agent_spec("/run/kata-containers/shared/containers/nope", &["true"]),
    )
    .await
    .unwrap_err();
    assert!(e.contains("does not exist"), "{e}");
    let e = exec(&agent, "c2", "bad", &["/bin/nosuch"], false)
        .await
        .unwrap_err();
    assert!(
        e.contains("/bin/nosuch") && e.contains("No such file"),
        "{e}"
    );
    let e = exec(&agent, "nope", "x", &["true"], false)
        .await
        .unwrap_err();
    assert!(e.contains("not found"), "{e}");
    let e = agent
        .wait_process(WaitProcessRequest {
            container_id: "c2".into(),
            exec_id: "missing".into(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not found"), "{e}");
    let e = agent
        .copy_file(CopyFileRequest {
            path: "/etc/passwd".into(),
            file_size: 1,
            data: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("/run/kata-containers"), "{e}");
    // A symlink in the shared directory cannot redirect CopyFile out of the run dir.
    // Planted on the host side of the share (the guest sees it at GUEST_SHARED_DIR/evil).
    std::os::unix::fs::symlink("/etc", vm.share().container_dir("evil")).unwrap();
    let e = agent
        .copy_file(CopyFileRequest {
            path: format!("{}/evil/planted", protocol::GUEST_SHARED_DIR),
            file_size: 1,
            data: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("resolves outside"), "{e}");
    let health = agent
        .check(CheckRequest::new())
        .await
        .map_err(|e| format!("Check after bad input: {e}"))?;
    assert_eq!(
        health.status.enum_value_or_default(),
        health_check_response::ServingStatus::SERVING
    );

    // 4. The init killed by a signal reports 128 + n; removal cleans up.
    signal(&agent, "c2", "", 9).await?;
    assert_eq!(wait(&agent, "c2", "").await, 128 + 9);
    remove(&agent, "c2").await?;
    let e = agent
        .stats_container(StatsContainerRequest {
            container_id: "c2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not found"), "{e}");
    // 5. A pod's container joins another container's IPC, UTS and PID namespaces, named by
    // `protocol::container_ns_path`: its PID 1 is that container's init, and the hostname and
    // sysctl are that container's. Any other namespace path is refused, and so is joining a
    // container that is not there or has exited.
    let root_p = busybox_rootfs(busybox, vm, "pod1");
    create_and_start(&agent, "pod1", agent_spec(&root_p, &["sleep", "1000"])).await?;
    let show = "cat /proc/1/cmdline; echo; hostname; cat /proc/sys/kernel/shm_rmid_forced; \
                readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts; readlink /proc/self/ns/pid";
    let joining = |root: &str, path: &str| -> Vec<u8> {
        let mut s: serde_json::Value =
            serde_json::from_slice(&agent_spec(root, &["sh", "-c", show])).unwrap();
        s["hostname"] = json!("not-the-pods");
        s["linux"]["sysctl"] = json!({});
        s["linux"]["namespaces"] = json!([
            {"type": "pid", "path": path}, {"type": "ipc", "path": path},
            {"type": "uts", "path": path}, {"type": "mount"}, {"type": "network"}
        ]);
        serde_json::to_vec(&s).unwrap()
    };
    let root_j = busybox_rootfs(busybox, vm, "join1");
    let pod = protocol::container_ns_path("pod1");
    create_and_start(&agent, "join1", joining(&root_j, &pod)).await?;
    let joined = read_all(&agent, "join1", "", Stream::Stdout).await;
    assert_eq!(wait(&agent, "join1", "").await, 0, "join1: {joined:?}");
    let ns = "readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts; readlink /proc/self/ns/pid";
    exec(&agent, "pod1", "ns", &["sh", "-c", ns], false)
        .await
        .map_err(|e| format!("ExecProcess ns: {e}"))?;
    let pod_ns = read_all(&agent, "pod1", "ns", Stream::Stdout).await;
    assert_eq!(wait(&agent, "pod1", "ns").await, 0);
    assert_eq!(
        joined,
        format!("sleep\u{0}1000\u{0}\nagent-test\n1\n{pod_ns}")
    );
    remove(&agent, "join1").await?;
    for (path, want) in [
        (
            "/proc/1/ns/ipc".to_string(),
            "only another container's namespace",
        ),
        (
            protocol::container_ns_path("nosuch"),
            "\"nosuch\", which is not in this sandbox",
        ),
    ] {
        let e = create(&agent, "join2", joining(&root_j, &path))
            .await
            .unwrap_err();
        assert!(e.contains(want), "{path}: {e}");
    }
    signal(&agent, "pod1", "", 9).await?;
    assert_eq!(wait(&agent, "pod1", "").await, 128 + 9);
    let e = create(&agent, "join2", joining(&root_j, &pod))
        .await
        .unwrap_err();
    assert!(e.contains("has exited: its namespaces are gone"), "{e}");
    remove(&agent, "pod1").await?;

    let details = agent
        .get_guest_details(GuestDetailsRequest::new())
        .await
        .map_err(|e| format!("GetGuestDetails: {e}"))?;
    println!(
        "agent RSS after the run: {} KiB",
        details.agent_rss_bytes / 1024
    );
    Ok(())
}
