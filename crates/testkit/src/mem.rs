//! An in-memory transport: members of one process hand messages straight to each other's
//! mailboxes. For benchmarks of the driver and storage without network or TLS costs.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;
use quorumkv_raft_core::{Mailbox, Transport};
use raft::eraftpb::{Message, MessageType};

/// The mailboxes (and snapshot directories) of every member, by id.
#[derive(Default)]
pub struct MemNetwork {
    mailboxes: RwLock<HashMap<u64, (Mailbox, PathBuf)>>,
}

impl MemNetwork {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers member `id`, whose data directory is `data_dir`.
    pub fn register(&self, id: u64, mailbox: Mailbox, data_dir: impl Into<PathBuf>) {
        let snapshots = data_dir
            .into()
            .join(quorumkv_raft_core::storage::SNAPSHOT_DIR);
        self.mailboxes.write().insert(id, (mailbox, snapshots));
    }

    /// A transport for member `from`.
    pub fn transport(self: &Arc<Self>, from: u64, own: Mailbox) -> MemTransport {
        MemTransport {
            net: self.clone(),
            own,
            from,
        }
    }
}

/// Sends by delivering into the destination's mailbox.
pub struct MemTransport {
    net: Arc<MemNetwork>,
    own: Mailbox,
    from: u64,
}

impl Transport for MemTransport {
    fn send(&self, msgs: Vec<Message>) {
        let boxes = self.net.mailboxes.read();
        for m in msgs {
            let to = m.to;
            let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            let ok = match (boxes.get(&to), boxes.get(&self.from)) {
                (Some((mb, dst)), Some((_, src))) if snapshot => {
                    quorumkv_raft_core::transport::hand_over_snapshot(m, src, dst)
                        .is_ok_and(|m| mb.deliver(m).is_ok())
                }
                (Some((mb, _)), _) => mb.deliver(m).is_ok(),
                _ => false,
            };
            if snapshot {
                self.own.report_snapshot(to, ok);
            } else if !ok {
                self.own.report_unreachable(to);
            }
        }
    }

    fn set_members(&self, _members: &BTreeMap<u64, String>) {}
}
