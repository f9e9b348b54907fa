//! The crate's one error type.
//!
//! Variants are named for what the caller should do, not for where the failure was found: a
//! Raft wrapper maps them to wire statuses at the server edge, and the client library maps them
//! back, so the names must survive that round trip without interpretation.

/// Why the controller refused a command or a snapshot.
///
/// `Clone + Eq` because a refusal is itself a result: the dedup table remembers it and hands the
/// identical value back to a retry, and replicas compare results in tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CtrlError {
    /// The command is malformed or contradicts the configuration it was applied to. Fix the
    /// argument: retrying the same request id returns this same error, and resending the same
    /// arguments under a new id fails again unless the configuration has changed meanwhile.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The client already received the reply to a later request, so nobody waits for this one
    /// (a delayed duplicate from the log). Discard the reply; nothing was changed.
    #[error(
        "request {seq} of client {client} is superseded by its already-applied request \
         {last_seq}; discard this reply"
    )]
    Superseded {
        /// The client that sent the request.
        client: u64,
        /// The sequence number of the stale request.
        seq: u64,
        /// The newest sequence number already applied for this client.
        last_seq: u64,
    },

    /// A snapshot handed to [`Controller::restore`](crate::Controller::restore) breaks an
    /// invariant. Do not install it; fetch a snapshot from another replica.
    #[error("corrupt snapshot: {0}")]
    CorruptSnapshot(String),

    /// A controller member could not start: its data directory was created with another
    /// shard count, or its storage, TLS material or listener is unusable. Fix the
    /// configuration or the data directory and start it again; retrying unchanged fails again.
    #[error("cannot start: {0}")]
    CannotStart(String),
}
