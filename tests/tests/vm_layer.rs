//! The shim's VM layer end to end (`kata_shim::vm::Vm` with the real QEMU, kernel, agent,
//! vhost-device-vsock and virtiofsd): each machine type / shared-fs pair boots and serves the
//! agent; a rootfs mounted under the shared dir AFTER boot is visible in the guest (virtiofsd's
//! namespace sandbox must see later mounts); QEMU's death is noticed; a failed boot names the
//! cause and leaves nothing; a dead shim's leftovers are cleaned from the pid files.
//!
//! Uses build/configuration-qemu.toml from `make guest` (KATA_RS_TEST_CONFIG overrides it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kata_e2e::*;
use kata_shim::config::{Config, MachineType, SharedFs};
use kata_shim::vm::{self, Vm, VmSpec};
use protocol::agent::*;
use serde_json::json;

const BUSYBOX: &str = "/bin/busybox";
const STEP: Duration = Duration::from_secs(60);

fn config() -> Config {
    config_from("KATA_RS_TEST_CONFIG", "build/configuration-qemu.toml")
}

/// The arm64 guest (QEMU `virt`; TCG on an x86 host).
fn config_aarch64() -> Config {
    config_from(
        "KATA_RS_TEST_CONFIG_AARCH64",
        "build/configuration-qemu-aarch64.toml",
    )
}

fn config_from(env: &str, default: &str) -> Config {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| top_dir().join(default));
    require_built(std::slice::from_ref(&path));
    let config =
        Config::from_file(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    require_built(&[
        config.vmm.guest().kernel.clone(),
        config.vmm.guest().initrd.clone(),
    ]);
    config
}

fn run(cmd: &str, args: &[&str]) {
    let st = bounded(cmd, QUICK_LIMIT)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(st.success(), "{cmd} {args:?}: {st}");
}

/// Boots, mounts a busybox rootfs under the shared dir after boot, runs `cat` on a file of it
/// in the guest, shuts down and checks nothing is left.
async fn shared_fs_roundtrip(machine: MachineType, fs: SharedFs) {
    let mut config = if machine == MachineType::Virt {
        config_aarch64()
    } else {
        config()
    };
    let busybox = if machine == MachineType::Virt {
        shell_var("BUSYBOX_ARM64").expect("BUSYBOX_ARM64 in scripts/lib.sh")
    } else {
        BUSYBOX.to_string()
    };
    config
        .vmm
        .qemu_mut()
        .expect("a QEMU configuration")
        .machine_type = machine;
    config.vmm.guest_mut().shared_fs = fs;
    let id = unique_id(&format!("vm-{machine}-{fs}"));
    let started = Instant::now();
    let vm = Vm::boot(&VmSpec::new(id.clone(), config.clone()))
        .await
        .expect("boot");
    let boot = started.elapsed();
    let agent = vm.agent().clone();

    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = id.clone();
    req.storages.push(vm.share().storage());
    agent.create_sandbox(req).await.expect("CreateSandbox");

    // The rootfs is prepared elsewhere and bind-mounted in only now, as the shim does.
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(src.path().join("bin")).expect("bin");
    std::fs::copy(&busybox, src.path().join("bin/busybox"))
        .unwrap_or_else(|e| panic!("{busybox} (busybox-static, setup-host.sh): {e}"));
    let marker = format!("mounted after boot: {id}\n");
    std::fs::write(src.path().join("hello"), &marker).expect("hello");
    let rootfs = vm.share().rootfs_dir("c1");
    std::fs::create_dir_all(&rootfs).expect("rootfs dir");
    run(
        "mount",
        &[
            "--bind",
            &src.path().display().to_string(),
            &rootfs.display().to_string(),
        ],
    );

    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/busybox", "cat", "/hello"], "cwd": "/", "env": ["PATH=/bin"],
                    "user": {"uid": 0, "gid": 0}},
        "root": {"path": format!("{}/c1/rootfs", protocol::GUEST_SHARED_DIR)},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                                 {"type": "mount"}, {"type": "network"}]}
    });
    let mut cc = CreateContainerRequest::new();
    cc.container_id = "c1".into();
    cc.oci_spec_json = serde_json::to_vec(&spec).expect("json");
    agent.create_container(cc).await.expect("CreateContainer");
    let mut sc = StartContainerRequest::new();
    sc.container_id = "c1".into();
    agent.start_container(sc).await.expect("StartContainer");
    let mut out = Vec::new();
    loop {
        let mut r = ReadStreamRequest::new();
        r.container_id = "c1".into();
        r.len = 4096;
        let data = tokio::time::timeout(STEP, agent.read_stdout(r))
            .await
            .expect("ReadStdout in time")
            .expect("ReadStdout")
            .data;
        if data.is_empty() {
            break;
        }
        out.extend_from_slice(&data);
    }
    assert_eq!(String::from_utf8_lossy(&out), marker);
    let mut w = WaitProcessRequest::new();
    w.container_id = "c1".into();
    let status = tokio::time::timeout(STEP, agent.wait_process(w))
        .await
        .expect("WaitProcess in time")
        .expect("WaitProcess")
        .status;
    assert_eq!(status, 0);
    let mut rm = RemoveContainerRequest::new();
    rm.container_id = "c1".into();
    agent.remove_container(rm).await.expect("RemoveContainer");
    // The guest may still hold inodes of the rootfs through the shared fs: detach.
    run("umount", &["-l", &rootfs.display().to_string()]);

    vm.shutdown().await.expect("shutdown");
    let left = wait_clean(&id, Duration::from_secs(5));
    assert!(left.is_empty(), "left behind: {left:?}");
    eprintln!("{machine} + {fs}: agent answered {boot:?} after Vm::boot started");
}

