//! The graceful stop every server member performs (the SIGTERM path), in one place. A member
//! calls [`quiesce`], then stops whatever background work of its own remains, then [`finish`];
//! the whole is bounded by [`SHUTDOWN_LIMIT`] through one deadline passed to both.
//!
//! Order matters: leadership is handed over while the Raft transport still runs, and the Raft
//! node stops before the gRPC server drains (a follower's stream to a member that no longer
//! leads never ends by itself, so draining first would always run out its time).

use std::time::{Duration, Instant};

use quorumkv_raft_core::{RaftNode, StateMachine};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{AdminServer, RequestGate};

/// Upper bound of a member's whole shutdown.
pub const SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);
/// How long a stopping leader tries to hand leadership over.
pub const HAND_OFF_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a stopping member lets requests already admitted finish.
pub const IN_FLIGHT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the gRPC server may drain before it is dropped. Short: it runs after the admitted
/// requests drained and the Raft node stopped, so only replies being written and idle streams
/// remain.
pub const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// The first steps: close the gate (new requests get `ShuttingDown`, readiness turns 503), hand
/// leadership to the most caught-up voter if this member leads, and let admitted requests finish
/// or fail. Returns the member that leads afterwards, if leadership was handed over.
pub async fn quiesce<S: StateMachine>(
    node: &RaftNode<S>,
    gate: &RequestGate,
    deadline: Instant,
) -> Option<u64> {
    let id = node.id();
    gate.close();
    let new_leader = match node
        .hand_off_leadership(HAND_OFF_TIMEOUT.min(left(deadline)))
        .await
    {
        Ok(to) => to,
        Err(e) => {
            tracing::warn!(node = id, error = %e, "leadership not handed over; the group will elect");
            None
        }
    };
    if let Some(to) = new_leader {
        tracing::info!(node = id, to, "leadership handed over");
    }
    if !gate.drained(IN_FLIGHT_TIMEOUT.min(left(deadline))).await {
        tracing::warn!(
            node = id,
            in_flight = gate.in_flight(),
            "requests still in flight; they fail with ShuttingDown"
        );
    }
    new_leader
}

/// The last steps: stop the Raft node (storage is durable after every step), then the gRPC
/// server (signalled through `stop_server`, drained for at most [`DRAIN_TIMEOUT`], then
/// aborted), then the admin endpoint.
pub async fn finish<S: StateMachine>(
    node: &RaftNode<S>,
    stop_server: Option<oneshot::Sender<()>>,
    server: &mut JoinHandle<()>,
    admin: Option<AdminServer>,
    deadline: Instant,
) {
    node.shutdown().await;
    if let Some(stop) = stop_server {
        let _ = stop.send(());
    }
    if tokio::time::timeout(DRAIN_TIMEOUT.min(left(deadline)), &mut *server)
        .await
        .is_err()
    {
        server.abort();
    }
    if let Some(admin) = admin {
        admin.shutdown().await;
    }
}
