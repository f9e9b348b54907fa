//! Who waits for what, in logical time (ticks): proposals and membership changes at the log
//! index raft-rs gave them, reads batched behind ReadIndex contexts, a leadership transfer;
//! and the replies, which go out only after the status reflecting them is published.
//!
//! Pure bookkeeping, no raft-rs calls: the driver tells it what happened (an entry applied, a
//! read state arrived, a tick passed, a snapshot was installed) and it answers the waiters.
//!
//! # Reads
//! Reads that arrive together form one batch and share one ReadIndex request, identified by a
//! context. raft-rs drops a request silently on a role change, on a follower without a leader
//! and on a leader that has not committed in its term yet, so a batch is issued again under a
//! new context when that situation changes ([`ReadEpoch`]), and, as a fallback for a
//! forwarded request lost on the network, after a long silence. Every context ever issued for
//! a batch stays valid until the batch is answered or its deadline passes: a slow quorum's late
//! acknowledgement still completes it (issuing anew never starves reads whose round trip is
//! longer than the re-issue interval).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use raft::eraftpb::ConfState;
use tokio::sync::oneshot;

use crate::error::{RaftError, Result};
use crate::metrics::RaftMetrics;

/// Somebody waiting for a reply, until the tick `deadline`.
pub(crate) struct Waiter<T> {
    pub deadline: u64,
    pub reply: oneshot::Sender<Result<T>>,
}

impl<T> Waiter<T> {
    pub fn finish(self, r: Result<T>) {
        let _ = self.reply.send(r);
    }
}

/// When a proposal passed each stage (for the per-stage latency histograms only; no decision
/// depends on these).
#[derive(Clone, Copy)]
pub(crate) struct Stages {
    pub queued: Instant,
    pub proposed: Instant,
    pub persisted: Option<Instant>,
    pub committed: Option<Instant>,
}

/// A proposal (or membership change) in the log at a known index, waiting to be applied.
pub(crate) struct Pending<T> {
    pub id: u64,
    pub waiter: Waiter<T>,
    pub stages: Stages,
}

/// What decides whether raft-rs may have dropped a ReadIndex request: when any of it changes
/// between issuing a batch and now, the batch is issued again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadEpoch {
    pub term: u64,
    pub leader: u64,
    pub is_leader: bool,
    /// A leader answers ReadIndex only once it has committed an entry of its term.
    pub committed_in_term: bool,
}

struct ReadBatch {
    waiters: Vec<Waiter<u64>>,
    contexts: Vec<u64>,
    epoch: ReadEpoch,
    issued_at_tick: u64,
}

pub(crate) struct Transfer {
    pub to: u64,
    pub waiter: Waiter<()>,
}

/// Everything the driver owes an answer.
#[derive(Default)]
pub(crate) struct Requests {
    pub proposals: BTreeMap<u64, Pending<Vec<u8>>>,
    pub conf_changes: BTreeMap<u64, Pending<ConfState>>,
    queued_reads: Vec<Waiter<u64>>,
    /// Batches by id, and the batch of every context issued.
    read_batches: HashMap<u64, ReadBatch>,
    read_contexts: HashMap<u64, u64>,
    next_batch: u64,
    /// (read index, waiters) that have their index and wait for `applied` to reach it.
    reads_ready: Vec<(u64, Vec<Waiter<u64>>)>,
    pub transfer: Option<Transfer>,
    /// Replies to send after the next status publication: a caller that got its answer and
    /// then looks at the status must never see an older state.
    completions: Vec<Box<dyn FnOnce() + Send>>,
}

