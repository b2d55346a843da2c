//! Guest-wide PID 1 duties: boot init, reaping, networking, logging, debug console, guest requests.
pub mod debug_console;
pub mod host_vsock;
pub mod init;
pub mod logging;
pub mod netlink;
pub mod reaper;
pub mod requests;
