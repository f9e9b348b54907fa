//! The admin-port view of a controller member: Raft health and metrics, requests by operation
//! and result with their latency, and the latest configuration (see `quorumkv-admin`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use quorumkv_admin::prom::Kind;
use quorumkv_admin::{AdminSource, ClusterAccess, MetricsWriter, RequestGate};
use quorumkv_common::rpc::{ErrorKind, RpcError};
use quorumkv_raft_core::{Histogram, RaftMetrics, RaftNode, Status};
use tonic::Status as RpcStatus;

use crate::sm::ControllerSm;

/// An operation of the `ShardCtrler` service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Join,
    Leave,
    Move,
    Query,
    SetServers,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::Join, Op::Leave, Op::Move, Op::Query, Op::SetServers];

    pub fn label(self) -> &'static str {
        match self {
            Op::Join => "join",
            Op::Leave => "leave",
            Op::Move => "move",
            Op::Query => "query",
            Op::SetServers => "set_servers",
        }
    }
}

/// Result labels, in the order of [`CtrlMetrics`]' arrays.
pub const RESULTS: [&str; 6] = [
    "ok",
    "not_leader",
    "retry_later",
    "invalid",
    "timeout",
    "other",
];

fn result_index<T>(r: &Result<T, RpcStatus>) -> usize {
    let Err(status) = r else {
        return 0;
    };
    match RpcError::from_status(status).kind {
        ErrorKind::NotLeader { .. } => 1,
        ErrorKind::RetryLater => 2,
        ErrorKind::InvalidArgument => 3,
        ErrorKind::Timeout => 4,
        _ => 5,
    }
}

/// Requests of one controller member by operation and result.
#[derive(Debug, Default)]
pub struct CtrlMetrics {
    counts: [[AtomicU64; RESULTS.len()]; Op::ALL.len()],
    latency: [Histogram; Op::ALL.len()],
}

impl CtrlMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one request of `op` that started at `start`.
    pub fn record<T>(&self, op: Op, start: Instant, result: &Result<T, RpcStatus>) {
        self.counts[op as usize][result_index(result)].fetch_add(1, Relaxed);
        self.latency[op as usize].observe_since(start);
    }

    /// Requests of `op` with result `result` (one of [`RESULTS`]).
    pub fn count(&self, op: Op, result: &str) -> u64 {
        RESULTS
            .iter()
            .position(|r| *r == result)
            .map_or(0, |i| self.counts[op as usize][i].load(Relaxed))
    }
}

/// [`AdminSource`] of one controller member.
pub struct CtrlerAdmin {
    pub(crate) node: Arc<RaftNode<ControllerSm>>,
    pub(crate) gate: Arc<RequestGate>,
    pub(crate) metrics: Arc<CtrlMetrics>,
    pub(crate) started: Instant,
    /// The controller's members and this member's certificate, for the dashboard.
    pub(crate) cluster: ClusterAccess,
}

impl AdminSource for CtrlerAdmin {
    fn raft_status(&self) -> Status {
        self.node.status()
    }

    fn raft_metrics(&self) -> Arc<RaftMetrics> {
        self.node.metrics().clone()
    }

    fn started(&self) -> Instant {
        self.started
    }

    fn shutting_down(&self) -> bool {
        self.gate.is_closing()
    }

    fn cluster(&self) -> Option<ClusterAccess> {
        Some(self.cluster.clone())
    }

    fn render_extra_metrics(&self, w: &mut MetricsWriter) {
        w.family(
            "quorumkv_ctrler_requests_total",
            Kind::Counter,
            "Controller requests by operation and result.",
        );
        for op in Op::ALL {
            for result in RESULTS {
                let n = self.metrics.count(op, result);
                w.sample(
                    "quorumkv_ctrler_requests_total",
                    &[("op", op.label()), ("result", result)],
                    n as f64,
                );
            }
        }
        w.family(
            "quorumkv_ctrler_request_duration_seconds",
            Kind::Histogram,
            "Controller request latency in seconds, from arrival to reply, by operation.",
        );
        for op in Op::ALL {
            let h = self.metrics.latency[op as usize].snapshot();
            w.histogram(
                "quorumkv_ctrler_request_duration_seconds",
                &[("op", op.label())],
                &h,
            );
        }
        let (num, groups, shards) = self.node.read_local(|sm| {
            let c = sm.controller();
            let latest = c.latest();
            (latest.num, latest.groups.len(), c.num_shards())
        });
        w.gauge(
            "quorumkv_ctrler_config_num",
            "Number of the latest configuration.",
            num as f64,
        );
        w.gauge(
            "quorumkv_ctrler_groups",
            "Replica groups in the latest configuration.",
            groups as f64,
        );
        w.gauge(
            "quorumkv_ctrler_shards",
            "The fixed shard count.",
            shards as f64,
        );
        w.gauge(
            "quorumkv_ctrler_requests_in_flight",
            "Requests being served now.",
            self.gate.in_flight() as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumkv_common::rpc::to_status;

    #[test]
    fn requests_are_counted_by_op_and_result() {
        let m = CtrlMetrics::new();
        let now = Instant::now();
        m.record(Op::Join, now, &Ok::<(), RpcStatus>(()));
        m.record::<()>(
            Op::Join,
            now,
            &Err(to_status(ErrorKind::InvalidArgument, "x")),
        );
        m.record::<()>(
            Op::Query,
            now,
            &Err(to_status(ErrorKind::NotLeader { leader: None }, "x")),
        );
        assert_eq!(m.count(Op::Join, "ok"), 1);
        assert_eq!(m.count(Op::Join, "invalid"), 1);
        assert_eq!(m.count(Op::Query, "not_leader"), 1);
        assert_eq!(m.count(Op::Move, "ok"), 0);
        assert_eq!(m.latency[Op::Join as usize].count(), 2);
    }
}
