//! Moving raft messages between members.
//!
//! The driver hands each Ready's messages to a [`Transport`] and never waits for it: a
//! transport queues per destination and drops (reporting the peer unreachable through the
//! [`crate::Mailbox`]) when a peer is slow or down. Raft tolerates lost messages; it does not
//! tolerate a driver stuck behind one slow peer.
//!
//! - [`grpc::GrpcTransport`]: the production transport, one long-lived mutual-TLS gRPC stream
//!   per peer, plus chunked snapshot streams.
//! - [`service::RaftService`]: the receiving side, a tonic service that steps incoming
//!   messages into the local node's mailbox.

pub mod grpc;
pub mod service;

use std::collections::BTreeMap;

use raft::eraftpb::Message;

/// Sends raft messages to the members of one group.
pub trait Transport: Send + Sync + 'static {
    /// Queues `msgs` for their destinations (`msg.to`). Must not block. Messages for an unknown
    /// or congested peer are dropped and the peer is reported unreachable; a `MsgSnapshot`'s
    /// outcome is reported with `Mailbox::report_snapshot`.
    fn send(&self, msgs: Vec<Message>);

    /// The group's address book changed (membership change, snapshot). Connections to
    /// removed members are closed; changed addresses are dialled anew.
    fn set_members(&self, members: &BTreeMap<u64, String>);
}

impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    fn send(&self, msgs: Vec<Message>) {
        (**self).send(msgs)
    }
    fn set_members(&self, members: &BTreeMap<u64, String>) {
        (**self).set_members(members)
    }
}
