//! The one error type of the raft core. Variants are named by what the caller should do.

use std::time::Duration;

/// Errors returned by [`crate::RaftNode`] calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    /// This member is not the leader. Retry on the hinted leader if one is known.
    #[error("not leader{}", match (.leader_id, .leader_addr) {
        (Some(id), Some(addr)) => format!(" (leader is {id} at {addr})"),
        (Some(id), None) => format!(" (leader is {id})"),
        _ => " (leader unknown)".to_string(),
    })]
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    /// The call did not complete in time. For a proposal the outcome is unknown: it may still
    /// be applied, so a caller that retries must make the command idempotent (client id +
    /// sequence number).
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The group is busy with something that excludes this call (a membership change in
    /// progress, a leadership transfer); retry shortly.
    #[error("retry later: {0}")]
    RetryLater(String),
    /// The request is malformed or impossible (unknown member, command too large, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The node is shutting down or has stopped; go to another member.
    #[error("node is shutting down")]
    ShuttingDown,
    /// Durable storage failed. The node stops rather than risk acknowledging what it could not
    /// persist.
    #[error("storage error: {0}")]
    Storage(String),
}

impl RaftError {
    /// A short, stable name of the variant, for metric labels and logs (`not_leader`,
    /// `timeout`, `retry_later`, `invalid_argument`, `shutting_down`, `storage`).
    pub fn kind(&self) -> &'static str {
        match self {
            RaftError::NotLeader { .. } => "not_leader",
            RaftError::Timeout(_) => "timeout",
            RaftError::RetryLater(_) => "retry_later",
            RaftError::InvalidArgument(_) => "invalid_argument",
            RaftError::ShuttingDown => "shutting_down",
            RaftError::Storage(_) => "storage",
        }
    }

    pub(crate) fn storage(e: impl std::fmt::Display) -> Self {
        RaftError::Storage(e.to_string())
    }
}

pub type Result<T, E = RaftError> = std::result::Result<T, E>;

impl From<RaftError> for quorumkv_common::rpc::ErrorKind {
    fn from(e: RaftError) -> Self {
        use quorumkv_common::rpc::ErrorKind;
        match e {
            RaftError::NotLeader { leader_addr, .. } => ErrorKind::NotLeader {
                leader: leader_addr,
            },
            RaftError::Timeout(_) => ErrorKind::Timeout,
            RaftError::RetryLater(_) => ErrorKind::RetryLater,
            RaftError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            RaftError::ShuttingDown => ErrorKind::ShuttingDown,
            RaftError::Storage(_) => ErrorKind::Internal,
        }
    }
}

impl From<RaftError> for tonic::Status {
    /// The server edge: a raft error as a status a client can act on (see
    /// `quorumkv_common::rpc`).
    fn from(e: RaftError) -> Self {
        let message = e.to_string();
        quorumkv_common::rpc::to_status(e.into(), message)
    }
}
