//! A pooled shim (`containerd-shim-kata-v2 pool-vm <config> <vm id>`, started by the pool
//! daemon): boots a VM from the configuration, tells the daemon it is ready and waits. Taken by
//! a pod's `start`, it becomes that pod's shim, serving the Task API where containerd expects
//! it with the VM already booted; if its daemon goes first, it stops its VM and exits.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::ExitSignal;
use tokio::io::BufReader;
use tokio::net::unix::OwnedWriteHalf;

use super::task_service;
use crate::config::{self, LoadRequest};
use crate::pool::{self, receive, send, Adoption, Reply, Request, POOLED_NICE, POOLED_VM_PREFIX};
use crate::resources::host_cgroup::{return_pid, Hierarchy};
use crate::resources::network::HeldTap;
use crate::vm::launcher::{self, PooledLauncher};
use crate::vm::{Vm, VmSpec};

/// Runs a pooled shim to its end: a pod's shim that exited, or a VM nobody took.
pub async fn run(config: PathBuf, vm_id: String) -> anyhow::Result<()> {
    // stderr is the daemon's log until a pod adopts this shim.
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("stderr for the log")?;
    crate::logging::init_to(std::fs::File::from(stderr), false);
    if !vm_id.starts_with(POOLED_VM_PREFIX) {
        anyhow::bail!("pooled VM id {vm_id:?} must start with {POOLED_VM_PREFIX}");
    }
    // Inherited by QEMU and the helpers, every thread of theirs included.
    set_nice(std::process::id(), POOLED_NICE).context("lowering the pooled shim's priority")?;
    let path = config.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        config::load(&LoadRequest {
            config_path: Some(path),
            annotations: Default::default(),
        })
    })
    .await??;
    // Its NIC must exist at boot: a tap in a netns of its own, moved into the pod's later.
    let nic = HeldTap::create().await.context("the pooled VM's tap")?;
    let mut spec = VmSpec::new(vm_id.clone(), loaded.config);
    spec.net = vec![launcher::nic(nic.tap())];
    let vm = Vm::boot(&spec)
        .await
        .with_context(|| format!("booting pooled VM {vm_id}"))?;
    let conn = match tokio::net::UnixStream::connect(pool::socket_path()).await {
        Ok(c) => c,
        Err(e) => {
            let _ = vm.shutdown().await;
            return Err(e).context("reaching the pool daemon");
        }
    };
    let (r, mut w) = conn.into_split();
    let mut r = BufReader::new(r);
    let mut exited = vm.exited();
    let told = async {
        send(
            &mut w,
            &Request::Ready {
                config,
                vm_id: vm_id.clone(),
            },
        )
        .await?;
        receive::<Reply>(&mut r).await
    };
    let adoption = tokio::select! {
        m = told => m,
        _ = exited.wait_for(|e| *e) => {
            tracing::warn!("pooled VM {vm_id} exited while waiting");
            let _ = vm.abandon().await;
            return Ok(());
        }
    };
    match adoption {
        Ok(Reply::Adopt(a)) => serve(vm, nic, a, w).await,
        Ok(other) => {
            tracing::warn!("pooled VM {vm_id}: unexpected message {other:?}; stopping it");
            vm.shutdown().await.map_err(Into::into)
        }
        // The daemon let it go (stopping, or its pool shrank).
        Err(_) => vm.shutdown().await.map_err(Into::into),
    }
}

