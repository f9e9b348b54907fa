//! What a shardkv member counts beyond Raft: client requests by operation and result (with
//! their latency), and the migration task's progress. Rendered on the admin port with the
//! per-shard gauges read from the state machine (see [`crate::admin`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use quorumkv_common::rpc::{ErrorKind, RpcError};
use quorumkv_raft_core::Histogram;
use tonic::Status;

/// A client operation of the `ShardKv` service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Put,
    Append,
    Delete,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Get, Op::Put, Op::Append, Op::Delete];

    pub fn label(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Append => "append",
            Op::Delete => "delete",
        }
    }
}

/// Result labels, in the order of [`KvMetrics`]' arrays.
pub const RESULTS: [&str; 7] = [
    "ok",
    "wrong_group",
    "not_leader",
    "retry_later",
    "invalid",
    "timeout",
    "other",
];

/// The result label of a reply.
pub fn result_label<T>(r: &Result<T, Status>) -> &'static str {
    let Err(status) = r else {
        return "ok";
    };
    match RpcError::from_status(status).kind {
        ErrorKind::WrongGroup => "wrong_group",
        ErrorKind::NotLeader { .. } => "not_leader",
        ErrorKind::RetryLater => "retry_later",
        ErrorKind::InvalidArgument => "invalid",
        ErrorKind::Timeout => "timeout",
        ErrorKind::ShuttingDown
        | ErrorKind::NotFound
        | ErrorKind::PermissionDenied
        | ErrorKind::Tls
        | ErrorKind::Unavailable
        | ErrorKind::Internal => "other",
    }
}

/// Counters of one member; shared by the service, the migration task and the admin source.
#[derive(Debug, Default)]
pub struct KvMetrics {
    /// Latency (and, through its count, the number) of client requests by op and result.
    requests: [[Histogram; RESULTS.len()]; Op::ALL.len()],
    /// Migration chunks this member proposed (as leader) that were installed.
    pub chunks_installed: AtomicU64,
    /// Keys in those chunks.
    pub keys_installed: AtomicU64,
    /// Shards whose last chunk this member installed.
    pub shards_installed: AtomicU64,
    /// Pull rounds that failed (the previous owner unreachable or not ready); retried.
    pub pull_failures: AtomicU64,
    /// Shards whose previous owner confirmed deletion and that were marked fully owned.
    pub shards_collected: AtomicU64,
}

impl KvMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one client request of `op` that started at `start`.
    pub fn record<T>(&self, op: Op, start: Instant, result: &Result<T, Status>) {
        let label = result_label(result);
        let r = RESULTS
            .iter()
            .position(|l| *l == label)
            .unwrap_or(RESULTS.len() - 1);
        self.requests[op as usize][r].observe_since(start);
    }

    /// The histogram of `op` with result `result` (one of [`RESULTS`]).
    pub fn requests(&self, op: Op, result: &str) -> &Histogram {
        let r = RESULTS
            .iter()
            .position(|l| *l == result)
            .unwrap_or(RESULTS.len() - 1);
        &self.requests[op as usize][r]
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumkv_common::rpc::to_status;

    #[test]
    fn results_are_classified_by_error_kind() {
        let m = KvMetrics::new();
        let now = Instant::now();
        m.record(Op::Put, now, &Ok::<(), Status>(()));
        m.record::<()>(Op::Put, now, &Err(to_status(ErrorKind::WrongGroup, "x")));
        m.record::<()>(
            Op::Get,
            now,
            &Err(to_status(ErrorKind::NotLeader { leader: None }, "x")),
        );
        m.record::<()>(Op::Get, now, &Err(to_status(ErrorKind::ShuttingDown, "x")));
        assert_eq!(m.requests(Op::Put, "ok").count(), 1);
        assert_eq!(m.requests(Op::Put, "wrong_group").count(), 1);
        assert_eq!(m.requests(Op::Get, "not_leader").count(), 1);
        assert_eq!(m.requests(Op::Get, "other").count(), 1);
        assert_eq!(m.requests(Op::Delete, "ok").count(), 0);
    }
}
