//! The driver: one OS thread per member that owns `RawNode` and follows raft-rs's Ready steps.
//!
//! Nothing else touches `RawNode`. Requests arrive through the [`crate::Mailbox`]; each loop
//! iteration takes every request already queued (that is where batching comes from: many
//! proposals and peer messages become one Ready and one fsync), ticks the logical clock when its
//! time has come, and then processes one Ready in the documented order:
//!
//! 1. send the leader's messages (they may go before the entries are durable);
//! 2. install an incoming snapshot: storage (one atomic write) and state machine;
//! 3. append entries and the hard state, and make them durable with ONE sync;
//! 4. only then send the persisted messages (votes and append responses);
//! 5. apply committed entries to the state machine and answer their proposers;
//! 6. collect read states (ReadIndex) and answer reads once applied catches up;
//! 7. `advance`, then handle the `LightReady` (commit index, messages, more committed entries)
//!    and `advance_apply`.
//!
//! The driver is a plain thread, not a tokio task, because step 3 blocks on fsync.
//!
//! # Matching replies
//! A proposal's entry carries a per-node unique id in its context, and the driver remembers the
//! log index raft-rs gave the entry. When that index is applied with our id the proposer gets
//! the response; with another entry there (a new leader overwrote it) the proposer gets
//! `NotLeader` at once; if neither happens by the deadline, `Timeout` (outcome unknown).
//! raft-rs drops proposals and ReadIndex requests silently on role changes, hence deadlines
//! everywhere and periodic re-issue of reads.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::RwLock;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Snapshot};
use raft::{RawNode, ReadState, StateRole};
use tokio::sync::{oneshot, watch};

use crate::config::NodeConfig;
use crate::error::{RaftError, Result};
use crate::mailbox::Msg;
use crate::metrics::RaftMetrics;
use crate::state_machine::StateMachine;
use crate::status::{PeerProgress, Role, Status};
use crate::storage::{SledStorage, SnapshotData};
use crate::transport::Transport;

/// Most requests taken from the inbox before one Ready is processed.
const MAX_BATCH: usize = 4096;

struct Waiter<T> {
    deadline: Instant,
    reply: oneshot::Sender<Result<T>>,
}

impl<T> Waiter<T> {
    fn finish(self, r: Result<T>) {
        let _ = self.reply.send(r);
    }
}

/// A proposal (or conf change) in the log at a known index, waiting to be applied.
struct Pending<T> {
    id: u64,
    waiter: Waiter<T>,
}

/// Reads sharing one ReadIndex request.
struct ReadBatch {
    waiters: Vec<Waiter<u64>>,
    issued_at_tick: u64,
}

struct Transfer {
    to: u64,
    waiter: Waiter<()>,
}

pub(crate) struct Driver<S: StateMachine> {
    cfg: NodeConfig,
    raw: RawNode<SledStorage>,
    sm: Arc<RwLock<S>>,
    transport: Arc<dyn Transport>,
    inbox: Receiver<Msg>,
    status_tx: watch::Sender<Status>,
    metrics: Arc<RaftMetrics>,
    members: BTreeMap<u64, String>,
    conf_state: ConfState,
    applied: u64,
    applied_term: u64,
    /// Entries up to here are already in the state machine's own store (see
    /// `StateMachine::persisted_index`): re-applied to raft only, not to the state machine.
    sm_floor: u64,
    /// Bytes of entries applied since the last snapshot.
    log_bytes: u64,
    next_id: u64,
    proposals: BTreeMap<u64, Pending<Vec<u8>>>,
    conf_changes: BTreeMap<u64, Pending<ConfState>>,
    queued_reads: Vec<Waiter<u64>>,
    reads_in_flight: HashMap<u64, ReadBatch>,
    /// (read index, waiters) that have their index and wait for `applied` to reach it.
    reads_ready: Vec<(u64, Vec<Waiter<u64>>)>,
    transfer: Option<Transfer>,
    ticks: u64,
    /// Tick at which each peer was last heard from. raft-rs's own `recent_active` flags are
    /// cleared at every quorum check, so a status read just after one would show a healthy
    /// leader without a quorum; this is what the published `recent_active` is made of.
    heard_at_tick: HashMap<u64, u64>,
    shutting_down: bool,
    /// Replies to applied proposals, conf changes, reads and transfers, sent only after the
    /// status reflecting them is published: a caller that got its answer and then looks at
    /// the status must never see an older state.
    completions: Vec<Box<dyn FnOnce() + Send>>,
}

