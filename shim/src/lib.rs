//! containerd-shim-kata-v2 library: everything the shim binary and kata-ctl share.

// VM layer: configuration, hypervisor backends, vsock and the agent client.
pub mod agent;
pub mod config;
pub mod hypervisor;
pub mod vm;
pub mod vsock;
