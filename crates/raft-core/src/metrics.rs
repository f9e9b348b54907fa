//! Counters and latency histograms of one member, for health checks and `/metrics`.
//!
//! This is a library: there is no global registry and no exporter. Each member owns one
//! [`RaftMetrics`], created with its [`crate::Mailbox`] (which every part of the member already
//! holds) and returned by [`crate::RaftNode::metrics`]; the server that embeds the member
//! renders it (see the `quorumkv-admin` crate).
//!
//! Everything is a relaxed atomic: the values are statistics, read without any ordering
//! guarantee between them. The hot paths (a proposal, a batch of peer messages) cost a few
//! atomic adds; per-peer counters sit behind a mutex taken only when a peer is added, and are
//! otherwise updated through an `Arc` the transport keeps per peer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{ErrorKindLabel, RaftError};

/// Upper bounds, in seconds, of the latency buckets of every [`Histogram`]; a last, implicit
/// `+Inf` bucket catches the rest.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A lock-free latency histogram with the fixed [`LATENCY_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket (not cumulative) counts; the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

/// A point-in-time copy of a [`Histogram`], in Prometheus' shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations <= bound)`, cumulative, ascending; `+Inf` last.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of all observations, in seconds.
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Observes the time elapsed since `start`.
    pub fn observe_since(&self, start: Instant) {
        self.observe(start.elapsed());
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.buckets)
            .map(|(bound, c)| {
                cumulative += c.load(Relaxed);
                (bound, cumulative)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            sum: self.sum_nanos.load(Relaxed) as f64 / 1e9,
            // The +Inf bucket, so that `count` and the buckets agree even while observations
            // race with this snapshot.
            count: cumulative,
        }
    }
}

/// Counts of one kind of request: total and failed by [`ErrorKindLabel`], plus the latency
/// of every request (successful or not) from call to result.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    total: AtomicU64,
    failed: [AtomicU64; ErrorKindLabel::ALL.len()],
    pub latency: Histogram,
}

impl RequestMetrics {
    /// Records one request that started at `start` and ended with `result`.
    pub fn record<T>(&self, start: Instant, result: &Result<T, RaftError>) {
        self.total.fetch_add(1, Relaxed);
        if let Err(e) = result {
            self.failed[e.kind().index()].fetch_add(1, Relaxed);
        }
        self.latency.observe_since(start);
    }

    pub fn total(&self) -> u64 {
        self.total.load(Relaxed)
    }

    /// `(error kind, count)` for every kind.
    pub fn failed(&self) -> Vec<(ErrorKindLabel, u64)> {
        ErrorKindLabel::ALL
            .iter()
            .zip(&self.failed)
            .map(|(k, c)| (*k, c.load(Relaxed)))
            .collect()
    }
}

/// Traffic to one peer, as counted by the transport.
#[derive(Debug, Default)]
pub struct PeerMetrics {
    /// Messages handed to the peer's gRPC stream.
    pub sent: AtomicU64,
    /// Messages discarded: the peer's queue was full, it had no address, or its connection
    /// failed with them queued.
    pub dropped: AtomicU64,
}

/// Where a proposal's time goes on the member that proposed it, stage by stage: each
/// histogram measures the time from the previous stage to this one.
#[derive(Debug, Default)]
pub struct ProposalStages {
    /// Waiting in the driver's inbox: from the call to the driver taking it.
    pub queued: Histogram,
    /// Until the entry was durable in this member's log (its own fsync).
    pub persisted: Histogram,
    /// Until a quorum had it durable (committed).
    pub committed: Histogram,
    /// Until the state machine applied it.
    pub applied: Histogram,
    /// Until the reply was handed back to the caller (after the status publication).
    pub replied: Histogram,
}

