//! OCI seccomp profiles. Not implemented yet: a spec that asks for one is refused with a clear
//! error rather than run unconfined.
use oci_spec::runtime::LinuxSeccomp;

/// A compiled filter, ready to install.
pub struct Program(());

pub fn compile(_spec: &LinuxSeccomp) -> Result<Program, String> {
    Err("linux.seccomp is not supported by this agent yet".into())
}

pub fn install(_prog: &Program) -> Result<(), String> {
    Ok(())
}
