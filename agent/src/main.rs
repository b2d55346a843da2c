//! kata-agent: PID 1 of the guest. Sets up the guest, then serves the agent API on vsock.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{error, info, warn};

use kata_agent::api::{rpc, stdio_port};
use kata_agent::guest::{debug_console, host_vsock, init, logging, reaper, requests};
use kata_agent::runtime::{cgroup, sandbox, spawn};

fn main() {
    if std::env::args().nth(1).as_deref() == Some(spawn::HELPER_ARG) {
        spawn::helper_main();
    }
    let pid1 = init::is_pid1();
    let mut boot_errors = Vec::new();
    if pid1 {
        boot_errors = init::mount_base();
        init::ensure_stdio();
    }
    let opts = init::read_cmdline();
    logging::init(opts.log_level, pid1);
    info!(
        uptime_ms = init::uptime_ms(),
        version = env!("CARGO_PKG_VERSION"),
        "kata-agent starting"
    );
    for e in boot_errors {
        warn!("boot: {e}");
    }
    if let Err(e) = run(pid1, opts) {
        error!("agent failed: {e:#}");
    }
    // PID 1 must never exit (the kernel would panic): power off instead.
    if pid1 {
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    }
    std::process::exit(1);
}

fn run(pid1: bool, opts: init::Options) -> anyhow::Result<()> {
    // One thread serves everything (idle memory stays small); blocking work goes to a
    // small on-demand pool.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(8)
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .build()?;
    rt.block_on(serve(pid1, opts))
}

async fn serve(pid1: bool, opts: init::Options) -> anyhow::Result<()> {
    reaper::global().start()?;
    if pid1 {
        if let Err(e) = init::raise_nofile() {
            warn!("raising RLIMIT_NOFILE: {e}");
        }
        if let Err(e) = init::set_subreaper() {
            warn!("PR_SET_CHILD_SUBREAPER: {e}");
        }
        if let Err(e) = init::loopback_up() {
            warn!("bringing lo up: {e}");
        }
        for w in cgroup::init_hierarchy() {
            warn!("cgroup: {w}");
        }
    }
    if opts.debug_console {
        if let Err(e) = debug_console::serve(protocol::DEBUG_CONSOLE_PORT).await {
            warn!("debug console port {}: {e}", protocol::DEBUG_CONSOLE_PORT);
        }
    }
    if let Err(e) = logging::serve(protocol::AGENT_LOG_PORT).await {
        warn!("log port {}: {e}", protocol::AGENT_LOG_PORT);
    }

    let sandbox = Arc::new(sandbox::Sandbox::default());
    stdio_port::serve(sandbox.clone())
        .map_err(|e| anyhow::anyhow!("binding the stdio port {}: {e}", protocol::STDIO_PORT))?;
    let agent = Arc::new(rpc::Agent::new(sandbox, pid1));
    let service = protocol::agent_ttrpc::create_agent_service(agent.clone());
    let addr = format!("vsock port {} (host only)", protocol::AGENT_TTRPC_PORT);
    let listener = host_vsock::HostListener::bind(protocol::AGENT_TTRPC_PORT)
        .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    let mut server = ttrpc::r#async::Server::new()
        .add_listener(listener.into_ttrpc())
        .register_service(service);
    server
        .start()
        .await
        .map_err(|e| anyhow::anyhow!("starting the ttrpc server: {e}"))?;
    let uptime = init::uptime_ms();
    agent.listen_uptime_ms.store(uptime, Ordering::Relaxed);
    info!(
        uptime_ms = uptime,
        rss_bytes = requests::rss_bytes(),
        "agent listening on {addr}"
    );
    // Serve until the guest powers off.
    std::future::pending::<()>().await;
    Ok(())
}
