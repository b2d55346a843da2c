//! containerd-shim-kata-v2 library: everything the shim binary and kata-ctl share.

// VM layer: configuration, hypervisor backends, vsock and the agent client.
pub mod agent;
pub mod config;
// Host tool (kata-ctl) on top of the same configuration and detection code.
pub mod ctl;
pub mod hypervisor;
pub mod vm;
pub mod vsock;

// Task layer: the containerd-facing shim (Task API, containers, stdio, host mounts).
pub mod backend;
pub mod container;
pub mod error;
pub mod events;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod rootfs;
pub mod sandbox;
pub mod service;
pub mod spec;
pub mod stdio;
pub mod task;
pub mod vm_backend;
