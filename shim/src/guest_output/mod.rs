//! Everything the guest writes to the host, bounded: the agent's log stream, the serial
//! console and the OOM events it reports. The guest is hostile (docs/security.md): it decides
//! how much it writes and how fast, so every buffer the shim keeps for it has a size, and what
//! reaches the shim's log (containerd's) has a rate. This module is the one place that sets
//! those limits; the code that reads each stream (`vm::logs`, the hypervisor backends,
//! `sandbox::watch`, `events`) applies them.

pub mod capped_file;
pub mod console;
pub mod lines;
pub mod rate;
pub mod ring;

use std::time::Duration;

/// Longest line kept, in bytes; a longer one is cut there and the rest of it dropped.
pub const MAX_LINE: usize = 4096;

/// Lines one stream (the console, or the agent's log) may send to the shim's log at once,
/// before the sustained rate applies: a whole non-quiet (debug) guest boot fits.
pub const LINE_BURST: u32 = 500;
/// Lines per second one stream may send to the shim's log once its burst is spent.
pub const LINES_PER_SEC: u32 = 20;
/// A flood episode (lines being dropped) ends once no line was dropped for this long; its one
/// warning, with the count, is logged then.
pub const FLOOD_QUIET: Duration = Duration::from_secs(2);
/// A flood that does not end is reported this often, so it is never silent.
pub const FLOOD_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Console bytes kept in memory for error messages ("QEMU exited ... guest console: ...").
pub const CONSOLE_RING_BYTES: usize = 64 * 1024;
/// Size of the console file in the VM dir before it is rotated (once: `console.log.1` holds
/// the previous part, so the console never takes more than twice this on disk).
pub const CONSOLE_FILE_CAP: u64 = 1024 * 1024;
/// After the VMM exits, how long error messages wait for the console's last bytes.
pub const CONSOLE_DRAIN: Duration = Duration::from_secs(1);

/// At most one TaskOOM per container within this window; later ones in it are dropped.
pub const OOM_WINDOW: Duration = Duration::from_secs(1);
/// How long after its Delete a container's late OOM event is still forwarded (the agent
/// reports a kill it finds while removing the container, which may arrive just after).
pub const OOM_AFTER_DELETE: Duration = Duration::from_secs(10);
/// Deleted containers remembered for [`OOM_AFTER_DELETE`], at most.
pub const OOM_DELETED_KEPT: usize = 64;
/// TaskOOM events waiting for containerd, at most; more are dropped with a warning (exits
/// and the other lifecycle events are never dropped).
pub const OOM_QUEUE: usize = 64;
