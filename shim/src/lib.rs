//! containerd-shim-kata-v2 library: everything the shim binary and kata-ctl share.
//!
//! Layers, each importing only those below it (see docs/architecture.md):
//! `server` (containerd's face) -> `task` (Task RPCs, processes, stdio) -> `sandbox` (VM +
//! agent + containers) -> `resources` (share layout, mounts, guest spec) and `vm` (a VM from a
//! VmSpec) -> `hypervisor` (QEMU, cloud-hypervisor) -> `guest` (agent client, vsock) and
//! `config`; `error`, `events`, `logging` and `guest_output` (the bounds on what the guest
//! sends) are leaves.

pub mod config;
// Host tool (kata-ctl) on top of the same configuration and detection code.
pub mod ctl;
pub mod error;
pub mod events;
pub mod guest;
pub mod guest_output;
pub mod hypervisor;
pub mod logging;
// The pool of pre-booted VMs: its daemon and its clients.
pub mod pool;
pub mod resources;
pub mod sandbox;
pub mod server;
pub mod task;
pub mod vm;
