//! Test support for QuorumKV (a dev-dependency only; never linked into a binary).
//!
//! - [`certs`]: a throw-away CA and certificates for loopback clusters, plus a foreign CA to
//!   prove that strangers are refused.
//! - [`net`]: a fault-injecting [`quorumkv_raft_core::Transport`] wrapper. Every member's
//!   outgoing messages pass through one shared [`net::FaultNet`] that can partition named
//!   members, drop a fraction of messages, and delay (and so reorder) them. Since every member
//!   filters what it sends, a partition is symmetric.
//! - [`mem`]: an in-memory transport (mailbox to mailbox) for benchmarks.
//! - [`kv`]: a small deterministic key/value state machine that also detects an index applied
//!   twice or out of order.
//! - [`cluster`]: a Raft group of real members on 127.0.0.1, real gRPC over mutual TLS, with
//!   stop/restart/add/remove of members and awaitable conditions (no fixed sleeps).
//! - [`ports`]: loopback ports for test members, outside the kernel's ephemeral range so that
//!   no outgoing connection can take a stopped member's port before it restarts.
//! - [`syscalls`]: checks a syscall trace of a storage under test against the durability
//!   rule (nothing acknowledged, nothing the log is compacted behind, left unsynced).
//! - [`metrics`]: checks a server's `/metrics` families against the list the monitoring
//!   manifests are validated with.
//! - [`linearizability`]: the `quorumkv-lincheck` crate, re-exported under its old name: a
//!   porcupine-style checker that decides, key by key, whether a history of concurrent
//!   Get/Put/Append/Delete calls (timed-out writes included) is linearizable, plus a
//!   thread-safe [`linearizability::History`] recorder for it. It is a crate of its own so that
//!   `shardkv-client check` can link it without linking this test-support crate.

pub mod certs;
pub mod cluster;
pub mod kv;
pub mod mem;
pub mod metrics;
pub mod net;
pub mod ports;
pub mod syscalls;

pub use quorumkv_lincheck as linearizability;

pub use cluster::{ClusterOptions, TestCluster};
pub use kv::{KvCommand, KvStateMachine};
pub use net::FaultNet;

/// Installs a tracing subscriber for a test if `RUST_LOG` is set (idempotent).
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}
