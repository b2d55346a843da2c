//! containerd-shim-kata-v2: containerd starts it per sandbox; it boots the sandbox's VM and
//! serves the task API for the containers inside.

use containerd_shim::{asynchronous::run, Config};
use kata_shim::server::Service;

#[tokio::main]
async fn main() {
    let config = Config {
        // tokio::process reaps our children (QEMU, helpers); the crate's SIGCHLD reaper would
        // steal their exit statuses.
        no_reaper: true,
        ..Default::default()
    };
    run::<Service>("io.containerd.kata.v2", Some(config)).await;
}