impl Requests {
    /// Queues a reply to go out after the next status publication.
    pub fn complete<T: Send + 'static>(&mut self, waiter: Waiter<T>, result: Result<T>) {
        self.completions
            .push(Box::new(move || waiter.finish(result)));
    }

    /// Queues any reply action to run after the next status publication.
    pub fn complete_with(&mut self, f: impl FnOnce() + Send + 'static) {
        self.completions.push(Box::new(f));
    }

    /// Sends the queued replies (the status reflecting them is published).
    pub fn send_completions(&mut self) {
        for reply in self.completions.drain(..) {
            reply();
        }
    }

    pub fn queue_read(&mut self, w: Waiter<u64>) {
        self.queued_reads.push(w);
    }

    /// The reads queued since the last call become one batch, to be issued under the returned
    /// context (`next_ctx` makes fresh ones); `None` when nothing is queued.
    pub fn take_read_batch(&mut self, epoch: ReadEpoch, now: u64, ctx: u64) -> Option<u64> {
        if self.queued_reads.is_empty() {
            return None;
        }
        self.next_batch += 1;
        let id = self.next_batch;
        self.read_batches.insert(
            id,
            ReadBatch {
                waiters: std::mem::take(&mut self.queued_reads),
                contexts: vec![ctx],
                epoch,
                issued_at_tick: now,
            },
        );
        self.read_contexts.insert(ctx, id);
        Some(ctx)
    }

    /// The batches to issue again: those issued under another epoch, and those silent for
    /// `silence` ticks. Returns their ids; each is then re-issued with [`Self::reissued`].
    pub fn reads_to_reissue(&self, epoch: ReadEpoch, now: u64, silence: u64) -> Vec<u64> {
        self.read_batches
            .iter()
            .filter(|(_, b)| b.epoch != epoch || now.saturating_sub(b.issued_at_tick) >= silence)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Batch `id` was issued again under `ctx` (its earlier contexts stay valid).
    pub fn reissued(&mut self, id: u64, ctx: u64, epoch: ReadEpoch, now: u64) {
        if let Some(b) = self.read_batches.get_mut(&id) {
            b.contexts.push(ctx);
            b.epoch = epoch;
            b.issued_at_tick = now;
            self.read_contexts.insert(ctx, id);
        }
    }

    /// raft-rs confirmed the read index for `ctx`: the batch waits for `applied >= index`.
    pub fn read_state(&mut self, ctx: u64, index: u64) {
        let Some(id) = self.read_contexts.remove(&ctx) else {
            return;
        };
        if let Some(b) = self.read_batches.remove(&id) {
            for c in &b.contexts {
                self.read_contexts.remove(c);
            }
            self.reads_ready.push((index, b.waiters));
        }
    }

    /// Answers the reads whose index has been applied.
    pub fn finish_reads(&mut self, applied: u64) {
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_ready)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.reads_ready = waiting;
        for (index, waiters) in done {
            for w in waiters {
                self.complete(w, Ok(index));
            }
        }
    }

    /// Fails everything whose deadline passed (`now` in ticks) with `Timeout(after)`.
    pub fn expire(&mut self, now: u64, after: std::time::Duration) {
        fn expired<T>(w: &Waiter<T>, now: u64) -> bool {
            w.deadline <= now
        }
        let timeout = || RaftError::Timeout(after);
        fn expire_map<T>(
            map: &mut BTreeMap<u64, Pending<T>>,
            now: u64,
            after: std::time::Duration,
        ) {
            let gone: Vec<u64> = map
                .iter()
                .filter(|(_, p)| p.waiter.deadline <= now)
                .map(|(i, _)| *i)
                .collect();
            for i in gone {
                if let Some(p) = map.remove(&i) {
                    p.waiter.finish(Err(RaftError::Timeout(after)));
                }
            }
        }
        expire_map(&mut self.proposals, now, after);
        expire_map(&mut self.conf_changes, now, after);
        let split = |ws: Vec<Waiter<u64>>| -> Vec<Waiter<u64>> {
            ws.into_iter()
                .filter_map(|w| {
                    if expired(&w, now) {
                        w.finish(Err(timeout()));
                        None
                    } else {
                        Some(w)
                    }
                })
                .collect()
        };
        self.queued_reads = split(std::mem::take(&mut self.queued_reads));
        let mut emptied = Vec::new();
        for (id, b) in self.read_batches.iter_mut() {
            b.waiters = split(std::mem::take(&mut b.waiters));
            if b.waiters.is_empty() {
                emptied.push(*id);
            }
        }
        for id in emptied {
            if let Some(b) = self.read_batches.remove(&id) {
                for c in b.contexts {
                    self.read_contexts.remove(&c);
                }
            }
        }
        for (_, ws) in &mut self.reads_ready {
            *ws = split(std::mem::take(ws));
        }
        self.reads_ready.retain(|(_, w)| !w.is_empty());
        if let Some(t) = self.transfer.take() {
            if expired(&t.waiter, now) {
                t.waiter.finish(Err(timeout()));
            } else {
                self.transfer = Some(t);
            }
        }
    }

    /// A snapshot up to `index` was installed: what waited at an index it covers will never
    /// be applied here one by one, and whether it is in the snapshot cannot be known.
    pub fn covered_by_snapshot(&mut self, index: u64) {
        self.outcome_unknown(
            ..=index,
            |i| {
                format!(
                    "a snapshot up to index {index} replaced the log position {i} of this \
                     proposal; retry with the same request id"
                )
            },
            |i| {
                format!(
                    "a snapshot up to index {index} replaced this membership change's log \
                     position {i}; list the members and repeat the change if needed"
                )
            },
        );
    }

    /// This member left the group while leading: proposals and changes after `committed`
    /// will not be applied here (it hears no more of the log), though the next leader may
    /// still commit them. Their outcome is unknown now, not at their deadline.
    pub fn orphaned_after(&mut self, committed: u64) {
        self.outcome_unknown(
            committed + 1..,
            |i| {
                format!(
                    "this member was removed from the group while log position {i} of this \
                     proposal was uncommitted; the new leader may still commit it: retry \
                     with the same request id"
                )
            },
            |i| {
                format!(
                    "this member was removed from the group before the membership change at \
                     log position {i} committed; list the members and repeat it if needed"
                )
            },
        );
    }

    /// Answers `OutcomeUnknown` to the proposals and membership changes waiting at `indexes`,
    /// each with the message made for its log position.
    fn outcome_unknown(
        &mut self,
        indexes: impl std::ops::RangeBounds<u64> + Clone,
        proposal: impl Fn(u64) -> String,
        change: impl Fn(u64) -> String,
    ) {
        let waiting: Vec<u64> = self
            .proposals
            .range(indexes.clone())
            .map(|(i, _)| *i)
            .collect();
        for i in waiting {
            let p = self.proposals.remove(&i).unwrap();
            self.complete(p.waiter, Err(RaftError::OutcomeUnknown(proposal(i))));
        }
        let waiting: Vec<u64> = self.conf_changes.range(indexes).map(|(i, _)| *i).collect();
        for i in waiting {
            let p = self.conf_changes.remove(&i).unwrap();
            self.complete(p.waiter, Err(RaftError::OutcomeUnknown(change(i))));
        }
    }

    /// Records the stage timestamps of the proposals at indexes up to `index` that just
    /// reached `stage` (persisted locally, or committed).
    pub fn mark(&mut self, upto: u64, stage: Stage, now: Instant) {
        for (_, p) in self.proposals.range_mut(..=upto) {
            let slot = match stage {
                Stage::Persisted => &mut p.stages.persisted,
                Stage::Committed => &mut p.stages.committed,
            };
            if slot.is_none() {
                *slot = Some(now);
            }
        }
    }

    /// Fails every waiter with `err()` (the driver stops). Replies already due go out first.
    pub fn fail_all(&mut self, err: impl Fn() -> RaftError) {
        self.send_completions();
        for (_, p) in std::mem::take(&mut self.proposals) {
            p.waiter.finish(Err(err()));
        }
        for (_, p) in std::mem::take(&mut self.conf_changes) {
            p.waiter.finish(Err(err()));
        }
        for w in std::mem::take(&mut self.queued_reads) {
            w.finish(Err(err()));
        }
        self.read_contexts.clear();
        for (_, b) in std::mem::take(&mut self.read_batches) {
            for w in b.waiters {
                w.finish(Err(err()));
            }
        }
        for (_, ws) in std::mem::take(&mut self.reads_ready) {
            for w in ws {
                w.finish(Err(err()));
            }
        }
        if let Some(t) = self.transfer.take() {
            t.waiter.finish(Err(err()));
        }
    }
}