fn encode_id(id: u64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

fn decode_id(ctx: &[u8]) -> Option<u64> {
    ctx.get(..8)
        .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
}

/// Conf change context: proposal id, then (id, address) pairs of members being added.
fn encode_conf_context(id: u64, addresses: &[(u64, String)]) -> Vec<u8> {
    let mut out = encode_id(id);
    for (mid, addr) in addresses {
        out.extend_from_slice(&mid.to_be_bytes());
        out.extend_from_slice(&(addr.len() as u32).to_be_bytes());
        out.extend_from_slice(addr.as_bytes());
    }
    out
}

fn decode_conf_addresses(ctx: &[u8]) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut b = ctx.get(8..).unwrap_or_default();
    while b.len() >= 12 {
        let id = u64::from_be_bytes(b[..8].try_into().unwrap());
        let len = u32::from_be_bytes(b[8..12].try_into().unwrap()) as usize;
        let Some(addr) = b.get(12..12 + len) else {
            break;
        };
        out.push((id, String::from_utf8_lossy(addr).into_owned()));
        b = &b[12 + len..];
    }
    out
}

impl<S: StateMachine> Driver<S> {
    /// Opens storage, restores the state machine from the latest snapshot and builds the
    /// `RawNode`. Committed entries after the snapshot are re-applied by the first Readys.
    pub(crate) fn new(
        cfg: NodeConfig,
        sm: Arc<RwLock<S>>,
        transport: Arc<dyn Transport>,
        inbox: Receiver<Msg>,
        status_tx: watch::Sender<Status>,
        metrics: Arc<RaftMetrics>,
    ) -> Result<Self> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| RaftError::Storage(format!("{}: {e}", cfg.data_dir.display())))?;
        let book: BTreeMap<u64, String> = cfg.members.iter().cloned().collect();
        let bootstrap = match cfg.bootstrap {
            crate::Bootstrap::NewGroup => Some(book.keys().copied().collect()),
            crate::Bootstrap::Join => None,
        };
        let storage = SledStorage::open(&cfg.data_dir, bootstrap, &book)?;
        let meta = storage.snapshot_metadata().clone();
        let data = storage.snapshot_data()?;
        // A state machine with its own store may already hold more than the snapshot.
        let persisted = sm.read().persisted_index();
        if persisted > storage.last_index() {
            return Err(RaftError::Storage(format!(
                "the state machine's store is at index {persisted} but the raft log ends at {}: \
                 the data directory was damaged or mixed from different members",
                storage.last_index()
            )));
        }
        let sm_floor = if persisted >= meta.index {
            persisted
        } else {
            if meta.index > crate::storage::BOOTSTRAP_INDEX {
                sm.write()
                    .restore(meta.index, &data.state)
                    .map_err(|e| RaftError::Storage(format!("snapshot {}: {e}", meta.index)))?;
            }
            meta.index
        };
        let log_bytes = storage.log_bytes_after(meta.index);
        let raft_cfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_tick,
            heartbeat_tick: cfg.heartbeat_tick,
            applied: meta.index,
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
        let raw = RawNode::new(&raft_cfg, storage, &crate::logger::raft_logger())
            .map_err(RaftError::storage)?;
        let mut members = data.members;
        // Addresses given on the command line complete (never override) the persisted book:
        // a joining member needs them to answer the leader before it learns the group's book.
        for (id, addr) in &cfg.members {
            members.entry(*id).or_insert_with(|| addr.clone());
        }
        transport.set_members(&members);
        Ok(Driver {
            raw,
            sm,
            transport,
            inbox,
            status_tx,
            metrics,
            members,
            conf_state: meta.get_conf_state().clone(),
            applied: meta.index,
            applied_term: meta.term,
            sm_floor,
            log_bytes,
            next_id: rand::random::<u64>() >> 1,
            proposals: BTreeMap::new(),
            conf_changes: BTreeMap::new(),
            queued_reads: Vec::new(),
            reads_in_flight: HashMap::new(),
            reads_ready: Vec::new(),
            transfer: None,
            ticks: 0,
            heard_at_tick: HashMap::new(),
            shutting_down: false,
            completions: Vec::new(),
            cfg,
        })
    }

    /// Runs until shutdown or a fatal storage error.
    pub(crate) fn run(mut self) {
        let mut next_tick = Instant::now() + self.cfg.tick_interval;
        self.publish_status(None);
        loop {
            // Liveness: at least once per tick while the driver runs (see `RaftMetrics`).
            self.metrics.driver_beat();
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(wait) {
                Ok(msg) => {
                    self.handle(msg);
                    for _ in 0..MAX_BATCH {
                        match self.inbox.try_recv() {
                            Ok(msg) => self.handle(msg),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.shutting_down = true,
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                self.ticks += 1;
                next_tick = now + self.cfg.tick_interval;
                self.on_tick(now);
            }
            self.issue_reads();
            if let Err(e) = self.on_ready().and_then(|_| self.maybe_snapshot()) {
                tracing::error!(error = %e, "storage failed; stopping this member");
                self.fail_all(|| e.clone());
                self.sm.write().close();
                self.publish_status(Some(e.to_string()));
                return;
            }
            if self.shutting_down {
                self.fail_all(|| RaftError::ShuttingDown);
                self.sm.write().close();
                self.publish_status(Some(String::new()));
                tracing::info!("raft driver stopped");
                return;
            }
            self.publish_status(None);
            for reply in self.completions.drain(..) {
                reply();
            }
        }
    }

    /// Queues a reply to go out after the next status publication.
    fn complete<T: Send + 'static>(&mut self, waiter: Waiter<T>, result: Result<T>) {
        self.completions
            .push(Box::new(move || waiter.finish(result)));
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
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Raft(m) => {
                self.heard_at_tick.insert(m.from, self.ticks);
                if let Err(e) = self.raw.step(*m) {
                    tracing::debug!(error = %e, "dropped raft message");
                }
            }
            Msg::Propose {
                command,
                deadline,
                reply,
            } => {
                let waiter = Waiter { deadline, reply };
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
                match self.raw.propose(encode_id(id), command) {
                    Ok(()) => {
                        let index = self.raw.raft.raft_log.last_index();
                        self.proposals.insert(index, Pending { id, waiter });
                    }
                    Err(_) => waiter.finish(Err(self.not_leader())),
                }
            }
            Msg::ReadIndex { deadline, reply } => {
                self.queued_reads.push(Waiter { deadline, reply })
            }
            Msg::ConfChange {
                change,
                addresses,
                deadline,
                reply,
            } => {
                let waiter = Waiter { deadline, reply };
                if let Err(e) = self.check_can_propose() {
                    return waiter.finish(Err(e));
                }
                if self.raw.raft.has_pending_conf() || !self.conf_state.voters_outgoing.is_empty() {
                    return waiter.finish(Err(RaftError::RetryLater(
                        "another membership change is in progress".into(),
                    )));
                }
                let id = self.next_id();
                let ctx = encode_conf_context(id, &addresses);
                match self.raw.propose_conf_change(ctx, change) {
                    Ok(()) => {
                        let index = self.raw.raft.raft_log.last_index();
                        self.conf_changes.insert(index, Pending { id, waiter });
                    }
                    Err(e) => waiter.finish(Err(RaftError::InvalidArgument(e.to_string()))),
                }
            }
            Msg::TransferLeader {
                to,
                deadline,
                reply,
            } => {
                let waiter = Waiter { deadline, reply };
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
                if let Some(old) = self.transfer.take() {
                    old.waiter.finish(Err(RaftError::RetryLater(
                        "superseded by another leadership transfer".into(),
                    )));
                }
                self.raw.transfer_leader(to);
                self.transfer = Some(Transfer { to, waiter });
            }
            Msg::Unreachable(peer) => self.raw.report_unreachable(peer),
            Msg::SnapshotStatus { to, ok } => {
                let status = if ok {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Msg::Shutdown => self.shutting_down = true,
        }
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

    /// Sends one ReadIndex request for all reads queued since the last one.
    fn issue_reads(&mut self) {
        if self.queued_reads.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.queued_reads);
        let ctx = self.next_id();
        self.raw.read_index(encode_id(ctx));
        self.reads_in_flight.insert(
            ctx,
            ReadBatch {
                waiters,
                issued_at_tick: self.ticks,
            },
        );
    }

    fn on_tick(&mut self, now: Instant) {
        fn expire<T>(w: Waiter<T>, now: Instant, timeout: Duration) -> Option<Waiter<T>> {
            if w.deadline <= now {
                w.finish(Err(RaftError::Timeout(timeout)));
                None
            } else {
                Some(w)
            }
        }
        let timeout = self.cfg.request_timeout;
        expire_pending(&mut self.proposals, now, timeout);
        expire_pending(&mut self.conf_changes, now, timeout);
        // raft-rs drops ReadIndex requests on role changes and on a leader that has not
        // committed in its term yet: re-issue those that got no read state within a heartbeat.
        let stale: Vec<u64> = self
            .reads_in_flight
            .iter()
            .filter(|(_, b)| self.ticks - b.issued_at_tick >= self.cfg.heartbeat_tick as u64)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in stale {
            let batch = self.reads_in_flight.remove(&ctx).unwrap();
            self.queued_reads.extend(
                batch
                    .waiters
                    .into_iter()
                    .filter_map(|w| expire(w, now, timeout)),
            );
        }
        for (_, waiters) in &mut self.reads_ready {
            *waiters = std::mem::take(waiters)
                .into_iter()
                .filter_map(|w| expire(w, now, timeout))
                .collect();
        }
        self.reads_ready.retain(|(_, w)| !w.is_empty());
        if let Some(t) = self.transfer.take() {
            if t.waiter.deadline <= now {
                t.waiter.finish(Err(RaftError::Timeout(timeout)));
            } else {
                self.transfer = Some(t);
            }
        }
        self.hand_off_if_removed();
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
        let best = cs
            .voters
            .iter()
            .filter_map(|id| self.raw.raft.prs().get(*id).map(|p| (*id, p.matched)))
            .max_by_key(|(id, matched)| (*matched, std::cmp::Reverse(*id)))
            .map(|(id, _)| id);
        if let Some(to) = best {
            tracing::info!(to, "no longer a voter: handing leadership over");
            self.raw.transfer_leader(to);
        }
    }

    fn on_ready(&mut self) -> Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        // 1. The leader's messages may leave before its entries are durable (Raft thesis 10.2.1).
        if !rd.messages().is_empty() {
            self.transport.send(rd.take_messages());
        }
        // 2. An incoming snapshot replaces storage and state machine.
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot().clone())?;
        }
        // 3. Entries and hard state, durable with one sync when raft-rs requires it.
        let must_sync = rd.must_sync();
        self.raw
            .mut_store()
            .append(rd.entries(), rd.hs(), must_sync)?;
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
        }
        if !light.messages().is_empty() {
            self.transport.send(light.take_messages());
        }
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.finish_reads();
        if let Some(t) = self.transfer.take() {
            if self.raw.raft.leader_id == t.to {
                self.complete(t.waiter, Ok(()));
            } else {
                self.transfer = Some(t);
            }
        }
        Ok(())
    }

    fn install_snapshot(&mut self, snap: Snapshot) -> Result<()> {
        let meta = snap.get_metadata().clone();
        let data = SnapshotData::decode(snap.get_data())?;
        self.raw.mut_store().install_snapshot(&snap)?;
        self.sm
            .write()
            .restore(meta.index, &data.state)
            .map_err(|e| RaftError::Storage(format!("snapshot {}: {e}", meta.index)))?;
        self.metrics
            .snapshots_installed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            index = meta.index,
            term = meta.term,
            "installed snapshot from leader"
        );
        self.members = data.members;
        self.transport.set_members(&self.members);
        self.conf_state = meta.get_conf_state().clone();
        self.applied = meta.index;
        self.applied_term = meta.term;
        self.sm_floor = meta.index;
        self.log_bytes = 0;
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let sm_lock = self.sm.clone();
        let mut sm = None;
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            self.log_bytes += e.data.len() as u64;
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    let response = if e.data.is_empty() || e.index <= self.sm_floor {
                        // A new leader's empty entry, or one the state machine's store holds.
                        Vec::new()
                    } else {
                        sm.get_or_insert_with(|| sm_lock.write())
                            .apply(e.index, &e.data)
                            .map_err(|err| {
                                RaftError::Storage(format!("applying entry {}: {err}", e.index))
                            })?
                    };
                    if let Some(p) = self.proposals.remove(&e.index) {
                        let result = if decode_id(&e.context) == Some(p.id) {
                            Ok(response)
                        } else {
                            Err(self.not_leader())
                        };
                        self.complete(p.waiter, result);
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let result = self.apply_conf_change(&e);
                    if let Some(p) = self.conf_changes.remove(&e.index) {
                        let result = if decode_id(&e.context) == Some(p.id) {
                            result
                        } else {
                            Err(self.not_leader())
                        };
                        self.complete(p.waiter, result);
                    }
                }
            }
            self.applied = e.index;
            self.applied_term = e.term;
        }
        if let Some(mut sm) = sm {
            sm.end_of_batch()
                .map_err(|err| RaftError::Storage(format!("storing applied entries: {err}")))?;
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
        for (id, addr) in decode_conf_addresses(&e.context) {
            self.members.insert(id, addr);
        }
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
        Ok(cs)
    }

    fn on_read_states(&mut self, states: Vec<ReadState>) {
        for rs in states {
            let Some(ctx) = decode_id(&rs.request_ctx) else {
                continue;
            };
            if let Some(batch) = self.reads_in_flight.remove(&ctx) {
                self.reads_ready.push((rs.index, batch.waiters));
            }
        }
    }

    fn finish_reads(&mut self) {
        let applied = self.applied;
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

    /// Takes a snapshot and compacts the log once enough was applied since the last one, or
    /// when raft-rs asked for a newer snapshot than the stored one.
    fn maybe_snapshot(&mut self) -> Result<()> {
        let wanted = self.raw.store().take_snapshot_wanted();
        let stored = self.raw.store().snapshot_metadata().index;
        if self.applied <= stored || !(wanted || self.log_bytes >= self.cfg.snapshot_log_bytes) {
            return Ok(());
        }
        let started = Instant::now();
        let data = SnapshotData {
            members: self.members.clone(),
            state: self
                .sm
                .read()
                .snapshot()
                .map_err(|e| RaftError::Storage(format!("taking a snapshot: {e}")))?,
        };
        let mut meta = raft::eraftpb::SnapshotMetadata {
            index: self.applied,
            term: self.applied_term,
            ..Default::default()
        };
        meta.set_conf_state(self.conf_state.clone());
        let first = self.raw.store().first_index();
        let compact_to = self
            .applied
            .saturating_sub(self.cfg.keep_entries_after_snapshot)
            .max(first - 1);
        let bytes = data.state.len();
        self.raw
            .mut_store()
            .save_snapshot(meta, &data.encode(), compact_to)?;
        self.log_bytes = 0;
        self.metrics
            .snapshots_taken
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            index = self.applied,
            compacted_to = compact_to,
            bytes,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot taken"
        );
        Ok(())
    }

    fn fail_all(&mut self, err: impl Fn() -> RaftError) {
        // Work already applied keeps its answer.
        for reply in self.completions.drain(..) {
            reply();
        }
        for (_, p) in std::mem::take(&mut self.proposals) {
            p.waiter.finish(Err(err()));
        }
        for (_, p) in std::mem::take(&mut self.conf_changes) {
            p.waiter.finish(Err(err()));
        }
        for w in std::mem::take(&mut self.queued_reads) {
            w.finish(Err(err()));
        }
        for (_, b) in std::mem::take(&mut self.reads_in_flight) {
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
        // Requests still queued in the inbox are answered too, so no caller waits for its
        // deadline on a stopped node.
        for msg in self.inbox.try_iter() {
            match msg {
                Msg::Propose { reply, .. } => drop(reply.send(Err(err()))),
                Msg::ReadIndex { reply, .. } => drop(reply.send(Err(err()))),
                Msg::ConfChange { reply, .. } => drop(reply.send(Err(err()))),
                Msg::TransferLeader { reply, .. } => drop(reply.send(Err(err()))),
                _ => {}
            }
        }
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
            snapshot_index: store.snapshot_metadata().index,
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

fn expire_pending<T>(map: &mut BTreeMap<u64, Pending<T>>, now: Instant, timeout: Duration) {
    let expired: Vec<u64> = map
        .iter()
        .filter(|(_, p)| p.waiter.deadline <= now)
        .map(|(index, _)| *index)
        .collect();
    for index in expired {
        if let Some(p) = map.remove(&index) {
            p.waiter.finish(Err(RaftError::Timeout(timeout)));
        }
    }
}
