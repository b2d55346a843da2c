//! containerd-shim-kata-v2: containerd starts it per sandbox; it boots the sandbox's VM and
//! serves the task API for the containers inside.

use std::time::Duration;

use containerd_shim::{asynchronous::run, Config};
use kata_shim::pool;
use kata_shim::server::{pooled, Service};

/// How long blocking work may hold the shim's exit. A thread can be stuck in open(2) of a
/// stdin FIFO whose writer never came and whose path containerd already removed (`ctr run -d`
/// exits before opening its ends); nothing can unblock it, and it must not keep the shim alive.
/// (Output FIFOs are opened read-write, which never blocks.)
const BLOCKING_WORK_AT_EXIT: Duration = Duration::from_secs(1);

fn main() {
    let config = Config {
        // tokio::process reaps our children (QEMU, helpers); the crate's SIGCHLD reaper would
        // steal their exit statuses.
        no_reaper: true,
        ..Default::default()
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("containerd-shim-kata-v2: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        // The pool daemon, and the pooled shims it starts (`pool`): not containerd's commands,
        // which all begin with a flag.
        [pool::DAEMON_ARG, ref configs @ ..] => runtime.block_on(pool::daemon::run(
            configs.iter().map(std::path::PathBuf::from).collect(),
        )),
        [pool::POOLED_SHIM_ARG, config, vm_id] => {
            runtime.block_on(pooled::run(config.into(), vm_id.to_string()))
        }
        _ => {
            runtime.block_on(run::<Service>("io.containerd.kata.v2", Some(config)));
            Ok(())
        }
    };
    runtime.shutdown_timeout(BLOCKING_WORK_AT_EXIT);
    if let Err(e) = outcome {
        eprintln!("containerd-shim-kata-v2: {e:#}");
        std::process::exit(1);
    }
}
