//! Containers and their processes: spawn and setup, mounts, cgroups, seccomp, stdio, sandbox state.
mod beneath;
pub(crate) mod cgroup;
mod container;
mod mount;
mod pidfd;
mod process;
pub(crate) mod sandbox;
mod seccomp;
mod setup;
pub(crate) mod spawn;
mod stdio;
