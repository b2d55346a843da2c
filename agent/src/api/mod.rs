//! The agent API: the ttrpc service, request validation and the errors it returns.
pub(crate) mod error;
pub(crate) mod rpc;
pub(crate) mod validate;
