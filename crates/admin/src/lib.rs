//! # QuorumKV admin endpoint
//!
//! Every QuorumKV server (`shardctrler-server`, `shardkv-server`) runs, next to its mutual-TLS
//! gRPC port, a plain-HTTP admin port for orchestrators, monitoring and people. Plain HTTP
//! because probes must work without client certificates (Kubernetes and Compose cannot present
//! them), and a browser should need nothing to open the dashboard; the port serves nothing but
//! health, statistics and the cluster's layout (never a key or a value, never a control).
//!
//! - `GET /health/alive` — liveness: 200 `{"status":"alive","uptime_secs":..}` while the Raft
//!   driver runs and beats (its heartbeat is younger than [`STUCK_AFTER`]); 500
//!   `{"status":"dead","reason":"raft_driver_stuck"|"raft_driver_stopped",..}` otherwise. It
//!   never depends on quorum: a member cut off from its group is alive, and restarting it
//!   would not help.
//! - `GET /health/ready` — readiness: 200 only when the member can serve; else 503
//!   `{"status":"not_ready","failed":..,"detail":..}` naming the first failing check, in this
//!   order: `storage_error` (the driver stopped on a storage failure), `raft_not_ready` (driver
//!   stopped or stuck, shutting down, removed from the group, no configuration yet),
//!   `no_quorum` (no known leader, or — on the leader — no quorum of voters heard from within
//!   an election timeout), `catching_up` (applied index behind the known commit index). See
//!   [`health::readiness`].
//! - `GET /metrics` — Prometheus text format 0.0.4: the member's Raft state and
//!   [`quorumkv_raft_core::RaftMetrics`], then whatever the server adds
//!   ([`AdminSource::render_extra_metrics`]). Every metric is prefixed `quorumkv_` and carries
//!   the labels `group` and `node`.
//! - `GET /dashboard` — a live web page of the whole cluster (HTML, CSS and a small script
//!   embedded in the binary, no build step): the configuration with its shard → group map,
//!   migrations with their progress, every group's members (role, term, indexes, readiness,
//!   reachability), leader changes, per-group throughput and p99 latency. It polls
//!   `GET /api/cluster`, the JSON this server gathers on demand from the controller
//!   (the latest configuration) and from every member (the `AdminView` gRPC service of
//!   [`view`], over the cluster's mutual TLS with this server's own certificate); see
//!   [`dashboard`]. Servers whose [`AdminSource::cluster`] is `None` answer 404.
//!
//! A server describes itself through [`AdminSource`] and runs [`serve`] (or the
//! [`AdminServer`] handle). [`probe`] is a minimal HTTP/1.1 GET over `std::net::TcpStream`
//! for the servers' `probe` subcommand (container images without curl). [`RequestGate`] is the
//! shutdown half of the same story: the gRPC services pass every client request through it,
//! so that a stopping server refuses new requests at once, reports not-ready, and waits
//! (bounded) for those in flight.
//!
//! Deliberately left out: TLS and authentication on this port (it exposes no data and no
//! control), a global metrics registry (each member renders its own), push gateways, and any
//! work for the dashboard while no one has it open (gathering happens only on request).

pub mod dashboard;
pub mod gate;
pub mod health;
pub mod probe;
pub mod prom;
mod server;
pub mod shutdown;
pub mod view;

use std::sync::Arc;
use std::time::{Duration, Instant};

use quorumkv_raft_core::{RaftMetrics, RaftNode, StateMachine, Status};

pub use dashboard::ClusterAccess;
pub use gate::{RequestGate, RequestGuard};
pub use probe::{get, probe};
pub use prom::MetricsWriter;
pub use server::{serve, AdminServer};
pub use view::AdminViewService;

/// A driver whose heartbeat is older than this is reported stuck (not alive).
pub const STUCK_AFTER: Duration = Duration::from_secs(5);

/// What the admin endpoint needs from a server.
pub trait AdminSource: Send + Sync + 'static {
    /// The member's latest Raft status.
    fn raft_status(&self) -> Status;
    /// The member's Raft counters (`RaftNode::metrics`).
    fn raft_metrics(&self) -> Arc<RaftMetrics>;
    /// When the server started (uptime).
    fn started(&self) -> Instant;
    /// Whether the server is stopping (it then reports not ready).
    fn shutting_down(&self) -> bool {
        false
    }
    /// Appends the server's own metric families (service requests, shard states, ...).
    fn render_extra_metrics(&self, _out: &mut MetricsWriter) {}
    /// How this server reaches the rest of the cluster for the dashboard; `None` (the
    /// default): no dashboard on this admin port.
    fn cluster(&self) -> Option<ClusterAccess> {
        None
    }
}

/// The [`AdminSource`] of a bare Raft member (tests, or a server with nothing to add).
pub struct NodeSource<S: StateMachine> {
    node: Arc<RaftNode<S>>,
    started: Instant,
    gate: Option<Arc<RequestGate>>,
}

impl<S: StateMachine> NodeSource<S> {
    pub fn new(node: Arc<RaftNode<S>>) -> Self {
        NodeSource {
            node,
            started: Instant::now(),
            gate: None,
        }
    }

    /// Reports not ready once `gate` closes.
    pub fn with_gate(mut self, gate: Arc<RequestGate>) -> Self {
        self.gate = Some(gate);
        self
    }
}

impl<S: StateMachine> AdminSource for NodeSource<S> {
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
        self.gate.as_ref().is_some_and(|g| g.is_closing())
    }
}
