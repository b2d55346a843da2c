//! The shim's tracing output goes to containerd's log FIFO (`log` in the bundle, the shim
//! server's working directory). The level comes from RUST_LOG, else containerd's `-debug`
//! flag; a sandbox whose configuration sets `[runtime] enable_debug` raises it to debug.

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

type Switch = Box<dyn Fn() + Send + Sync>;

/// Raises the level to debug once the configuration asks for it (set by `init`).
static DEBUG_SWITCH: OnceLock<Switch> = OnceLock::new();

/// Installs the subscriber. Without the FIFO (not started by containerd) nothing is logged.
pub fn init(debug: bool) {
    let Ok(file) = std::fs::OpenOptions::new().write(true).open("log") else {
        return;
    };
    let from_env = EnvFilter::try_from_default_env().ok();
    let explicit = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(if debug { "debug" } else { "info" }));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .with_filter_reloading();
    let handle = builder.reload_handle();
    if builder.try_init().is_err() || explicit {
        return;
    }
    let _ = DEBUG_SWITCH.set(Box::new(move || {
        let _ = handle.modify(|f| *f = EnvFilter::new("debug"));
    }));
}

/// For `containerd-shim-kata-v2 delete` (containerd runs it after a shim went away): warnings
/// to stderr, which containerd logs as "cleanup warnings". It warns only about what the dead
/// shim left behind, so a shim that tore its sandbox down itself leaves no such line.
pub fn init_for_delete() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("warn"))
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Switches to debug level (no-op when RUST_LOG chose the level or logging is not set up).
pub fn enable_debug() {
    if let Some(switch) = DEBUG_SWITCH.get() {
        switch();
    }
}
