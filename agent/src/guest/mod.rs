//! Guest-wide PID 1 duties: boot init, reaping, networking, logging, debug console, guest requests.
pub(crate) mod debug_console;
pub(crate) mod host_vsock;
pub(crate) mod init;
pub(crate) mod logging;
pub(crate) mod netlink;
pub(crate) mod reaper;
pub(crate) mod requests;
