//! The agent API: the ttrpc service, which validates each request and delegates to the
//! runtime (containers) and the guest (guest-wide duties).
pub mod rpc;
pub mod stdio_port;
