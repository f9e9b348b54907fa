//! The one error type of the raft core. Variants are named by what the caller should do.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The cause of a storage failure, kept whole (with its own source chain) and shareable, so
/// that one failure can be reported to every waiting caller.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Errors returned by [`crate::RaftNode`] calls.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RaftError {
    /// This member is not the leader. Retry on the hinted leader if one is known. A proposal
    /// that fails with this was not applied.
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
    /// The proposal's fate cannot be known here: the log position it had was covered by a
    /// snapshot installed from the leader, which may or may not include it. Like a timeout,
    /// retry with the same request id.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
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
    /// Durable storage (the log, a snapshot file or the state machine's store) failed or holds
    /// bytes this version cannot read. The node stops rather than risk acknowledging what it
    /// could not persist.
    #[error("storage error: {context}")]
    Storage {
        /// What was being done, and where.
        context: String,
        #[source]
        source: Option<Cause>,
    },
}

impl RaftError {
    /// A short, stable name of the variant, for metric labels and logs.
    pub fn kind(&self) -> ErrorKindLabel {
        match self {
            RaftError::NotLeader { .. } => ErrorKindLabel::NotLeader,
            RaftError::Timeout(_) => ErrorKindLabel::Timeout,
            RaftError::OutcomeUnknown(_) => ErrorKindLabel::OutcomeUnknown,
            RaftError::RetryLater(_) => ErrorKindLabel::RetryLater,
            RaftError::InvalidArgument(_) => ErrorKindLabel::InvalidArgument,
            RaftError::ShuttingDown => ErrorKindLabel::ShuttingDown,
            RaftError::Storage { .. } => ErrorKindLabel::Storage,
        }
    }

    /// A storage failure with its cause.
    pub(crate) fn storage(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        RaftError::Storage {
            context: context.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// A storage failure without an underlying error (an invariant the files break).
    pub(crate) fn storage_msg(context: impl Into<String>) -> Self {
        RaftError::Storage {
            context: context.into(),
            source: None,
        }
    }

    /// An I/O failure on `path`.
    pub(crate) fn storage_io(path: &Path, e: std::io::Error) -> Self {
        Self::storage(path.display().to_string(), e)
    }

    /// Bytes on disk that do not decode.
    pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> Self {
        Self::storage_msg(format!("{what} is corrupt: {detail}"))
    }

    /// A failure of the state machine's own storage.
    pub(crate) fn state_machine(context: impl Into<String>, e: crate::SmError) -> Self {
        RaftError::Storage {
            context: context.into(),
            source: Some(Arc::from(e)),
        }
    }

    /// Whether the caller may retry the same request and expect a different outcome.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            RaftError::InvalidArgument(_) | RaftError::Storage { .. }
        )
    }
}

/// The kinds of [`RaftError`], as metric labels (one spelling, used by `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKindLabel {
    NotLeader,
    Timeout,
    OutcomeUnknown,
    RetryLater,
    InvalidArgument,
    ShuttingDown,
    Storage,
}

impl ErrorKindLabel {
    /// Every kind, in label order.
    pub const ALL: [ErrorKindLabel; 7] = [
        ErrorKindLabel::NotLeader,
        ErrorKindLabel::Timeout,
        ErrorKindLabel::OutcomeUnknown,
        ErrorKindLabel::RetryLater,
        ErrorKindLabel::InvalidArgument,
        ErrorKindLabel::ShuttingDown,
        ErrorKindLabel::Storage,
    ];

    /// The label value (`not_leader`, `timeout`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKindLabel::NotLeader => "not_leader",
            ErrorKindLabel::Timeout => "timeout",
            ErrorKindLabel::OutcomeUnknown => "outcome_unknown",
            ErrorKindLabel::RetryLater => "retry_later",
            ErrorKindLabel::InvalidArgument => "invalid_argument",
            ErrorKindLabel::ShuttingDown => "shutting_down",
            ErrorKindLabel::Storage => "storage",
        }
    }

    /// The position of this kind in [`ErrorKindLabel::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for ErrorKindLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Equal variants with equal fields; storage errors compare by context (their causes are not
/// comparable).
impl PartialEq for RaftError {
    fn eq(&self, other: &Self) -> bool {
        use RaftError::*;
        match (self, other) {
            (
                NotLeader {
                    leader_id: a,
                    leader_addr: b,
                },
                NotLeader {
                    leader_id: c,
                    leader_addr: d,
                },
            ) => a == c && b == d,
            (Timeout(a), Timeout(b)) => a == b,
            (OutcomeUnknown(a), OutcomeUnknown(b))
            | (RetryLater(a), RetryLater(b))
            | (InvalidArgument(a), InvalidArgument(b)) => a == b,
            (ShuttingDown, ShuttingDown) => true,
            (Storage { context: a, .. }, Storage { context: b, .. }) => a == b,
            _ => false,
        }
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
            // Both leave the outcome unknown: the client retries with the same request id.
            RaftError::Timeout(_) | RaftError::OutcomeUnknown(_) => ErrorKind::Timeout,
            RaftError::RetryLater(_) => ErrorKind::RetryLater,
            RaftError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            RaftError::ShuttingDown => ErrorKind::ShuttingDown,
            RaftError::Storage { .. } => ErrorKind::Internal,
        }
    }
}

impl From<RaftError> for tonic::Status {
    /// The server edge: a raft error as a status a client can act on (see
    /// `quorumkv_common::rpc`).
    fn from(e: RaftError) -> Self {
        let message = e.chain();
        quorumkv_common::rpc::to_status(e.into(), message)
    }
}

impl RaftError {
    /// The message with every cause after it (`storage error: /data/raft-log: disk full`),
    /// for callers that show one line.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_in_index_order_and_storage_errors_keep_their_cause() {
        for (i, k) in ErrorKindLabel::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k}");
        }
        let e = RaftError::storage_io(
            Path::new("/data/raft-log"),
            std::io::Error::other("disk on fire"),
        );
        assert_eq!(e.to_string(), "storage error: /data/raft-log");
        let cause = std::error::Error::source(&e).expect("a source");
        assert_eq!(cause.to_string(), "disk on fire");
        assert_eq!(e.chain(), "storage error: /data/raft-log: disk on fire");
    }
}
