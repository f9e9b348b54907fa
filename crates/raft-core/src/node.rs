//! The public handle of one Raft member: propose, read, change membership, transfer leadership,
//! observe status, shut down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState,
};
use tokio::sync::{oneshot, watch};

use crate::config::NodeConfig;
use crate::driver::Driver;
use crate::error::{RaftError, Result};
use crate::mailbox::{Inbox, Mailbox, Msg};
use crate::metrics::RaftMetrics;
use crate::state_machine::StateMachine;
use crate::status::Status;
use crate::transport::Transport;

/// One running member of a Raft group, hosting the state machine `S`.
///
/// Cheap to share behind an `Arc`; every method may be called concurrently. Dropping the last
/// handle stops the driver.
pub struct RaftNode<S: StateMachine> {
    id: u64,
    request_timeout: Duration,
    /// `tick_interval * election_tick`: how long raft-rs keeps a leadership transfer going
    /// before it gives up on it.
    election_timeout: Duration,
    mailbox: Mailbox,
    sm: Arc<RwLock<S>>,
    status: watch::Receiver<Status>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn change(kind: ConfChangeType, id: u64) -> ConfChangeSingle {
    let mut c = ConfChangeSingle::default();
    c.set_change_type(kind);
    c.node_id = id;
    c
}

impl<S: StateMachine> RaftNode<S> {
    /// Opens the member's storage in `cfg.data_dir`, restores the state machine from it and
    /// starts the driver thread. `mailbox`/`inbox` come from [`crate::mailbox()`]; the same
    /// mailbox must be given to the transport (for failure reports) and to the
    /// [`crate::transport::service::RaftService`] (for incoming messages).
    pub fn start(
        cfg: NodeConfig,
        state_machine: S,
        transport: Arc<dyn Transport>,
        mailbox: Mailbox,
        inbox: Inbox,
    ) -> Result<Self> {
        let id = cfg.id;
        let request_timeout = cfg.request_timeout;
        let election_timeout = cfg.tick_interval * cfg.election_tick as u32;
        let span = tracing::info_span!("raft", group = cfg.group_id, node = cfg.id);
        let sm = Arc::new(RwLock::new(state_machine));
        let (status_tx, status) = watch::channel(Status::default());
        let driver = {
            let _enter = span.enter();
            let worker = crate::driver::jobs::Worker::spawn(id, mailbox.clone())
                .map_err(|e| RaftError::storage("cannot start the raft worker thread", e))?;
            Driver::new(
                cfg,
                sm.clone(),
                transport,
                inbox,
                status_tx,
                mailbox.metrics().clone(),
                worker,
            )?
        };
        // The status is meaningful (persisted indices, members) from the moment start returns.
        driver.publish_status(None);
        let thread = std::thread::Builder::new()
            .name(format!("raft-{id}"))
            .spawn(move || span.in_scope(|| driver.run()))
            .map_err(|e| RaftError::storage("cannot start the raft driver thread", e))?;
        Ok(RaftNode {
            id,
            request_timeout,
            election_timeout,
            mailbox,
            sm,
            status,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Starts a member whose peers are reached over mutual-TLS gRPC: creates its mailbox and
    /// [`crate::GrpcTransport`], starts the node, and returns it with the
    /// [`crate::RaftService`] that the member's gRPC server must mount so peers can reach it.
    /// Must be called inside a tokio runtime (the transport's tasks run on it).
    pub fn start_grpc(
        cfg: NodeConfig,
        state_machine: S,
        tls: quorumkv_common::TlsMaterial,
        mailbox_capacity: usize,
    ) -> Result<(Self, crate::RaftService)> {
        Self::start_grpc_wrapped(cfg, state_machine, tls, mailbox_capacity, |t| Arc::new(t))
    }

    /// [`RaftNode::start_grpc`] with the transport passed through `wrap` first (tests wrap it
    /// to inject partitions, drops and delays).
    pub fn start_grpc_wrapped(
        cfg: NodeConfig,
        state_machine: S,
        tls: quorumkv_common::TlsMaterial,
        mailbox_capacity: usize,
        wrap: impl FnOnce(crate::GrpcTransport) -> Arc<dyn Transport>,
    ) -> Result<(Self, crate::RaftService)> {
        let (mb, inbox) = crate::mailbox(mailbox_capacity);
        let snapshot_dir = cfg.data_dir.join(crate::storage::SNAPSHOT_DIR);
        let transport = crate::GrpcTransport::new(
            cfg.id,
            cfg.group_id,
            crate::Dialer::new(tls),
            mb.clone(),
            tokio::runtime::Handle::current(),
            snapshot_dir.clone(),
        );
        let service = crate::RaftService::new(cfg.group_id, mb.clone(), snapshot_dir);
        let node = Self::start(cfg, state_machine, wrap(transport), mb, inbox)?;
        Ok((node, service))
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The mailbox of this member (for a `RaftService` created after the node).
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    /// This member's counters and latency histograms (shared with its mailbox, transport and
    /// driver).
    pub fn metrics(&self) -> &Arc<RaftMetrics> {
        self.mailbox.metrics()
    }

    /// The latest published status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver that is notified whenever the status changes.
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Waits until `pred` holds for the status, or fails with `Timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Status) -> bool,
    ) -> Result<Status> {
        let mut rx = self.status.clone();
        let found = tokio::time::timeout(timeout, async {
            rx.wait_for(|s| pred(s) || s.stopped)
                .await
                .map(|s| s.clone())
        })
        .await;
        match found {
            Ok(Ok(s)) if !s.stopped || pred(&s) => Ok(s),
            Ok(_) => Err(RaftError::ShuttingDown),
            Err(_) => Err(RaftError::Timeout(timeout)),
        }
    }

    async fn call<T>(
        &self,
        timeout: Duration,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Msg,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.mailbox.request(make(tx))?;
        // The driver answers every request by its deadline (checked on each tick); the outer
        // timeout only guards against a driver that died.
        match tokio::time::timeout(timeout + Duration::from_secs(1), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RaftError::ShuttingDown),
            Err(_) => Err(RaftError::Timeout(timeout)),
        }
    }

    /// Proposes `command` and returns the state machine's response once the entry is committed
    /// and applied on this member. Fails with `NotLeader` on a follower.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>> {
        self.propose_with_timeout(command, self.request_timeout)
            .await
    }

    pub async fn propose_with_timeout(
        &self,
        command: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let start = Instant::now();
        let result = self
            .call(timeout, |reply| Msg::Propose {
                command,
                timeout,
                queued_at: start,
                reply,
            })
            .await;
        self.metrics().proposals.record(start, &result);
        result
    }

    /// Linearizable read barrier (ReadIndex): returns once this member has applied everything
    /// committed before the call, as confirmed by a quorum, without writing to the log. Works on
    /// followers too (raft-rs forwards the request to the leader).
    pub async fn read_index(&self) -> Result<u64> {
        let start = Instant::now();
        let timeout = self.request_timeout;
        let result = self
            .call(timeout, |reply| Msg::ReadIndex { timeout, reply })
            .await;
        self.metrics().read_index.record(start, &result);
        result
    }

    /// A linearizable read of the state machine: ReadIndex, then `f` on the state.
    pub async fn read<R>(&self, f: impl FnOnce(&S) -> R) -> Result<R> {
        self.read_index().await?;
        Ok(f(&self.sm.read()))
    }

    /// Reads the local state without any consistency guarantee (it may be stale). Only for
    /// callers that asked for it explicitly, diagnostics and tests.
    pub fn read_local<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&self.sm.read())
    }

    /// Moves leadership to voter `to`; returns once `to` is the leader.
    pub async fn transfer_leader(&self, to: u64) -> Result<()> {
        self.transfer_leader_within(to, self.request_timeout).await
    }

    async fn transfer_leader_within(&self, to: u64, timeout: Duration) -> Result<()> {
        self.call(timeout, |reply| Msg::TransferLeader { to, timeout, reply })
            .await
    }

    /// Before this member goes away (SIGTERM, rolling restart): if it leads, hands leadership
    /// to the most caught-up other voter (highest `matched`, then recently active), so the
    /// group gets a new leader at once instead of after an election timeout. Tries the next
    /// best voter when a transfer does not complete (raft-rs abandons one after an election
    /// timeout).
    ///
    /// Returns `Ok(None)` at once when this member does not lead (nothing to hand off),
    /// `Ok(Some(id))` once member `id` leads, or `Timeout` when this member still leads after
    /// `timeout`. While a transfer runs the leader refuses proposals with `RetryLater`.
    pub async fn hand_off_leadership(&self, timeout: Duration) -> Result<Option<u64>> {
        let deadline = Instant::now() + timeout;
        let mut attempts: BTreeMap<u64, u32> = BTreeMap::new();
        if !self.status().is_leader() {
            return Ok(None);
        }
        loop {
            let s = self.status();
            if s.stopped {
                return Err(RaftError::ShuttingDown);
            }
            if !s.is_leader() {
                return Ok(s.leader_id.filter(|l| *l != self.id));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RaftError::Timeout(timeout));
            }
            // Fewest failed attempts first, then the most caught up, then recently active.
            let target = s
                .voters
                .iter()
                .filter(|id| **id != self.id)
                .filter_map(|id| s.progress.get(id).map(|p| (*id, p)))
                .max_by_key(|(id, p)| {
                    (
                        std::cmp::Reverse(attempts.get(id).copied().unwrap_or(0)),
                        p.matched,
                        p.recent_active,
                    )
                })
                .map(|(id, _)| id);
            let Some(to) = target else {
                return Err(RaftError::InvalidArgument(
                    "no other voter to hand leadership to".into(),
                ));
            };
            *attempts.entry(to).or_default() += 1;
            tracing::info!(to, "handing leadership over");
            let attempt = left.min(self.election_timeout * 2);
            match self.transfer_leader_within(to, attempt).await {
                Ok(()) => return Ok(Some(to)),
                Err(RaftError::NotLeader { leader_id, .. }) => {
                    return Ok(leader_id.filter(|l| *l != self.id))
                }
                Err(RaftError::ShuttingDown) => return Err(RaftError::ShuttingDown),
                Err(e) => {
                    tracing::debug!(to, error = %e, "leadership transfer did not complete");
                    // A transfer abandoned by raft-rs leaves a brief window; do not spin.
                    let pause = Duration::from_millis(20).min(left);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Proposes a membership change (one ConfChangeV2: several changes at once go through
    /// joint consensus, which raft-rs leaves automatically). `addresses` are the new members'
    /// addresses, recorded by every member when the change applies.
    pub async fn change_membership(
        &self,
        changes: Vec<ConfChangeSingle>,
        addresses: Vec<(u64, String)>,
    ) -> Result<ConfState> {
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Auto);
        cc.set_changes(changes.into());
        let timeout = self.request_timeout;
        let cs = self
            .call(timeout, |reply| Msg::ConfChange {
                change: cc,
                addresses,
                timeout,
                reply,
            })
            .await?;
        if !cs.voters_outgoing.is_empty() {
            // Joint consensus: wait until the leader's automatic leave-joint entry applied.
            self.wait_for(timeout, |s| s.voters_outgoing.is_empty())
                .await?;
        }
        Ok(cs)
    }

    /// Adds a new member as a learner: it receives the log (or a snapshot) but does not vote.
    pub async fn add_learner(&self, id: u64, addr: String) -> Result<ConfState> {
        let s = self.status();
        if s.voters.contains(&id) || s.learners.contains(&id) {
            return Err(RaftError::InvalidArgument(format!(
                "member {id} is already in the group"
            )));
        }
        quorumkv_common::HostPort::parse(&addr)
            .map_err(|e| RaftError::InvalidArgument(e.to_string()))?;
        self.change_membership(
            vec![change(ConfChangeType::AddLearnerNode, id)],
            vec![(id, addr)],
        )
        .await
    }

    /// Waits (on the leader) until learner `id` has caught up with the commit index.
    pub async fn wait_caught_up(&self, id: u64, timeout: Duration) -> Result<()> {
        let s = self.status();
        if !s.is_leader() {
            return Err(RaftError::NotLeader {
                leader_id: s.leader_id,
                leader_addr: s.leader_addr().map(str::to_string),
            });
        }
        let target = s.commit_index;
        self.wait_for(timeout, |s| {
            !s.is_leader() || s.progress.get(&id).is_some_and(|p| p.matched >= target)
        })
        .await
        .and_then(|s| {
            if s.is_leader() {
                Ok(())
            } else {
                Err(RaftError::NotLeader {
                    leader_id: s.leader_id,
                    leader_addr: s.leader_addr().map(str::to_string),
                })
            }
        })
    }

    /// Promotes learner `id` to voter once it has caught up (so the group does not wait on a
    /// voter that is still far behind).
    pub async fn promote(&self, id: u64) -> Result<ConfState> {
        self.promote_within(id, self.request_timeout).await
    }

    /// [`RaftNode::promote`] giving the learner up to `catch_up` to catch up (a new member of a
    /// large group receives a snapshot first).
    pub async fn promote_within(&self, id: u64, catch_up: Duration) -> Result<ConfState> {
        if !self.status().learners.contains(&id) {
            return Err(RaftError::InvalidArgument(format!(
                "member {id} is not a learner"
            )));
        }
        self.wait_caught_up(id, catch_up).await?;
        self.change_membership(vec![change(ConfChangeType::AddNode, id)], vec![])
            .await
    }

    /// Removes member `id` (voter or learner). A member not in the group (already removed)
    /// is a no-op success, so a repeated removal succeeds.
    pub async fn remove_member(&self, id: u64) -> Result<ConfState> {
        let s = self.status();
        if !s.voters.contains(&id) && !s.learners.contains(&id) {
            if !s.voters_outgoing.contains(&id) {
                return Ok(conf_state_of(&s));
            }
            // Removed by a joint change not left yet: done once it is.
            self.wait_for(self.request_timeout, |s| s.voters_outgoing.is_empty())
                .await?;
            return Ok(conf_state_of(&self.status()));
        }
        if s.voters == [id] {
            return Err(RaftError::InvalidArgument(
                "cannot remove the last voter".into(),
            ));
        }
        self.change_membership(vec![change(ConfChangeType::RemoveNode, id)], vec![])
            .await
    }

    /// Replaces voter `old` with a new member: adds `new_id` as a learner, waits until it has
    /// caught up, then swaps the two in one joint-consensus change, so the group never has
    /// fewer voters than before.
    pub async fn replace_member(&self, old: u64, new_id: u64, addr: String) -> Result<ConfState> {
        self.replace_member_within(old, new_id, addr, self.request_timeout)
            .await
    }

    /// [`RaftNode::replace_member`] giving the new member up to `catch_up` to catch up. When
    /// `new_id` is already a learner at `addr` (an earlier call stopped after adding it), the
    /// replacement resumes from there instead of failing.
    pub async fn replace_member_within(
        &self,
        old: u64,
        new_id: u64,
        addr: String,
        catch_up: Duration,
    ) -> Result<ConfState> {
        let s = self.status();
        // Already swapped (a retry after the swap, possibly on the new leader, while the
        // leader that removed itself handed over): done, once the joint change is left.
        let swapped = s.voters.contains(&new_id)
            && !s.voters.contains(&old)
            && s.members.get(&new_id) == Some(&addr);
        if swapped {
            if !s.voters_outgoing.is_empty() {
                self.wait_for(self.request_timeout, |s| s.voters_outgoing.is_empty())
                    .await?;
            }
            return Ok(conf_state_of(&self.status()));
        }
        if !s.voters.contains(&old) {
            return Err(RaftError::InvalidArgument(format!(
                "member {old} is not a voter"
            )));
        }
        let resuming = s.learners.contains(&new_id) && s.members.get(&new_id) == Some(&addr);
        if !resuming {
            self.add_learner(new_id, addr).await?;
        }
        self.wait_caught_up(new_id, catch_up).await?;
        self.change_membership(
            vec![
                change(ConfChangeType::AddNode, new_id),
                change(ConfChangeType::RemoveNode, old),
            ],
            vec![],
        )
        .await
    }

    /// Stops the driver: pending requests fail with `ShuttingDown`, storage is already
    /// durable (every Ready is synced before it is acknowledged). Idempotent.
    pub async fn shutdown(&self) {
        self.mailbox.shutdown();
        let thread = self.thread.lock().take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl<S: StateMachine> Drop for RaftNode<S> {
    fn drop(&mut self) {
        self.mailbox.shutdown();
    }
}

/// The configuration a status shows.
fn conf_state_of(s: &Status) -> ConfState {
    ConfState {
        voters: s.voters.clone(),
        learners: s.learners.clone(),
        voters_outgoing: s.voters_outgoing.clone(),
        ..Default::default()
    }
}
