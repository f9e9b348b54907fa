//! The driver: one OS thread per member that owns `RawNode` and follows raft-rs's Ready steps.
//!
//! Nothing else touches `RawNode`. Requests arrive through the [`crate::Mailbox`]; each turn of
//! the loop takes every request already queued (that is where batching comes from: many
//! proposals and peer messages become one Ready and one fsync), ticks the logical clock when
//! its time has come, and then processes one Ready in the documented order:
//!
//! 1. send the leader's messages (they may go before its entries are durable: the leader
//!    counts itself in a quorum only after step 3, Raft thesis 10.2.1);
//! 2. install an incoming snapshot: the log (one synced write), then the state machine;
//! 3. append entries and the hard state with ONE synced write when raft-rs requires it
//!    (`must_sync`); a hard state that only moves the commit index is not written at all (the
//!    leader tells it again after a restart);
//! 4. only then send the persisted messages (votes and append responses);
//! 5. apply committed entries to the state machine and answer their proposers;
//! 6. collect read states (ReadIndex) and answer reads once applied catches up;
//! 7. `advance`, then handle the `LightReady` (commit index, messages, more committed entries)
//!    and `advance_apply`.
//!
//! After the Ready, compaction: once enough log has been applied since the base, the state
//! machine's store is synced (or, kept in memory, snapshotted to a file) on the background
//! worker ([`jobs`]), and the log is compacted behind the index that covered. A snapshot for a
//! member that fell behind is written the same way, from a point-in-time view, while this
//! thread goes on ticking and replicating.
//!
//! The driver is a plain thread, not a tokio task, because step 3 blocks on fsync.
//!
//! # Time
//! The driver's decisions use logical time only: raft-rs's ticks, and request deadlines
//! counted in ticks from when the driver takes a request. The loop in [`Driver::run`] is the
//! only place that reads the wall clock (to tick every `tick_interval`); tests step drivers
//! with [`Driver::handle`], [`Driver::tick`] and [`Driver::step`] directly (see `tests`).
//!
//! # Matching replies
//! A proposal's entry carries a per-member unique id in its context ([`codec`]), and the
//! driver remembers the log index raft-rs gave the entry ([`requests`]). When that index is
//! applied with our id the proposer gets the response; with another entry there (a new leader
//! overwrote it) the proposer gets `NotLeader` at once; when a snapshot covers the index,
//! `OutcomeUnknown` at once; if none of these happens by the deadline, `Timeout` (outcome
//! unknown).

pub(crate) mod codec;
pub(crate) mod jobs;
mod requests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::TryRecvError;
use parking_lot::RwLock;
use prost::Message as _;
use protobuf::Message as _;
use quorumkv_proto::storage as pb;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, MessageType, Snapshot};
use raft::{RawNode, ReadState, StateRole};
use tokio::sync::watch;

use self::jobs::{Job, JobDone, Purpose, Worker};
use self::requests::{
    observe_stages, Pending, ReadEpoch, Requests, Stage, Stages, Transfer, Waiter,
};
use crate::config::NodeConfig;
use crate::error::{RaftError, Result};
use crate::mailbox::{Control, Inbox, Msg};
use crate::metrics::RaftMetrics;
use crate::state_machine::{Durability, StateMachine};
use crate::status::{PeerProgress, Role, Status};
use crate::storage::snapshot::{SnapshotFileReader, SnapshotHeader};
use crate::storage::{Base, LogStore, SendableSnapshot};
use crate::transport::Transport;

/// Most requests taken from the inbox before one Ready is processed.
const MAX_BATCH: usize = 4096;

pub(crate) struct Driver<S: StateMachine> {
    cfg: NodeConfig,
    raw: RawNode<LogStore>,
    sm: Arc<RwLock<S>>,
    durability: Durability,
    transport: Arc<dyn Transport>,
    inbox: Inbox,
    status_tx: watch::Sender<Status>,
    metrics: Arc<RaftMetrics>,
    worker: Worker,
    /// A background job runs (one at a time).
    job_running: bool,
    /// raft-rs asked for a snapshot to send and none is being written yet.
    snapshot_wanted: bool,
    /// After this leader removed itself: the voter told to campaign, and the last tick to
    /// tell it again (see [`Driver::step_down_removed`]).
    removed_hand_off: Option<(u64, u64)>,
    members: BTreeMap<u64, String>,
    /// The configuration as of `applied`.
    conf_state: ConfState,
    applied: u64,
    applied_term: u64,
    /// Entries up to here are already in the state machine's own store (see
    /// `StateMachine::persisted_index`): re-applied to raft only, not to the state machine.
    /// No snapshot or store sync is taken while `applied` is below it: the state machine's
    /// state is then ahead of the index the core would label it with.
    sm_floor: u64,
    /// Bytes of entries applied since the base.
    log_bytes: u64,
    next_id: u64,
    requests: Requests,
    /// Logical time: ticks since the driver started.
    ticks: u64,
    /// Tick at which each peer was last heard from. raft-rs's own `recent_active` flags are
    /// cleared at every quorum check, so a status read just after one would show a healthy
    /// leader without a quorum; this is what the published `recent_active` is made of.
    heard_at_tick: HashMap<u64, u64>,
    shutting_down: bool,
    /// A failure reported by a background job that must stop the member.
    fatal: Option<RaftError>,
}

