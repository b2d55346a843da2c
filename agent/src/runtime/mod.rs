//! Containers and their processes: spawn and setup, mounts, cgroups, seccomp, stdio, sandbox state, early signals.
pub mod beneath;
pub mod cgroup;
pub mod container;
pub mod early_signal;
pub mod mount;
pub mod pidfd;
pub mod process;
pub mod sandbox;
pub mod seccomp;
pub mod setup;
pub mod spawn;
pub mod stdio;
pub mod stdio_connections;
pub mod sysctl;
