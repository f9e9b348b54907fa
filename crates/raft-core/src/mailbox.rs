//! The driver's inbox: everything that reaches the Raft node goes through one bounded channel,
//! so the driver thread alone owns `RawNode` and nothing ever blocks waiting for it.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use raft::eraftpb::{ConfChangeV2, ConfState, Message};
use tokio::sync::oneshot;

use crate::error::{RaftError, Result};
use crate::metrics::RaftMetrics;

/// A request to the driver. Each carries a deadline and a reply channel where it needs one.
pub(crate) enum Msg {
    /// A raft message from a peer.
    Raft(Box<Message>),
    /// Propose a command; the reply is the state machine's response once applied here.
    Propose {
        command: Vec<u8>,
        deadline: Instant,
        reply: oneshot::Sender<Result<Vec<u8>>>,
    },
    /// Linearizable read barrier: replies once this node has applied at least the leader's
    /// commit index as of the request's arrival (ReadIndex).
    ReadIndex {
        deadline: Instant,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Propose a membership change; `addresses` travel in the entry so every member learns
    /// the new members' addresses when it applies it.
    ConfChange {
        change: ConfChangeV2,
        addresses: Vec<(u64, String)>,
        deadline: Instant,
        reply: oneshot::Sender<Result<ConfState>>,
    },
    /// Hand leadership to `to`; replies once `to` leads.
    TransferLeader {
        to: u64,
        deadline: Instant,
        reply: oneshot::Sender<Result<()>>,
    },
    /// The transport could not deliver to this peer.
    Unreachable(u64),
    /// A snapshot transfer to this peer ended.
    SnapshotStatus { to: u64, ok: bool },
    /// Stop the driver: fail pending requests, make storage durable, exit.
    Shutdown,
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
    metrics: Arc<RaftMetrics>,
}

/// Receiving side of a node's inbox, consumed by [`crate::RaftNode::start`].
pub struct Inbox {
    pub(crate) rx: Receiver<Msg>,
}

/// Creates a node's inbox with room for `capacity` pending requests, and the member's
/// [`RaftMetrics`]. When the inbox is full, peer messages are dropped (Raft retransmits) and
/// client requests fail with `RetryLater`.
pub fn mailbox(capacity: usize) -> (Mailbox, Inbox) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let metrics = Arc::new(RaftMetrics::new());
    (Mailbox { tx, metrics }, Inbox { rx })
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

    /// Reports the end of a snapshot transfer to `peer`.
    pub fn report_snapshot(&self, peer: u64, ok: bool) {
        // Must not be lost: raft-rs keeps the peer paused until it hears the outcome.
        let _ = self.tx.send(Msg::SnapshotStatus { to: peer, ok });
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
        let _ = self.tx.send(Msg::Shutdown);
    }
}
