//! Shared building blocks of QuorumKV that carry no Raft or storage logic.
//!
//! - [`addr`]: peer addresses. Every node is addressed by `host:port` where `host` is a DNS name
//!   (or an IP literal in tests). Addresses are kept as strings and resolved again on every
//!   (re)connect, never remembered as IPs, so a peer whose IP changed (a rescheduled pod) is found
//!   again.
//! - [`tls`]: loading the PEM files of a node or client into tonic's mutual-TLS configuration.
//!   Servers always require a client certificate signed by the cluster CA.
//! - [`rpc`]: how errors travel over gRPC (codes + metadata) so clients can act on them.
//! - [`certs`]: generating a CA and node/client/admin certificates with `rcgen` (no openssl),
//!   used by the `quorumkv-certs` command, the tests and the demo.
//! - [`auth`]: certificate roles (node, client, admin) and the one table of who may call which
//!   gRPC method, enforced by a tower layer every server mounts.
//!
//! Deliberately absent: anything that reads argv or the environment, installs a tracing
//! subscriber or talks to the network. Those belong to the binaries.

pub mod addr;
pub mod auth;
pub mod certs;
pub mod rpc;
pub mod shard;
pub mod tls;

pub use addr::{parse_members, HostPort, Member};
pub use auth::{AuthLayer, Role};
pub use shard::shard_of;
pub use tls::{TlsFiles, TlsMaterial};

/// Errors of this crate. Each names what the caller should fix.
#[derive(Debug, thiserror::Error)]
pub enum CommonError {
    /// The input (a flag, a file's contents) is malformed; the message says how. (The
    /// message names the input itself, e.g. `address "x": port must be ...`; callers that wrap
    /// this error in their own "invalid argument" add that prefix once.)
    #[error("{0}")]
    InvalidArgument(String),
    /// A file could not be read or written. The OS's reason is part of the message and
    /// deliberately not a `source()`: error reporters that print the chain (anyhow's `{:#}`)
    /// would otherwise print it twice.
    #[error("{path}: {reason}")]
    Io {
        path: String,
        reason: std::io::Error,
    },
    /// Certificate generation or parsing failed.
    #[error("certificate error: {0}")]
    Certificate(String),
}

impl CommonError {
    pub(crate) fn io(path: &std::path::Path, reason: std::io::Error) -> Self {
        CommonError::Io {
            path: path.display().to_string(),
            reason,
        }
    }
}
