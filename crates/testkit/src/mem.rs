//! An in-memory transport: members of one process hand messages straight to each other's
//! mailboxes. For benchmarks of the driver and storage without network or TLS costs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use quorumkv_raft_core::{Mailbox, Transport};
use raft::eraftpb::{Message, MessageType};

/// The mailboxes of every member, by id.
#[derive(Default)]
pub struct MemNetwork {
    mailboxes: RwLock<HashMap<u64, Mailbox>>,
}

impl MemNetwork {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn register(&self, id: u64, mailbox: Mailbox) {
        self.mailboxes.write().insert(id, mailbox);
    }

    /// A transport for member `from`.
    pub fn transport(self: &Arc<Self>, from: u64, own: Mailbox) -> MemTransport {
        MemTransport {
            net: self.clone(),
            own,
            _from: from,
        }
    }
}

/// Sends by delivering into the destination's mailbox.
pub struct MemTransport {
    net: Arc<MemNetwork>,
    own: Mailbox,
    _from: u64,
}

impl Transport for MemTransport {
    fn send(&self, msgs: Vec<Message>) {
        let boxes = self.net.mailboxes.read();
        for m in msgs {
            let to = m.to;
            let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            let ok = boxes.get(&to).is_some_and(|mb| mb.deliver(m).is_ok());
            if snapshot {
                self.own.report_snapshot(to, ok);
            } else if !ok {
                self.own.report_unreachable(to);
            }
        }
    }

    fn set_members(&self, _members: &BTreeMap<u64, String>) {}
}