impl<S: StateMachine> Driver<S> {
    /// Opens storage, brings the state machine to the log's base (restoring the base's
    /// snapshot file if its own store is older) and builds the `RawNode`. Committed entries
    /// after the base are re-applied by the first Readys.
    pub(crate) fn new(
        cfg: NodeConfig,
        sm: Arc<RwLock<S>>,
        transport: Arc<dyn Transport>,
        inbox: Inbox,
        status_tx: watch::Sender<Status>,
        metrics: Arc<RaftMetrics>,
        worker: Worker,
    ) -> Result<Self> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| RaftError::storage_io(&cfg.data_dir, e))?;
        let book: BTreeMap<u64, String> = cfg.members.iter().cloned().collect();
        let bootstrap = match cfg.bootstrap {
            crate::Bootstrap::NewGroup => Some(book.keys().copied().collect()),
            crate::Bootstrap::Join => None,
        };
        let opts = crate::storage::LogOptions {
            prefill: cfg.log_prefill,
            ..crate::storage::LogOptions::for_compaction_every(cfg.snapshot_log_bytes)
        };
        let mut log = LogStore::open_with(&cfg.data_dir, bootstrap, &book, opts)?;
        let base = log.base().clone();
        let durability = sm.read().durability();
        let persisted = sm.read().persisted_index();
        if persisted > log.last_index() {
            return Err(RaftError::storage_msg(format!(
                "the state machine's store is at index {persisted} but the raft log ends at {}: \
                 the data directory was damaged or mixed from different members",
                log.last_index()
            )));
        }
        // A new group's base holds no state: any store is at least as new as it.
        let empty_base =
            base.index <= crate::storage::BOOTSTRAP_INDEX && base.snapshot_file.is_none();
        let sm_floor = match durability {
            Durability::OwnStore if persisted >= base.index || empty_base => persisted,
            Durability::OwnStore if base.snapshot_file.is_none() => {
                return Err(RaftError::storage_msg(format!(
                    "the state machine's store is at index {persisted}, behind the log's base \
                     {}, and no snapshot file covers the gap: the store lost writes it had \
                     synced, or the data directory was mixed; move it away and re-add this \
                     member to its group",
                    base.index
                )))
            }
            Durability::OwnStore | Durability::InMemory => {
                if let Some(file) = &base.snapshot_file {
                    restore_file(&sm, &log, file, &base)?;
                }
                if durability == Durability::OwnStore {
                    sync_store(&*sm.read())?;
                    log.release_base_file()?;
                } else if let Some(file) = &base.snapshot_file {
                    let size = std::fs::metadata(log.snapshot_dir().join(file))
                        .map(|m| m.len())
                        .unwrap_or(0);
                    log.set_sendable(SendableSnapshot {
                        metadata: base.header().metadata(),
                        file: file.clone(),
                        size,
                    });
                }
                base.index
            }
        };
        let raft_cfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_tick,
            heartbeat_tick: cfg.heartbeat_tick,
            min_election_tick: cfg.election_tick,
            max_election_tick: cfg.election_tick + cfg.election_tick_spread.max(1),
            applied: base.index,
            max_size_per_msg: cfg.max_size_per_msg,
            max_inflight_msgs: cfg.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            read_only_option: raft::ReadOnlyOption::Safe,
            ..Default::default()
        };
        raft_cfg
            .validate()
            .map_err(|e| RaftError::InvalidArgument(e.to_string()))?;
        let raw = RawNode::new(&raft_cfg, log, &crate::logger::raft_logger())
            .map_err(|e| RaftError::storage("starting raft", e))?;
        let mut members = base.members.clone();
        // Addresses given on the command line complete (never override) the persisted book:
        // a joining member needs them to answer the leader before it learns the group's book.
        for (id, addr) in &cfg.members {
            members.entry(*id).or_insert_with(|| addr.clone());
        }
        transport.set_members(&members);
        let seed = cfg.proposal_id_seed.unwrap_or_else(rand::random::<u64>);
        Ok(Driver {
            raw,
            sm,
            durability,
            transport,
            inbox,
            status_tx,
            metrics,
            worker,
            job_running: false,
            snapshot_wanted: false,
            removed_hand_off: None,
            members,
            conf_state: base.conf_state.clone(),
            applied: base.index,
            applied_term: base.term,
            sm_floor,
            log_bytes: 0,
            next_id: seed >> 1,
            requests: Requests::default(),
            ticks: 0,
            heard_at_tick: HashMap::new(),
            shutting_down: false,
            fatal: None,
            cfg,
        })
    }

    /// Runs until shutdown or a fatal storage error: the only place that reads the wall clock.
    pub(crate) fn run(mut self) {
        let mut next_tick = Instant::now() + self.cfg.tick_interval;
        self.publish_status(None);
        loop {
            // Liveness: at least once per tick while the driver runs (see `RaftMetrics`).
            self.metrics.driver_beat();
            let wait = if self.raw.has_ready() {
                Duration::ZERO
            } else {
                next_tick.saturating_duration_since(Instant::now())
            };
            self.receive(wait);
            let now = Instant::now();
            if now >= next_tick {
                self.tick();
                next_tick = now + self.cfg.tick_interval;
            }
            if let Err(e) = self.step() {
                tracing::error!(error = %e.chain(), "storage failed; stopping this member");
                self.stop(Some(e));
                return;
            }
            if self.shutting_down {
                self.stop(None);
                tracing::info!("raft driver stopped");
                return;
            }
        }
    }

    /// Waits up to `wait` for something to arrive, then takes everything already queued.
    fn receive(&mut self, wait: Duration) {
        crossbeam_channel::select! {
            recv(self.inbox.control) -> c => {
                if let Ok(c) = c {
                    self.on_control(c);
                }
            }
            recv(self.inbox.rx) -> m => match m {
                Ok(m) => self.handle(m),
                Err(_) => self.shutting_down = true,
            },
            default(wait) => {}
        }
        self.take_queued();
    }

    /// Handles everything already queued (control reports first), without waiting.
    pub(crate) fn take_queued(&mut self) {
        while let Ok(c) = self.inbox.control.try_recv() {
            self.on_control(c);
        }
        for _ in 0..MAX_BATCH {
            match self.inbox.rx.try_recv() {
                Ok(m) => self.handle(m),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.shutting_down = true;
                    break;
                }
            }
        }
    }

    fn stop(&mut self, error: Option<RaftError>) {
        let reason = error.as_ref().map(|e| e.chain()).unwrap_or_default();
        match error {
            Some(e) => self.requests.fail_all(|| e.clone()),
            None => self.requests.fail_all(|| RaftError::ShuttingDown),
        }
        // Requests still queued in the inbox are answered too, so no caller waits for its
        // deadline on a stopped node.
        for msg in self.inbox.rx.try_iter() {
            let err = || RaftError::ShuttingDown;
            match msg {
                Msg::Propose { reply, .. } => drop(reply.send(Err(err()))),
                Msg::ReadIndex { reply, .. } => drop(reply.send(Err(err()))),
                Msg::ConfChange { reply, .. } => drop(reply.send(Err(err()))),
                Msg::TransferLeader { reply, .. } => drop(reply.send(Err(err()))),
                _ => {}
            }
        }
        self.sm.write().close();
        self.publish_status(Some(reason));
    }

    /// One logical tick: raft-rs's clock, and request deadlines.
    pub(crate) fn tick(&mut self) {
        self.raw.tick();
        self.ticks += 1;
        self.requests.expire(self.ticks, self.cfg.request_timeout);
        self.reissue_reads();
        self.hand_off_if_removed();
        self.tell_successor_to_campaign();
    }

    /// Everything after taking input: reads, the Ready, compaction, the status, the replies.
    pub(crate) fn step(&mut self) -> Result<()> {
        if let Some(e) = self.fatal.take() {
            return Err(e);
        }
        self.issue_reads();
        self.on_ready()?;
        self.maintain()?;
        self.publish_status(None);
        self.requests.send_completions();
        Ok(())
    }

    /// The tick at which a request taken now with `timeout` expires.
    fn deadline(&self, timeout: Duration) -> u64 {
        let tick = self.cfg.tick_interval.as_nanos().max(1);
        let ticks = timeout.as_nanos().div_ceil(tick).max(1);
        self.ticks + ticks.min(u64::MAX as u128) as u64
    }

    fn not_leader(&self) -> RaftError {
        let leader = self.raw.raft.leader_id;
        let leader_id = (leader != 0 && leader != self.cfg.id).then_some(leader);
        RaftError::NotLeader {
            leader_id,
            leader_addr: leader_id.and_then(|id| self.members.get(&id).cloned()),
        }
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    fn next_id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    pub(crate) fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Raft(m) => self.step_message(*m),
            Msg::Propose {
                command,
                timeout,
                queued_at,
                reply,
            } => {
                let waiter = Waiter {
                    deadline: self.deadline(timeout),
                    reply,
                };
                if let Err(e) = self.check_can_propose() {
                    return waiter.finish(Err(e));
                }
                if command.len() > self.cfg.max_command_bytes {
                    return waiter.finish(Err(RaftError::InvalidArgument(format!(
                        "command of {} bytes exceeds the limit of {} bytes",
                        command.len(),
                        self.cfg.max_command_bytes
                    ))));
                }
                let id = self.next_id();
                match self.raw.propose(codec::encode(id, &[]), command) {
                    Ok(()) => {
                        let index = self.raw.raft.raft_log.last_index();
                        let now = Instant::now();
                        let stages = Stages {
                            queued: queued_at,
                            proposed: now,
                            persisted: None,
                            committed: None,
                        };
                        self.requests
                            .proposals
                            .insert(index, Pending { id, waiter, stages });
                    }
                    Err(_) => waiter.finish(Err(self.not_leader())),
                }
            }
            Msg::ReadIndex { timeout, reply } => {
                let deadline = self.deadline(timeout);
                self.requests.queue_read(Waiter { deadline, reply })
            }
            Msg::ConfChange {
                change,
                addresses,
                timeout,
                reply,
            } => {
                let waiter = Waiter {
                    deadline: self.deadline(timeout),
                    reply,
                };
                if let Err(e) = self.check_can_propose() {
                    return waiter.finish(Err(e));
                }
                if self.raw.raft.has_pending_conf() || !self.conf_state.voters_outgoing.is_empty() {
                    return waiter.finish(Err(RaftError::RetryLater(
                        "another membership change is in progress".into(),
                    )));
                }
                let id = self.next_id();
                match self
                    .raw
                    .propose_conf_change(codec::encode(id, &addresses), change)
                {
                    Ok(()) => {
                        let index = self.raw.raft.raft_log.last_index();
                        let now = Instant::now();
                        let stages = Stages {
                            queued: now,
                            proposed: now,
                            persisted: None,
                            committed: None,
                        };
                        self.requests
                            .conf_changes
                            .insert(index, Pending { id, waiter, stages });
                    }
                    Err(e) => waiter.finish(Err(RaftError::InvalidArgument(e.to_string()))),
                }
            }
            Msg::TransferLeader { to, timeout, reply } => {
                let waiter = Waiter {
                    deadline: self.deadline(timeout),
                    reply,
                };
                if !self.is_leader() {
                    return waiter.finish(Err(self.not_leader()));
                }
                if to == self.cfg.id {
                    return waiter.finish(Ok(()));
                }
                if !self.conf_state.voters.contains(&to) {
                    return waiter.finish(Err(RaftError::InvalidArgument(format!(
                        "member {to} is not a voter"
                    ))));
                }
                if let Some(old) = self.requests.transfer.take() {
                    old.waiter.finish(Err(RaftError::RetryLater(
                        "superseded by another leadership transfer".into(),
                    )));
                }
                self.raw.transfer_leader(to);
                self.requests.transfer = Some(Transfer { to, waiter });
            }
            Msg::Unreachable(peer) => self.raw.report_unreachable(peer),
            Msg::Shutdown => self.shutting_down = true,
        }
    }

    fn step_message(&mut self, m: raft::eraftpb::Message) {
        self.heard_at_tick.insert(m.from, self.ticks);
        // A snapshot arrives as a received file (see the transport); if raft-rs does not take
        // it (stale, or one is already pending), the file is removed here.
        let incoming = (m.get_msg_type() == MessageType::MsgSnapshot)
            .then(|| {
                let index = m.get_snapshot().get_metadata().index;
                pb::SnapshotDescriptor::decode(m.get_snapshot().get_data())
                    .ok()
                    .map(|d| (index, d.file))
            })
            .flatten();
        if let Err(e) = self.raw.step(m) {
            tracing::debug!(error = %e, "dropped raft message");
        }
        if let Some((index, file)) = incoming {
            let pending = self.raw.raft.raft_log.unstable.snapshot.as_ref();
            let taken = pending.is_some_and(|s| {
                s.get_metadata().index == index
                    && pb::SnapshotDescriptor::decode(s.get_data()).is_ok_and(|d| d.file == file)
            });
            if !taken {
                let path = self.raw.store().snapshot_dir().join(&file);
                tracing::debug!(index, file, "received snapshot not taken; removing it");
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::SnapshotStatus { to, ok } => {
                let status = if ok {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Control::JobDone(done) => {
                self.job_running = false;
                if let Err(e) = self.on_job_done(*done) {
                    self.fatal.get_or_insert(e);
                }
            }
        }
    }

    fn on_job_done(&mut self, done: JobDone) -> Result<()> {
        match done {
            JobDone::SnapshotWritten {
                header,
                file,
                size,
                purpose,
                took,
            } => {
                self.metrics.snapshots_taken.fetch_add(1, Relaxed);
                tracing::info!(
                    index = header.index,
                    bytes = size,
                    took_ms = took.as_millis() as u64,
                    ?purpose,
                    "snapshot written"
                );
                let sendable = SendableSnapshot {
                    metadata: header.metadata(),
                    file: file.clone(),
                    size,
                };
                if purpose == Purpose::Compaction {
                    self.compact(header, Some(file))?;
                }
                // A snapshot newer than the base (one may have been installed meanwhile).
                if header_newer_than_base(&sendable, self.raw.store().base()) {
                    self.raw.mut_store().set_sendable(sendable);
                }
            }
            JobDone::StoreSynced { header, took } => {
                self.metrics.store_syncs.fetch_add(1, Relaxed);
                tracing::debug!(
                    index = header.index,
                    took_ms = took.as_millis() as u64,
                    "state machine store synced"
                );
                self.compact(header, None)?;
            }
            JobDone::Purged => {}
            JobDone::Failed { job, error } => {
                self.metrics.snapshot_failures.fetch_add(1, Relaxed);
                tracing::warn!(job, error = %error.chain(), "background job failed");
                if job.starts_with("syncing") {
                    // A store that cannot be made durable must not be acknowledged on.
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Moves the log's base to `header` (whose state is durable: in `file`, or in the
    /// synced store) and compacts the log behind it.
    fn compact(&mut self, header: SnapshotHeader, file: Option<String>) -> Result<()> {
        let store = self.raw.store();
        if header.index <= store.base().index || header.index > store.last_index() {
            // A snapshot installed meanwhile moved the base past it.
            return Ok(());
        }
        let compact_to = header
            .index
            .saturating_sub(self.cfg.keep_entries_after_snapshot)
            .max(store.first_index() - 1);
        let base = Base {
            index: header.index,
            term: header.term,
            conf_state: header.conf_state,
            members: header.members,
            snapshot_file: file,
        };
        self.raw.mut_store().compact(base, compact_to)?;
        tracing::info!(
            base = header.index,
            compacted_to = compact_to,
            "log compacted"
        );
        let engine = self.raw.store().engine().clone();
        self.submit(Job::Purge { engine });
        Ok(())
    }

    fn submit(&mut self, job: Job) {
        self.job_running = true;
        self.worker.submit(job);
    }

    fn check_can_propose(&self) -> Result<()> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        if self.raw.raft.lead_transferee.is_some() {
            return Err(RaftError::RetryLater(
                "leadership transfer in progress".into(),
            ));
        }
        Ok(())
    }

    fn read_epoch(&self) -> ReadEpoch {
        let raft = &self.raw.raft;
        let log = &raft.raft_log;
        ReadEpoch {
            term: raft.term,
            leader: raft.leader_id,
            is_leader: raft.state == StateRole::Leader,
            committed_in_term: log.term(log.committed).unwrap_or(0) == raft.term,
        }
    }

    /// Sends one ReadIndex request for all reads queued since the last one.
    fn issue_reads(&mut self) {
        let ctx = self.next_id();
        let epoch = self.read_epoch();
        if let Some(ctx) = self.requests.take_read_batch(epoch, self.ticks, ctx) {
            self.raw.read_index(codec::encode(ctx, &[]));
        }
    }

    /// Issues again the batches raft-rs may have dropped (see `requests`).
    fn reissue_reads(&mut self) {
        let epoch = self.read_epoch();
        let silence = self.cfg.election_tick as u64;
        for batch in self.requests.reads_to_reissue(epoch, self.ticks, silence) {
            let ctx = self.next_id();
            self.requests.reissued(batch, ctx, epoch, self.ticks);
            self.raw.read_index(codec::encode(ctx, &[]));
        }
    }

    /// A leader that removed itself from the voters keeps leading in raft-rs (it replicates
    /// but no longer counts itself, and nobody else campaigns while it sends heartbeats), so
    /// the group would depend on a member the operator is about to stop. Once the change is
    /// final (not joint), it hands leadership to the most caught-up remaining voter; raft-rs
    /// abandons a transfer after an election timeout, so this is retried on every tick until
    /// another member leads.
    fn hand_off_if_removed(&mut self) {
        let cs = &self.conf_state;
        if !self.is_leader()
            || cs.voters.is_empty()
            || cs.voters.contains(&self.cfg.id)
            || !cs.voters_outgoing.is_empty()
            || self.raw.raft.lead_transferee.is_some()
        {
            return;
        }
        let best = self.most_caught_up_voter();
        if let Some(to) = best {
            tracing::info!(to, "no longer a voter: handing leadership over");
            self.raw.transfer_leader(to);
        }
    }

    /// The voter of the current configuration with the highest matched index on this leader
    /// (the lowest id among equals): the one to hand leadership to.
    fn most_caught_up_voter(&self) -> Option<u64> {
        self.conf_state
            .voters
            .iter()
            .filter_map(|id| self.raw.raft.prs().get(*id).map(|p| (*id, p.matched)))
            .max_by_key(|(id, matched)| (*matched, std::cmp::Reverse(*id)))
            .map(|(id, _)| id)
    }

    fn on_ready(&mut self) -> Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        // 1. The leader's messages may leave before its entries are durable.
        if !rd.messages().is_empty() {
            self.transport.send(rd.take_messages());
        }
        // 2. An incoming snapshot replaces the log and the state machine.
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot().clone())?;
        }
        // 3. Entries and hard state, durable with one sync when raft-rs requires it; a
        // commit-only hard state is kept in memory and written with the next entries.
        let must_sync = rd.must_sync();
        if must_sync || !rd.entries().is_empty() {
            let started = Instant::now();
            let last = rd.entries().last().map(|e| e.index);
            self.raw
                .mut_store()
                .append(rd.entries(), rd.hs(), must_sync)?;
            self.metrics.log_write.observe_since(started);
            if let Some(last) = last {
                self.requests.mark(last, Stage::Persisted, Instant::now());
            }
        } else if let Some(hs) = rd.hs() {
            self.raw.mut_store().set_commit(hs.commit);
        }
        // 4. Votes and append responses only after the sync.
        if !rd.persisted_messages().is_empty() {
            self.transport.send(rd.take_persisted_messages());
        }
        // 5. Apply.
        self.apply(rd.take_committed_entries())?;
        // 6. ReadIndex results.
        self.on_read_states(rd.take_read_states());
        // 7. Advance, then the light ready.
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
            self.requests.mark(commit, Stage::Committed, Instant::now());
        }
        if !light.messages().is_empty() {
            self.transport.send(light.take_messages());
        }
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.requests.finish_reads(self.applied);
        if let Some(t) = self.requests.transfer.take() {
            if self.raw.raft.leader_id == t.to {
                self.requests.complete(t.waiter, Ok(()));
            } else {
                self.requests.transfer = Some(t);
            }
        }
        Ok(())
    }

    /// Installs a snapshot from the leader: the log first (one synced write naming the
    /// received file as the base), then the state machine from the file; a state machine
    /// with its own store is synced and the file released.
    fn install_snapshot(&mut self, snap: Snapshot) -> Result<()> {
        let meta = snap.get_metadata().clone();
        let desc = pb::SnapshotDescriptor::decode(snap.get_data())
            .map_err(|e| RaftError::corrupt("a received snapshot's descriptor", e))?;
        let path = self.raw.store().snapshot_dir().join(&desc.file);
        let mut reader = SnapshotFileReader::open(&path)?;
        let header = reader.header().clone();
        if (header.index, header.term) != (meta.index, meta.term) {
            return Err(RaftError::corrupt(
                "a received snapshot",
                format!(
                    "{} holds {}/{} but the message says {}/{}",
                    path.display(),
                    header.index,
                    header.term,
                    meta.index,
                    meta.term
                ),
            ));
        }
        self.raw
            .mut_store()
            .install_snapshot(&header, desc.file.clone())?;
        self.sm
            .write()
            .restore(meta.index, &mut reader)
            .map_err(|e| {
                RaftError::state_machine(format!("restoring snapshot {}", meta.index), e)
            })?;
        match self.durability {
            Durability::OwnStore => {
                sync_store(&*self.sm.read())?;
                self.raw.mut_store().release_base_file()?;
            }
            Durability::InMemory => {
                self.raw.mut_store().set_sendable(SendableSnapshot {
                    metadata: header.metadata(),
                    file: desc.file,
                    size: desc.size,
                });
            }
        }
        self.metrics.snapshots_installed.fetch_add(1, Relaxed);
        tracing::info!(
            index = meta.index,
            term = meta.term,
            "installed snapshot from leader"
        );
        self.members = header.members;
        self.transport.set_members(&self.members);
        self.conf_state = header.conf_state;
        self.applied = meta.index;
        self.applied_term = meta.term;
        self.sm_floor = meta.index;
        self.log_bytes = 0;
        self.requests.covered_by_snapshot(meta.index);
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        if let Some(last) = entries.last() {
            self.requests
                .mark(last.index, Stage::Committed, Instant::now());
        }
        let sm_lock = self.sm.clone();
        let mut sm = None;
        let mut answered = Vec::new();
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            self.log_bytes += e.data.len() as u64;
            let id = codec::proposal_id(&e.context);
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    let response = if e.data.is_empty() || e.index <= self.sm_floor {
                        // A new leader's empty entry, or one the state machine's store holds.
                        Vec::new()
                    } else {
                        sm.get_or_insert_with(|| sm_lock.write())
                            .apply(e.index, &e.data)
                            .map_err(|err| {
                                RaftError::state_machine(format!("applying entry {}", e.index), err)
                            })?
                    };
                    if let Some(p) = self.requests.proposals.remove(&e.index) {
                        let result = if id == Some(p.id) {
                            Ok(response)
                        } else {
                            Err(self.not_leader())
                        };
                        answered.push((e.index, p, result));
                    }
                    if let Some(p) = self.requests.conf_changes.remove(&e.index) {
                        // raft-rs replaced the change by an empty entry: another change was
                        // pending when it reached the log.
                        let result = if e.data.is_empty() && e.term == self.raw.raft.term {
                            Err(RaftError::RetryLater(
                                "another membership change was in progress; raft dropped \
                                 this one"
                                    .into(),
                            ))
                        } else {
                            Err(self.not_leader())
                        };
                        self.requests.complete(p.waiter, result);
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let result = self.apply_conf_change(&e);
                    if let Some(p) = self.requests.conf_changes.remove(&e.index) {
                        let result = if id == Some(p.id) {
                            result
                        } else {
                            Err(self.not_leader())
                        };
                        self.requests.complete(p.waiter, result);
                    }
                    if let Some(p) = self.requests.proposals.remove(&e.index) {
                        answered.push((e.index, p, Err(self.not_leader())));
                    }
                }
            }
            self.applied = e.index;
            self.applied_term = e.term;
        }
        if let Some(mut sm) = sm {
            sm.end_of_batch().map_err(|err| {
                RaftError::state_machine("storing applied entries".to_string(), err)
            })?;
        }
        let now = Instant::now();
        for (index, p, result) in answered {
            observe_stages(&self.metrics, &p.stages, now);
            let metrics = self.metrics.clone();
            let waiter = p.waiter;
            self.requests.complete_with(move || {
                metrics.proposal_stages.replied.observe_since(now);
                // The moment a write is acknowledged (the durability test traces it).
                tracing::trace!(index, ok = result.is_ok(), "proposal acknowledged");
                waiter.finish(result);
            });
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, e: &Entry) -> Result<ConfState> {
        let result = if e.get_entry_type() == EntryType::EntryConfChangeV2 {
            // Empty data is the leader's "leave joint" entry: it must be applied too.
            let cc = ConfChangeV2::parse_from_bytes(&e.data)
                .map_err(|err| RaftError::InvalidArgument(err.to_string()))?;
            self.raw.apply_conf_change(&cc)
        } else {
            let cc = ConfChange::parse_from_bytes(&e.data)
                .map_err(|err| RaftError::InvalidArgument(err.to_string()))?;
            self.raw.apply_conf_change(&cc)
        };
        let cs = result.map_err(|err| RaftError::InvalidArgument(err.to_string()))?;
        self.members.extend(codec::added_members(&e.context));
        let in_config = |id: &u64| {
            cs.voters.contains(id)
                || cs.learners.contains(id)
                || cs.voters_outgoing.contains(id)
                || cs.learners_next.contains(id)
        };
        self.members.retain(|id, _| in_config(id));
        self.transport.set_members(&self.members);
        tracing::info!(
            voters = ?cs.voters, learners = ?cs.learners, outgoing = ?cs.voters_outgoing,
            index = e.index, "membership changed"
        );
        self.conf_state = cs.clone();
        if self.is_leader() && !in_config(&self.cfg.id) {
            self.step_down_removed();
        }
        Ok(cs)
    }

    /// This leader just applied a change that removed it from the group. raft-rs 0.7 keeps
    /// such a leader leading, but its own progress is gone from the tracker, and the next
    /// commit or persisted entry of its own (`maybe_commit`, `on_persist_entries`) unwraps that
    /// progress and panics; entries proposed before the change make that likely under load.
    /// So it steps down at once and tells the most caught-up voter to campaign now (the
    /// `MsgTimeoutNow` of a leader transfer; should that voter lose, the others elect after
    /// their election timeout). Its uncommitted entries are the new leader's to commit or
    /// overwrite; their waiters learn the outcome when the index is applied.
    fn step_down_removed(&mut self) {
        let best = self.most_caught_up_voter();
        tracing::info!(to = ?best, "removed from the group while leading: stepping down");
        let term = self.raw.raft.term;
        self.raw.raft.become_follower(term, raft::INVALID_ID);
        self.requests
            .orphaned_after(self.raw.raft.raft_log.committed);
        if let Some(to) = best {
            self.removed_hand_off = Some((to, self.ticks + self.cfg.election_tick as u64));
        }
    }

    /// Sends the successor chosen by [`Driver::step_down_removed`] what raft-rs's own leader
    /// transfer would, a `MsgTimeoutNow`, on every tick for an election timeout: raft-rs
    /// refuses it while the successor has not yet applied the change (a campaign waits for
    /// committed configuration changes to be applied), and a removed member hears of no new
    /// leader, so it cannot tell when to stop other than by time. Once the successor campaigns
    /// at a higher term, the repeats are ignored.
    fn tell_successor_to_campaign(&mut self) {
        let Some((to, until)) = self.removed_hand_off else {
            return;
        };
        if self.ticks > until || self.raw.raft.leader_id != raft::INVALID_ID {
            self.removed_hand_off = None;
            return;
        }
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(MessageType::MsgTimeoutNow);
        m.from = self.cfg.id;
        m.to = to;
        m.term = self.raw.raft.term;
        self.transport.send(vec![m]);
    }

    fn on_read_states(&mut self, states: Vec<ReadState>) {
        for rs in states {
            if let Some(ctx) = codec::proposal_id(&rs.request_ctx) {
                self.requests.read_state(ctx, rs.index);
            }
        }
    }

    /// The state as of `applied`, as a snapshot header.
    fn header_now(&self) -> SnapshotHeader {
        SnapshotHeader {
            index: self.applied,
            term: self.applied_term,
            conf_state: self.conf_state.clone(),
            members: self.members.clone(),
        }
    }

    /// Starts a background job when one is due: a snapshot file for a member that fell behind,
    /// or, once `snapshot_log_bytes` of log was applied since the base, what lets the log be
    /// compacted (a store sync, or a snapshot file for a state machine kept in memory).
    fn maintain(&mut self) -> Result<()> {
        self.snapshot_wanted |= self.raw.store().take_snapshot_wanted();
        let due = self.log_bytes >= self.cfg.snapshot_log_bytes;
        // The state machine's state must be exactly the state at `applied`.
        if self.job_running || self.applied < self.sm_floor || !(due || self.snapshot_wanted) {
            return Ok(());
        }
        let header = self.header_now();
        if self.snapshot_wanted || self.durability == Durability::InMemory {
            let source = self
                .sm
                .read()
                .snapshot()
                .map_err(|e| RaftError::state_machine("taking a snapshot", e))?;
            let purpose = if due && self.durability == Durability::InMemory {
                Purpose::Compaction
            } else {
                Purpose::Send
            };
            if purpose == Purpose::Compaction {
                self.log_bytes = 0;
            }
            self.snapshot_wanted = false;
            let dir = self.raw.store().snapshot_dir().to_path_buf();
            self.submit(Job::WriteSnapshot {
                dir,
                header,
                source,
                purpose,
            });
        } else {
            let Some(syncer) = self.sm.read().syncer() else {
                return Err(RaftError::storage_msg(
                    "a state machine with its own store gave no syncer",
                ));
            };
            self.log_bytes = 0;
            tracing::info!(index = header.index, "store sync started");
            self.submit(Job::SyncStore { header, syncer });
        }
        Ok(())
    }

    /// Publishes the status; `stopped` is `Some(reason)` when the driver is exiting (empty
    /// reason for a clean shutdown).
    pub(crate) fn publish_status(&self, stopped: Option<String>) {
        let raft = &self.raw.raft;
        let store = self.raw.store();
        let role = match raft.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Follower => Role::Follower,
        };
        let progress = if role == Role::Leader {
            raft.prs()
                .iter()
                .map(|(id, pr)| {
                    (
                        *id,
                        PeerProgress {
                            matched: pr.matched,
                            next_index: pr.next_idx,
                            state: format!("{:?}", pr.state),
                            recent_active: *id == self.cfg.id
                                || self.heard_at_tick.get(id).is_some_and(|t| {
                                    self.ticks - t < self.cfg.election_tick as u64
                                }),
                        },
                    )
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let cs = &self.conf_state;
        let id = self.cfg.id;
        let initialized = !cs.voters.is_empty() || !cs.learners.is_empty();
        let removed = initialized
            && !cs.voters.contains(&id)
            && !cs.learners.contains(&id)
            && !cs.voters_outgoing.contains(&id)
            && !cs.learners_next.contains(&id);
        let status = Status {
            id,
            group_id: self.cfg.group_id,
            role,
            term: raft.term,
            leader_id: (raft.leader_id != 0).then_some(raft.leader_id),
            commit_index: raft.raft_log.committed,
            applied_index: self.applied,
            first_index: store.first_index(),
            last_index: raft.raft_log.last_index(),
            snapshot_index: store.base().index,
            voters: cs.voters.clone(),
            voters_outgoing: cs.voters_outgoing.clone(),
            learners: cs.learners.clone(),
            members: self.members.clone(),
            progress,
            removed,
            stopped: stopped.is_some(),
            fatal: stopped.filter(|s| !s.is_empty()),
        };
        self.status_tx.send_if_modified(|s| {
            if *s != status {
                *s = status;
                true
            } else {
                false
            }
        });
    }
}

fn header_newer_than_base(s: &SendableSnapshot, base: &Base) -> bool {
    s.metadata.index >= base.index
}

/// Restores the state machine from the base's snapshot file.
fn restore_file<S: StateMachine>(
    sm: &RwLock<S>,
    log: &LogStore,
    file: &str,
    base: &Base,
) -> Result<()> {
    let mut reader = SnapshotFileReader::open(&log.snapshot_dir().join(file))?;
    if reader.header().index != base.index {
        return Err(RaftError::corrupt(
            "the base's snapshot file",
            format!(
                "{file} holds index {}, not {}",
                reader.header().index,
                base.index
            ),
        ));
    }
    sm.write()
        .restore(base.index, &mut reader)
        .map_err(|e| RaftError::state_machine(format!("restoring snapshot {}", base.index), e))
}

/// Makes a state machine's own store durable, on this thread.
fn sync_store<S: StateMachine>(sm: &S) -> Result<()> {
    match sm.syncer() {
        Some(mut s) => s
            .sync()
            .map_err(|e| RaftError::state_machine("syncing the state machine's store", e)),
        None => Err(RaftError::storage_msg(
            "a state machine with its own store gave no syncer",
        )),
    }
}