#[tokio::test]
async fn microvm_virtio_fs() {
    shared_fs_roundtrip(MachineType::Microvm, SharedFs::VirtioFs).await;
}

#[tokio::test]
async fn microvm_virtio_9p() {
    shared_fs_roundtrip(MachineType::Microvm, SharedFs::Virtio9p).await;
}

#[tokio::test]
async fn q35_virtio_fs() {
    shared_fs_roundtrip(MachineType::Q35, SharedFs::VirtioFs).await;
}

#[tokio::test]
async fn q35_virtio_9p() {
    shared_fs_roundtrip(MachineType::Q35, SharedFs::Virtio9p).await;
}

#[tokio::test]
async fn arm64_virt_virtio_fs() {
    shared_fs_roundtrip(MachineType::Virt, SharedFs::VirtioFs).await;
}

#[tokio::test]
async fn arm64_virt_virtio_9p() {
    shared_fs_roundtrip(MachineType::Virt, SharedFs::Virtio9p).await;
}

fn qemu_pid(dir: &Path) -> i32 {
    std::fs::read_to_string(dir.join("qemu.pid"))
        .expect("qemu.pid")
        .trim()
        .parse()
        .expect("pid")
}

#[tokio::test]
async fn qemu_death_is_noticed_and_cleaned_up() {
    let config = config();
    let id = unique_id("vm-death");
    let vm = Vm::boot(&VmSpec::new(id.clone(), config.clone()))
        .await
        .expect("boot");
    let mut exited = vm.exited();
    assert!(!*exited.borrow_and_update());
    run("kill", &["-KILL", &qemu_pid(vm.dir()).to_string()]);
    tokio::time::timeout(Duration::from_secs(5), exited.wait_for(|e| *e))
        .await
        .expect("exited flips within 5 s")
        .expect("watch");
    // In-flight and new RPCs fail instead of hanging.
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        vm.agent().check(CheckRequest::new()),
    )
    .await
    .expect("Check on a dead VM returns");
    assert!(r.is_err(), "Check answered by a dead VM");
    vm.shutdown().await.expect("shutdown of a dead VM");
    let left = wait_clean(&id, Duration::from_secs(5));
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn failed_boot_names_the_cause_and_leaves_nothing() {
    let mut config = config();
    let junk = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(junk.path(), b"not a cpio archive").expect("write");
    config.vmm.guest_mut().initrd = junk.path().to_path_buf();
    let id = unique_id("vm-badinitrd");
    let err = Vm::boot(&VmSpec::new(id.clone(), config.clone()))
        .await
        .expect_err("a junk initrd cannot boot");
    let msg = err.to_string();
    assert!(
        msg.contains("exited") && msg.contains("Kernel panic"),
        "{msg}"
    );
    let left = wait_clean(&id, Duration::from_secs(5));
    assert!(left.is_empty(), "left behind: {left:?}");

    // A missing kernel is named with the key and file it came from, before anything starts.
    let mut config = self::config();
    config.vmm.guest_mut().kernel = PathBuf::from("/nonexistent/vmlinux");
    let id = unique_id("vm-nokernel");
    let msg = Vm::boot(&VmSpec::new(id.clone(), config.clone()))
        .await
        .expect_err("no kernel")
        .to_string();
    assert!(
        msg.contains("/nonexistent/vmlinux") && msg.contains("[hypervisor.qemu] kernel"),
        "{msg}"
    );
    assert!(leftovers(&id).is_empty());
}

#[tokio::test]
async fn dead_shim_leftovers_are_cleaned_from_pid_files() {
    let config = config();
    let id = unique_id("vm-crash");
    let vm = Vm::boot(&VmSpec::new(id.clone(), config.clone()))
        .await
        .expect("boot");
    let dir = vm.dir().to_path_buf();
    // The shim "dies": its Vm is never shut down. A later `shim delete` cleans up.
    std::mem::forget(vm);
    assert!(!leftovers(&id).is_empty(), "the VM should still be running");
    vm::cleanup::cleanup_vm_dir(&id).await.expect("cleanup");
    let left = wait_clean(&id, Duration::from_secs(5));
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!dir.exists());
}