/// The stages [`Requests::mark`] records.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stage {
    Persisted,
    Committed,
}

/// Records a proposal's stage latencies once it is applied and its reply is about to go out.
pub(crate) fn observe_stages(metrics: &RaftMetrics, s: &Stages, applied: Instant) {
    let st = &metrics.proposal_stages;
    st.queued
        .observe(s.proposed.saturating_duration_since(s.queued));
    let persisted = s.persisted.unwrap_or(s.proposed);
    st.persisted
        .observe(persisted.saturating_duration_since(s.proposed));
    let committed = s.committed.unwrap_or(persisted).max(persisted);
    st.committed
        .observe(committed.saturating_duration_since(persisted));
    st.applied
        .observe(applied.saturating_duration_since(committed));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn waiter<T>(deadline: u64) -> (Waiter<T>, oneshot::Receiver<Result<T>>) {
        let (tx, rx) = oneshot::channel();
        (
            Waiter {
                deadline,
                reply: tx,
            },
            rx,
        )
    }

    fn epoch(term: u64) -> ReadEpoch {
        ReadEpoch {
            term,
            leader: 1,
            is_leader: true,
            committed_in_term: true,
        }
    }

    #[test]
    fn a_late_acknowledgement_of_an_earlier_context_still_answers_the_batch() {
        let mut r = Requests::default();
        let (w, mut rx) = waiter::<u64>(100);
        r.queue_read(w);
        assert_eq!(r.take_read_batch(epoch(2), 0, 11), Some(11));
        // Silent for long: issued again under a new context.
        let again = r.reads_to_reissue(epoch(2), 30, 20);
        assert_eq!(again.len(), 1);
        r.reissued(again[0], 12, epoch(2), 30);
        // The first context's answer arrives late: it counts.
        r.read_state(11, 40);
        r.finish_reads(40);
        r.send_completions();
        assert_eq!(rx.try_recv().unwrap().unwrap(), 40);
        // The second context's answer then matches nothing.
        r.read_state(12, 41);
        assert!(r.read_contexts.is_empty() && r.read_batches.is_empty());
    }

    #[test]
    fn batches_are_issued_again_only_when_the_epoch_changes_or_after_a_long_silence() {
        let mut r = Requests::default();
        let (w, _rx) = waiter::<u64>(100);
        r.queue_read(w);
        r.take_read_batch(epoch(2), 0, 1);
        assert!(r.reads_to_reissue(epoch(2), 5, 20).is_empty());
        assert_eq!(r.reads_to_reissue(epoch(3), 5, 20).len(), 1, "new term");
        assert_eq!(r.reads_to_reissue(epoch(2), 20, 20).len(), 1, "silence");
    }

    #[test]
    fn deadlines_expire_in_ticks_and_a_snapshot_makes_covered_proposals_unknown() {
        let mut r = Requests::default();
        let now = Instant::now();
        let stages = Stages {
            queued: now,
            proposed: now,
            persisted: None,
            committed: None,
        };
        let (w1, mut rx1) = waiter::<Vec<u8>>(10);
        let (w2, mut rx2) = waiter::<Vec<u8>>(50);
        r.proposals.insert(
            7,
            Pending {
                id: 1,
                waiter: w1,
                stages,
            },
        );
        r.proposals.insert(
            9,
            Pending {
                id: 2,
                waiter: w2,
                stages,
            },
        );
        r.expire(9, Duration::from_secs(1));
        assert!(rx1.try_recv().is_err(), "not yet");
        r.expire(10, Duration::from_secs(1));
        assert!(matches!(
            rx1.try_recv().unwrap(),
            Err(RaftError::Timeout(_))
        ));
        r.covered_by_snapshot(12);
        r.send_completions();
        assert!(matches!(
            rx2.try_recv().unwrap(),
            Err(RaftError::OutcomeUnknown(_))
        ));
    }
}
