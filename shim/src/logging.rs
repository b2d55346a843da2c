//! The shim's tracing output goes to containerd's log FIFO (`log` in the bundle, the shim
//! server's working directory). The level comes from RUST_LOG, else containerd's `-debug`
//! flag; a sandbox whose configuration sets `[runtime] enable_debug` raises it to debug.

use std::fs::File;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::EnvFilter;

type Switch = Box<dyn Fn() + Send + Sync>;

/// Raises the level to debug once the configuration asks for it (set by `init`).
static DEBUG_SWITCH: OnceLock<Switch> = OnceLock::new();

/// Installs the subscriber. Without the FIFO (not started by containerd) nothing is logged.
pub fn init(debug: bool) {
    let Ok(file) = std::fs::OpenOptions::new().write(true).open("log") else {
        return;
    };
    init_to(file, debug);
}

/// Where log lines go now: one file, swapped by [`redirect`] (a pooled VM's shim logs to the
/// pool's log until a pod adopts it, then to that pod's FIFO).
static SINK: Mutex<Option<File>> = Mutex::new(None);

/// Writes each line to the current [`SINK`].
struct SinkWriter;

impl std::io::Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match SINK.lock().as_mut().ok().and_then(|s| s.as_mut()) {
            Some(f) => f.write(buf),
            None => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the subscriber writing to `file`.
pub fn init_to(file: File, debug: bool) {
    redirect(file);
    let from_env = EnvFilter::try_from_default_env().ok();
    let explicit = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(if debug { "debug" } else { "info" }));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(|| SinkWriter)
        .with_filter_reloading();
    let handle = builder.reload_handle();
    if builder.try_init().is_err() || explicit {
        return;
    }
    let _ = DEBUG_SWITCH.set(Box::new(move || {
        let _ = handle.modify(|f| *f = EnvFilter::new("debug"));
    }));
}

/// Sends the lines that follow to `file`.
pub fn redirect(file: File) {
    if let Ok(mut sink) = SINK.lock() {
        *sink = Some(file);
    }
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