impl ProposalStages {
    /// `(stage name, histogram)` in the order a proposal passes them.
    pub fn all(&self) -> [(&'static str, &Histogram); 5] {
        [
            ("queued", &self.queued),
            ("persisted", &self.persisted),
            ("committed", &self.committed),
            ("applied", &self.applied),
            ("replied", &self.replied),
        ]
    }
}

/// Everything one member counts. Shared (`Arc`) by the node handle, the driver and the
/// transport.
#[derive(Debug)]
pub struct RaftMetrics {
    /// Reference point of the driver heartbeat (a monotonic clock).
    epoch: Instant,
    /// Milliseconds since `epoch` at the driver's latest loop iteration.
    driver_heartbeat_ms: AtomicU64,
    /// `RaftNode::propose*`: from the call to the result.
    pub proposals: RequestMetrics,
    /// `RaftNode::read_index` (and the reads built on it): from the call to the result.
    pub read_index: RequestMetrics,
    /// The stages of this member's own proposals (see [`ProposalStages`]).
    pub proposal_stages: ProposalStages,
    /// Log writes (one per Ready with entries or a new term or vote): their duration,
    /// fdatasync included.
    pub log_write: Histogram,
    /// Syncs of the state machine's own store before the log is compacted.
    pub store_syncs: AtomicU64,
    /// Snapshots (or store syncs) that failed; retried later.
    pub snapshot_failures: AtomicU64,
    /// Snapshot transfers to peers that completed.
    pub snapshots_sent: AtomicU64,
    /// Snapshot transfers to peers that failed (raft-rs retries them).
    pub snapshots_send_failed: AtomicU64,
    /// Snapshots this member took of its own state machine (log compaction).
    pub snapshots_taken: AtomicU64,
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: AtomicU64,
    peers: Mutex<BTreeMap<u64, Arc<PeerMetrics>>>,
}

impl Default for RaftMetrics {
    fn default() -> Self {
        RaftMetrics {
            epoch: Instant::now(),
            driver_heartbeat_ms: AtomicU64::new(0),
            proposals: RequestMetrics::default(),
            read_index: RequestMetrics::default(),
            proposal_stages: ProposalStages::default(),
            log_write: Histogram::default(),
            store_syncs: AtomicU64::new(0),
            snapshot_failures: AtomicU64::new(0),
            snapshots_sent: AtomicU64::new(0),
            snapshots_send_failed: AtomicU64::new(0),
            snapshots_taken: AtomicU64::new(0),
            snapshots_installed: AtomicU64::new(0),
            peers: Mutex::new(BTreeMap::new()),
        }
    }
}

impl RaftMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counters of peer `id`, created on first use. Callers on a hot path keep the `Arc`.
    pub fn peer(&self, id: u64) -> Arc<PeerMetrics> {
        self.peers.lock().entry(id).or_default().clone()
    }

    /// `(peer id, messages sent, messages dropped)` for every peer ever seen.
    pub fn peers(&self) -> Vec<(u64, u64, u64)> {
        self.peers
            .lock()
            .iter()
            .map(|(id, p)| (*id, p.sent.load(Relaxed), p.dropped.load(Relaxed)))
            .collect()
    }

    /// Called by the driver on every loop iteration (at least once per tick).
    pub(crate) fn driver_beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.driver_heartbeat_ms.store(ms, Relaxed);
    }

    /// Time since the driver's latest loop iteration (since these metrics were created if it
    /// never ran). A driver that is alive beats at least once per tick; a large age means it
    /// is stuck (in a sync, a snapshot, or a bug).
    pub fn driver_heartbeat_age(&self) -> Duration {
        let beat = self.driver_heartbeat_ms.load(Relaxed);
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(beat))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_agree_with_count() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(s.buckets[0], (0.0001, 1));
        let at = |bound: f64| s.buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(at(0.0025), 1);
        assert_eq!(at(0.005), 3);
        assert_eq!(at(10.0), 3);
        assert_eq!(s.buckets.last().unwrap(), &(f64::INFINITY, 4));
        assert!((s.sum - 60.00605).abs() < 1e-6, "{}", s.sum);
    }

    #[test]
    fn requests_count_failures_by_kind() {
        let m = RequestMetrics::default();
        let start = Instant::now();
        m.record(start, &Ok::<(), RaftError>(()));
        m.record::<()>(start, &Err(RaftError::Timeout(Duration::from_secs(1))));
        m.record::<()>(
            start,
            &Err(RaftError::NotLeader {
                leader_id: None,
                leader_addr: None,
            }),
        );
        assert_eq!(m.total(), 3);
        assert_eq!(m.latency.count(), 3);
        let failed: BTreeMap<_, _> = m.failed().into_iter().collect();
        assert_eq!(failed[&ErrorKindLabel::Timeout], 1);
        assert_eq!(failed[&ErrorKindLabel::NotLeader], 1);
        assert_eq!(failed[&ErrorKindLabel::Storage], 0);
    }

    #[test]
    fn heartbeat_age_tracks_the_latest_beat() {
        let m = RaftMetrics::new();
        m.driver_beat();
        assert!(m.driver_heartbeat_age() < Duration::from_secs(1));
        m.peer(2).sent.fetch_add(3, Relaxed);
        m.peer(2).dropped.fetch_add(1, Relaxed);
        assert_eq!(m.peers(), vec![(2, 3, 1)]);
    }
}
