//! The host tool `kata-ctl`: check the host, show the effective configuration, open the guest
//! debug console. It reuses the shim's own configuration and detection code.

pub mod cgroups;
pub mod check;
pub mod console;
pub mod containerd;
pub mod env;
pub mod finding;
