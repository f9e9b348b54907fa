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
//! | PermissionDenied | PERMISSION_DENIED  | —                    | use a certificate of the role the message names; never retry |
//! | Tls             | (transport)         | —                    | fix the TLS files (certificate refused, or the server not trusted); never retry |
//! | Timeout         | DEADLINE_EXCEEDED   | —                    | outcome unknown: retry with the same request id |
//! | Unavailable     | UNAVAILABLE (other), UNKNOWN, untagged INTERNAL | — | transport failure: retry elsewhere |
//! | Internal        | INTERNAL            | `internal`           | report                     |
//!
//! Untagged UNKNOWN and INTERNAL come from tonic itself, not from our servers: they report a
//! connection that broke mid-call (a leader that died, a server that closed the connection
//! while shutting down). Retrying is safe: a retried write reuses its request id.
//!
//! tonic reports transport failures with a terse message ("transport error", "operation was
//! canceled") and keeps the cause in the status's `source()` chain, so the message of an
//! [`RpcError`] carries that chain too. When the cause is a failed TLS handshake — the server
//! refused the client's certificate (a TLS alert such as `UnknownCA`), or the client refused
//! the server's (`invalid peer certificate`) — the kind is [`ErrorKind::Tls`] and the message
//! says which side refused and what to check.

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
    /// The peer's certificate lacks the role the call needs ([`crate::auth`]).
    PermissionDenied,
    /// The TLS handshake failed on a certificate: ours was refused by the server, or the
    /// server's is not trusted by us. Retrying cannot help until the TLS files change.
    Tls,
    Timeout,
    Unavailable,
    Internal,
}

impl ErrorKind {
    /// Whether retrying the same request (on this or another server) can succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            ErrorKind::InvalidArgument
                | ErrorKind::NotFound
                | ErrorKind::PermissionDenied
                | ErrorKind::Tls
                | ErrorKind::Internal
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
        ErrorKind::PermissionDenied => (Code::PermissionDenied, None),
        // Never sent by a server (it is a client-side finding); encoded for completeness.
        ErrorKind::Tls => (Code::Unavailable, Some("tls")),
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
        let message = message_with_causes(status);
        if let Some(explained) = tls_failure(&message) {
            return RpcError {
                kind: ErrorKind::Tls,
                message: explained,
            };
        }
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
            (Code::Unavailable, Some("tls")) => ErrorKind::Tls,
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
            (Code::PermissionDenied, _) => ErrorKind::PermissionDenied,
            (Code::DeadlineExceeded, _) | (Code::Cancelled, _) => ErrorKind::Timeout,
            _ => ErrorKind::Internal,
        };
        RpcError { kind, message }
    }
}

/// The status's message followed by each cause in its `source()` chain that the text does
/// not already contain: `transport error: connection error: received fatal alert: UnknownCA`.
fn message_with_causes(status: &Status) -> String {
    let mut message = status.message().to_string();
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        let text = e.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = e.source();
    }
    message
}

/// When `message` (with its causes) reports a TLS handshake that failed on a certificate, the
/// explanation a user can act on.
fn tls_failure(message: &str) -> Option<String> {
    const SERVER_REFUSED: &str = "received fatal alert: ";
    const CLIENT_REFUSED: &str = "invalid peer certificate: ";
    let reason = |marker: &str| {
        let at = message.find(marker)? + marker.len();
        Some(
            message[at..]
                .split([':', ',', ')'])
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
        )
    };
    if let Some(alert) = reason(SERVER_REFUSED) {
        return Some(format!(
            "the server refused this client's TLS certificate (alert {alert}): check that \
             --tls-cert was issued by a CA the servers trust (their --tls-ca), is not expired, \
             and that --tls-key is its key"
        ));
    }
    if let Some(why) = reason(CLIENT_REFUSED) {
        return Some(format!(
            "this client does not trust the server's TLS certificate ({why}): check that \
             --tls-ca holds the CA that issued the servers' certificates, and that the \
             server's certificate names the host dialled"
        ));
    }
    None
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
            ErrorKind::PermissionDenied,
            ErrorKind::Tls,
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

    /// tonic hides the cause of a transport failure behind its message: a TLS refusal must
    /// reach the user as one, not as "transport error" or "operation was canceled".
    #[test]
    fn tls_refusals_are_named_from_the_source_chain() {
        #[derive(Debug)]
        struct Cause(&'static str, Option<Box<Cause>>);
        impl std::fmt::Display for Cause {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Cause {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|c| c as _)
            }
        }
        let chain = |top: &'static str, rest: Cause| {
            Status::from_error(Box::new(Cause(top, Some(Box::new(rest)))))
        };
        let refused = chain(
            "transport error",
            Cause(
                "connection error",
                Some(Box::new(Cause("received fatal alert: UnknownCA", None))),
            ),
        );
        let e = RpcError::from_status(&refused);
        assert_eq!(e.kind, ErrorKind::Tls);
        assert!(
            e.message
                .contains("the server refused this client's TLS certificate (alert UnknownCA)"),
            "{}",
            e.message
        );
        let untrusted = chain(
            "transport error",
            Cause("invalid peer certificate: NotValidForName", None),
        );
        let e = RpcError::from_status(&untrusted);
        assert_eq!(e.kind, ErrorKind::Tls);
        assert!(e.message.contains("(NotValidForName)"), "{}", e.message);
        // Other transport failures keep their kind, and their cause is shown.
        let closed = chain("transport error", Cause("connection closed", None));
        let e = RpcError::from_status(&closed);
        assert!(e.kind.is_retryable());
        assert!(e.message.ends_with("connection closed"), "{}", e.message);
    }
}
