//! The agent's request errors and their ttrpc status codes.
use thiserror::Error;
use ttrpc::{get_status, Code};

use crate::validate::ValidationError;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Unimplemented(String),
}

pub type Result<T> = std::result::Result<T, AgentError>;

impl From<ValidationError> for AgentError {
    fn from(e: ValidationError) -> Self {
        AgentError::InvalidArgument(e.to_string())
    }
}

impl From<AgentError> for ttrpc::Error {
    fn from(e: AgentError) -> Self {
        let code = match &e {
            AgentError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            AgentError::NotFound(_) => Code::NOT_FOUND,
            AgentError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            AgentError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            AgentError::Internal(_) => Code::INTERNAL,
            AgentError::Unimplemented(_) => Code::UNIMPLEMENTED,
        };
        ttrpc::Error::RpcStatus(get_status(code, e.to_string()))
    }
}

pub fn internal(what: impl std::fmt::Display) -> AgentError {
    AgentError::Internal(what.to_string())
}