/// Becomes the pod's shim: in its bundle, logging to its FIFO, in the cgroup containerd's
/// `start` runs in, the VM named after the sandbox, serving the Task API on its socket.
async fn serve(
    mut vm: Vm,
    nic: HeldTap,
    a: Adoption,
    mut daemon: OwnedWriteHalf,
) -> anyhow::Result<()> {
    // Everything that can fail happens while the VM is still this function's to stop; the
    // socket is removed only once this shim bound it (another shim may own that name).
    let mut bound = false;
    let prepared = async {
        let listener = adopt(&mut vm, &a).await?;
        bound = true;
        let publisher = RemotePublisher::new(&a.ttrpc_address)
            .await
            .context("containerd's event address")?;
        let listener =
            ttrpc::r#async::transport::Listener::try_from(listener).context("ttrpc listener")?;
        anyhow::Ok((publisher, listener))
    }
    .await;
    let (publisher, listener) = match prepared {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(
                "pooled VM {} not adopted by {}: {e:#}",
                vm.id(),
                a.sandbox_id
            );
            let _ = send(
                &mut daemon,
                &Reply::Refused {
                    reason: format!("{e:#}"),
                },
            )
            .await;
            if bound {
                remove_socket(&a.socket);
            }
            vm.shutdown().await?;
            return Err(e);
        }
    };
    let exit = Arc::new(ExitSignal::default());
    let platform = crate::sandbox::seams::Platform {
        launcher: Arc::new(PooledLauncher::new(vm, Some(nic))),
        mounter: Arc::new(crate::resources::rootfs::LinuxMounter),
    };
    let service = task_service(platform, publisher, a.namespace.clone(), exit.clone());
    let task = containerd_shim::protos::shim_async::create_task(Arc::new(service));
    let mut server = ttrpc::asynchronous::Server::new()
        .add_listener(listener)
        .register_service(task);
    server.start().await.context("serving the Task API")?;
    send(
        &mut daemon,
        &Reply::Serving {
            address: a.socket.clone(),
        },
    )
    .await?;
    drop(daemon);
    tracing::info!("serving sandbox {} at {}", a.sandbox_id, a.socket);
    exit.wait().await;
    let _ = server.shutdown().await;
    remove_socket(&a.socket);
    Ok(())
}

/// Removes the shim socket this shim bound at `address` (`unix://...`).
fn remove_socket(address: &str) {
    if let Some(path) = address.strip_prefix("unix://") {
        let _ = std::fs::remove_file(path);
    }
}

/// Everything before serving: where it runs, its log, its cgroup, the VM's name, the socket.
async fn adopt(vm: &mut Vm, a: &Adoption) -> anyhow::Result<std::os::unix::net::UnixListener> {
    std::env::set_current_dir(&a.bundle)
        .with_context(|| format!("bundle {}", a.bundle.display()))?;
    if let Ok(fifo) = std::fs::OpenOptions::new().write(true).open("log") {
        crate::logging::redirect(fifo);
    }
    if a.debug {
        crate::logging::enable_debug();
    }
    join_cgroup_of(a.start_pid, vm.process_ids()).context("joining start's cgroup")?;
    // SAFETY: getpriority reads a value; -1 is also a valid answer, so errno is not checked.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, a.start_pid) };
    for pid in std::iter::once(std::process::id()).chain(vm.process_ids()) {
        set_nice(pid, nice).with_context(|| format!("the priority of pid {pid}"))?;
    }
    vm.take_id(&a.sandbox_id).await?;
    let path = a
        .socket
        .strip_prefix("unix://")
        .with_context(|| format!("socket address {} is not unix://", a.socket))?;
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("binding the shim socket {path}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Moves this shim and the VM's processes into the cgroups of `start_pid` (containerd's
/// `start` process, where containerd puts the shims it starts): out of the pool daemon's, so
/// stopping the daemon's service never touches a pod.
fn join_cgroup_of(start_pid: u32, vm_pids: Vec<u32>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(format!("/proc/{start_pid}/cgroup"))
        .with_context(|| format!("/proc/{start_pid}/cgroup"))?;
    let hierarchy = Hierarchy::detect()?;
    let dirs = hierarchy.dirs_of(&text);
    for pid in std::iter::once(std::process::id()).chain(vm_pids) {
        return_pid(&hierarchy, pid, &dirs)?;
    }
    Ok(())
}

/// Sets the nice value of every thread of process `pid` (nice is per thread on Linux).
fn set_nice(pid: u32, nice: i32) -> std::io::Result<()> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = task?
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<libc::id_t>().ok())
        else {
            continue;
        };
        // SAFETY: setpriority takes plain integers and touches no memory of ours.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
            let e = std::io::Error::last_os_error();
            // A thread that ended meanwhile.
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
    }
    Ok(())
}
