//! How errors travel over gRPC, in one place for every server and client.
//!
//! A server turns its typed error into a [`tonic::Status`] with [`to_status`]; a client turns
//! the status back into an [`RpcError`] with [`RpcError::from_status`] and acts on its kind:
//!
//! | kind            | gRPC code           | metadata `qkv-error` | the client should          |
//! |-----------------|---------------------|----------------------|----------------------------|
//! | NotLeader       | UNAVAILABLE         | `not-leader`         | retry on `qkv-leader` if set, else another member |
//! | RetryLater      | UNAVAILABLE         | `retry-later`        | back off and retry here    |
//! | ShuttingDown    | UNAVAILABLE         | `shutting-down`      | retry on another member    |
//! | WrongGroup      | FAILED_PRECONDITION | `wrong-group`        | refresh its configuration  |
//! | InvalidArgument | INVALID_ARGUMENT    | —                    | fix the request; never retry |
//! | NotFound        | NOT_FOUND           | —                    | nothing to retry           |
//! | Timeout         | DEADLINE_EXCEEDED   | —                    | outcome unknown: retry with the same request id |
//! | Unavailable     | UNAVAILABLE (other), UNKNOWN, untagged INTERNAL | — | transport failure: retry elsewhere |
//! | Internal        | INTERNAL            | `internal`           | report                     |
//!
//! Untagged UNKNOWN and INTERNAL come from tonic itself, not from our servers: they report a
//! connection that broke mid-call (a leader that died, a server that closed the connection
//! while shutting down). Retrying is safe: a retried write reuses its request id.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

const ERROR_KEY: &str = "qkv-error";
const LEADER_KEY: &str = "qkv-leader";

/// What went wrong, as far as a client needs to know to act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not the leader; `leader` is the leader's `host:port` when known.
    NotLeader {
        leader: Option<String>,
    },
    RetryLater,
    ShuttingDown,
    WrongGroup,
    InvalidArgument,
    NotFound,
    Timeout,
    Unavailable,
    Internal,
}

impl ErrorKind {
    /// Whether retrying the same request (on this or another server) can succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            ErrorKind::InvalidArgument | ErrorKind::NotFound | ErrorKind::Internal
        )
    }
}

/// A failed call, decoded from a gRPC status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub kind: ErrorKind,
    pub message: String,
}

/// Builds the status that carries `kind` and a human-readable `message`.
pub fn to_status(kind: ErrorKind, message: impl Into<String>) -> Status {
    let message = message.into();
    let (code, tag) = match &kind {
        ErrorKind::NotLeader { .. } => (Code::Unavailable, Some("not-leader")),
        ErrorKind::RetryLater => (Code::Unavailable, Some("retry-later")),
        ErrorKind::ShuttingDown => (Code::Unavailable, Some("shutting-down")),
        ErrorKind::WrongGroup => (Code::FailedPrecondition, Some("wrong-group")),
        ErrorKind::InvalidArgument => (Code::InvalidArgument, None),
        ErrorKind::NotFound => (Code::NotFound, None),
        ErrorKind::Timeout => (Code::DeadlineExceeded, None),
        ErrorKind::Unavailable => (Code::Unavailable, None),
        // Tagged, so a client can tell our own internal errors from tonic's reports of broken
        // HTTP/2 connections, which also arrive as INTERNAL.
        ErrorKind::Internal => (Code::Internal, Some("internal")),
    };
    let mut status = Status::new(code, message);
    if let Some(tag) = tag {
        status
            .metadata_mut()
            .insert(ERROR_KEY, MetadataValue::from_static(tag));
    }
    if let ErrorKind::NotLeader {
        leader: Some(leader),
    } = &kind
    {
        if let Ok(v) = leader.parse() {
            status.metadata_mut().insert(LEADER_KEY, v);
        }
    }
    status
}

impl RpcError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RpcError {
            kind,
            message: message.into(),
        }
    }

    /// Decodes a status produced by [`to_status`] (or by the transport itself).
    pub fn from_status(status: &Status) -> Self {
        let tag = status
            .metadata()
            .get(ERROR_KEY)
            .and_then(|v| v.to_str().ok());
        let kind = match (status.code(), tag) {
            (Code::Unavailable, Some("not-leader")) => ErrorKind::NotLeader {
                leader: status
                    .metadata()
                    .get(LEADER_KEY)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            },
            (Code::Unavailable, Some("retry-later")) => ErrorKind::RetryLater,
            (Code::Unavailable, Some("shutting-down")) => ErrorKind::ShuttingDown,
            (Code::Unavailable, _) => ErrorKind::Unavailable,
            // Our servers never answer UNKNOWN: it is tonic reporting a transport failure
            // (a connection broken mid-call, e.g. by a leader that died). Retryable; a retried
            // write reuses its request id, so it still applies at most once.
            (Code::Unknown, _) => ErrorKind::Unavailable,
            // Likewise an untagged INTERNAL: tonic's report of an HTTP/2 protocol error, e.g.
            // a server that closed the connection while shutting down.
            (Code::Internal, None) => ErrorKind::Unavailable,
            (Code::FailedPrecondition, Some("wrong-group")) => ErrorKind::WrongGroup,
            (Code::InvalidArgument, _) | (Code::OutOfRange, _) => ErrorKind::InvalidArgument,
            (Code::NotFound, _) => ErrorKind::NotFound,
            (Code::DeadlineExceeded, _) | (Code::Cancelled, _) => ErrorKind::Timeout,
            _ => ErrorKind::Internal,
        };
        RpcError {
            kind,
            message: status.message().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_status() {
        for kind in [
            ErrorKind::NotLeader {
                leader: Some("a:1".into()),
            },
            ErrorKind::NotLeader { leader: None },
            ErrorKind::RetryLater,
            ErrorKind::ShuttingDown,
            ErrorKind::WrongGroup,
            ErrorKind::InvalidArgument,
            ErrorKind::NotFound,
            ErrorKind::Timeout,
            ErrorKind::Internal,
        ] {
            let e = RpcError::from_status(&to_status(kind.clone(), "m"));
            assert_eq!(e, RpcError::new(kind, "m"));
        }
        assert_eq!(
            RpcError::from_status(&Status::unavailable("conn refused")).kind,
            ErrorKind::Unavailable
        );
        // tonic's own reports of a connection that broke mid-call.
        assert_eq!(
            RpcError::from_status(&Status::unknown("transport error")).kind,
            ErrorKind::Unavailable
        );
        assert_eq!(
            RpcError::from_status(&Status::internal("h2 protocol error: http2 error")).kind,
            ErrorKind::Unavailable
        );
    }
}
