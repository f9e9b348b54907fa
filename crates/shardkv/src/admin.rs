//! The admin-port view of a shardkv member: Raft health and metrics plus client requests by
//! operation and result, the state of each shard held, and migration progress.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use quorumkv_admin::prom::Kind;
use quorumkv_admin::{AdminSource, ClusterAccess, MetricsWriter, RequestGate};
use quorumkv_raft_core::{RaftMetrics, RaftNode, Status};

use crate::metrics::{KvMetrics, Op, RESULTS};
use crate::shard::ShardState;
use crate::state::ShardKvState;

/// Shard state labels, as rendered (`quorumkv_shard_state{state=..}`).
const STATES: [&str; 4] = ["serving", "pulling", "collecting", "handing_off"];

fn state_label(s: &ShardState) -> &'static str {
    match s {
        ShardState::Serving => "serving",
        ShardState::Pulling { .. } => "pulling",
        ShardState::Collecting { .. } => "collecting",
        ShardState::HandingOff { .. } => "handing_off",
    }
}

/// [`AdminSource`] of one shardkv member.
pub struct KvAdmin {
    pub(crate) node: Arc<RaftNode<ShardKvState>>,
    pub(crate) gate: Arc<RequestGate>,
    pub(crate) metrics: Arc<KvMetrics>,
    pub(crate) started: Instant,
    /// The controller's members and this member's certificate, for the dashboard.
    pub(crate) cluster: ClusterAccess,
}

struct ShardRow {
    shard: String,
    state: &'static str,
    keys: u64,
    bytes: u64,
}

impl AdminSource for KvAdmin {
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
        let m = &self.metrics;
        w.gauge(
            "quorumkv_kv_requests_in_flight",
            "Client requests being served now.",
            self.gate.in_flight() as f64,
        );
        w.family(
            "quorumkv_kv_requests_total",
            Kind::Counter,
            "Client requests by operation and result.",
        );
        for op in Op::ALL {
            for result in RESULTS {
                let n = m.requests(op, result).count();
                w.sample(
                    "quorumkv_kv_requests_total",
                    &[("op", op.label()), ("result", result)],
                    n as f64,
                );
            }
        }
        w.family(
            "quorumkv_kv_request_duration_seconds",
            Kind::Histogram,
            "Client request latency in seconds, from arrival to reply, by operation and result \
             (series appear with their first request).",
        );
        for op in Op::ALL {
            for result in RESULTS {
                let h = m.requests(op, result);
                if h.count() > 0 {
                    w.histogram(
                        "quorumkv_kv_request_duration_seconds",
                        &[("op", op.label()), ("result", result)],
                        &h.snapshot(),
                    );
                }
            }
        }

        // One short read lock of the state machine: shard counts are small, and key and
        // byte counts are maintained, never scanned.
        let (config_num, sessions, rows) = self.node.read_local(|sm| {
            let rows: Vec<ShardRow> = sm
                .shards()
                .iter()
                .map(|(id, s)| ShardRow {
                    shard: id.to_string(),
                    state: state_label(&s.state),
                    keys: s.keys,
                    bytes: s.bytes,
                })
                .collect();
            (sm.config().num, sm.session_count(), rows)
        });
        w.gauge(
            "quorumkv_shardkv_config_num",
            "Number of the controller configuration this group has reached.",
            config_num as f64,
        );
        w.gauge(
            "quorumkv_shardkv_sessions",
            "Client sessions remembered for exactly-once writes.",
            sessions as f64,
        );
        w.family(
            "quorumkv_shard_state",
            Kind::Gauge,
            "1 for the state of each shard this group holds, 0 for the other states.",
        );
        for r in &rows {
            for state in STATES {
                let v = if r.state == state { 1.0 } else { 0.0 };
                w.sample(
                    "quorumkv_shard_state",
                    &[("shard", &r.shard), ("state", state)],
                    v,
                );
            }
        }
        w.family(
            "quorumkv_shard_keys",
            Kind::Gauge,
            "Keys held in the shard.",
        );
        for r in &rows {
            w.sample("quorumkv_shard_keys", &[("shard", &r.shard)], r.keys as f64);
        }
        w.family(
            "quorumkv_shard_bytes",
            Kind::Gauge,
            "Bytes of keys and values held in the shard.",
        );
        for r in &rows {
            w.sample(
                "quorumkv_shard_bytes",
                &[("shard", &r.shard)],
                r.bytes as f64,
            );
        }
        w.family(
            "quorumkv_migration_shards",
            Kind::Gauge,
            "Shards in migration by phase: pulling (arriving), collecting (arrived, previous \
             owner not yet cleaned up), handing_off (leaving).",
        );
        for (phase, state) in [
            ("pulling", "pulling"),
            ("collecting", "collecting"),
            ("handing_off", "handing_off"),
        ] {
            let n = rows.iter().filter(|r| r.state == state).count();
            w.sample("quorumkv_migration_shards", &[("phase", phase)], n as f64);
        }
        for (name, help, c) in [
            (
                "quorumkv_migration_chunks_installed_total",
                "Migration chunks pulled and installed through the log by this member as leader.",
                &m.chunks_installed,
            ),
            (
                "quorumkv_migration_keys_installed_total",
                "Keys in the migration chunks installed by this member as leader.",
                &m.keys_installed,
            ),
            (
                "quorumkv_migration_shards_installed_total",
                "Shards fully pulled by this member as leader.",
                &m.shards_installed,
            ),
            (
                "quorumkv_migration_pull_failures_total",
                "Pull rounds that failed and will be retried.",
                &m.pull_failures,
            ),
            (
                "quorumkv_migration_shards_collected_total",
                "Shards whose previous owner deleted its copy (migration finished).",
                &m.shards_collected,
            ),
        ] {
            w.counter(name, help, c.load(Relaxed));
        }
    }
}
