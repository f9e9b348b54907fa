//! The driver's inbox: everything that reaches the Raft node goes through it, so the driver
//! thread alone owns `RawNode` and nothing ever blocks waiting for it.
//!
//! Two channels: a bounded one for requests and peer messages (when it is full, peer messages
//! are dropped, as Raft retransmits, and requests fail with `RetryLater`), and an unbounded
//! control channel for reports that must never be lost nor block their sender (the end of a
//! snapshot transfer, which raft-rs waits for; the result of a background job). Control
//! messages are few: at most one per transfer or job in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use raft::eraftpb::{ConfChangeV2, ConfState, Message};
use tokio::sync::oneshot;

use crate::driver::jobs::JobDone;
use crate::error::{RaftError, Result};
use crate::metrics::RaftMetrics;

/// A request to the driver. Each carries its timeout (counted in ticks from when the driver
/// takes it) and a reply channel where it needs one.
pub(crate) enum Msg {
    /// A raft message from a peer.
    Raft(Box<Message>),
    /// Propose a command; the reply is the state machine's response once applied here.
    Propose {
        command: Vec<u8>,
        timeout: Duration,
        queued_at: Instant,
        reply: oneshot::Sender<Result<Vec<u8>>>,
    },
    /// Linearizable read barrier: replies once this node has applied at least the leader's
    /// commit index as of the request's arrival (ReadIndex).
    ReadIndex {
        timeout: Duration,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Propose a membership change; `addresses` travel in the entry so every member learns
    /// the new members' addresses when it applies it.
    ConfChange {
        change: ConfChangeV2,
        addresses: Vec<(u64, String)>,
        timeout: Duration,
        reply: oneshot::Sender<Result<ConfState>>,
    },
    /// Hand leadership to `to`; replies once `to` leads.
    TransferLeader {
        to: u64,
        timeout: Duration,
        reply: oneshot::Sender<Result<()>>,
    },
    /// The transport could not deliver to this peer.
    Unreachable(u64),
    /// Stop the driver: fail pending requests, close the state machine, exit.
    Shutdown,
}

/// A report on the control channel.
pub(crate) enum Control {
    /// A snapshot transfer to this peer ended.
    SnapshotStatus { to: u64, ok: bool },
    /// A background job finished.
    JobDone(Box<JobDone>),
}

/// Why a peer message was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The inbox was full; the message was dropped.
    Dropped,
    /// The member stopped.
    Stopped,
}

/// Sending side of a node's inbox. Cheap to clone; used by the node handle, the gRPC service
/// that receives peer messages, and the transport (to report failures). It also carries the
/// member's [`RaftMetrics`], since every part of the member holds it.
#[derive(Clone)]
pub struct Mailbox {
    tx: Sender<Msg>,
    control: Sender<Control>,
    metrics: Arc<RaftMetrics>,
}

/// Receiving side of a node's inbox, consumed by [`crate::RaftNode::start`].
pub struct Inbox {
    pub(crate) rx: Receiver<Msg>,
    pub(crate) control: Receiver<Control>,
}

/// Creates a node's inbox with room for `capacity` pending requests and peer messages, and
/// the member's [`RaftMetrics`].
pub fn mailbox(capacity: usize) -> (Mailbox, Inbox) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let (ctx, crx) = crossbeam_channel::unbounded();
    let metrics = Arc::new(RaftMetrics::new());
    (
        Mailbox {
            tx,
            control: ctx,
            metrics,
        },
        Inbox { rx, control: crx },
    )
}

impl Mailbox {
    /// The member's counters and histograms.
    pub fn metrics(&self) -> &Arc<RaftMetrics> {
        &self.metrics
    }

    /// Delivers a raft message from a peer. A full inbox drops it (Raft retransmits); a
    /// closed one means this member stopped, and the caller should end the peer's stream so
    /// that the peer reconnects to whatever serves the address next.
    pub fn deliver(&self, msg: Message) -> Result<(), Delivery> {
        match self.tx.try_send(Msg::Raft(Box::new(msg))) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Delivery::Dropped),
            Err(TrySendError::Disconnected(_)) => Err(Delivery::Stopped),
        }
    }

    /// Reports that messages to `peer` could not be sent.
    pub fn report_unreachable(&self, peer: u64) {
        let _ = self.tx.try_send(Msg::Unreachable(peer));
    }

    /// Reports the end of a snapshot transfer to `peer`. Never blocks and is never lost
    /// while the member runs: raft-rs keeps the peer paused until it hears the outcome.
    pub fn report_snapshot(&self, peer: u64, ok: bool) {
        let _ = self.control.send(Control::SnapshotStatus { to: peer, ok });
    }

    pub(crate) fn job_done(&self, done: JobDone) {
        let _ = self.control.send(Control::JobDone(Box::new(done)));
    }

    pub(crate) fn request(&self, msg: Msg) -> Result<()> {
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(RaftError::RetryLater(
                "node overloaded: request queue full".into(),
            )),
            Err(TrySendError::Disconnected(_)) => Err(RaftError::ShuttingDown),
        }
    }

    pub(crate) fn shutdown(&self) {
        // A full inbox must not block the caller (a tokio task, or Drop): the driver also
        // stops when every handle is gone.
        if let Err(TrySendError::Full(m)) = self.tx.try_send(Msg::Shutdown) {
            let tx = self.tx.clone();
            let _ = std::thread::Builder::new()
                .name("raft-shutdown".into())
                .spawn(move || drop(tx.send(m)));
        }
    }
}
