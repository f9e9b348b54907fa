//! The controller as a raft-core [`StateMachine`]: committed log entries are decoded and fed to
//! [`Controller::apply`]; snapshots are the versioned encoding of [`Controller::snapshot`].
//!
//! Everything here is synchronous and deterministic (STYLE rule 2): the same entries give the
//! same state and the same response bytes on every replica.

use quorumkv_raft_core::{
    read_all, BytesSource, SmError, SnapshotChunks, SnapshotSource, StateMachine,
};

use crate::{codec, Controller, CtrlError};

/// The replicated state of one controller member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerSm {
    /// Invariant: `ctrl.num_shards()` is the shard count this member was started with; a
    /// snapshot with another count is refused by `restore`.
    ctrl: Controller,
}

impl ControllerSm {
    /// An empty controller (configuration 0 only) over `num_shards` shards.
    pub fn new(num_shards: usize) -> Result<Self, CtrlError> {
        Ok(ControllerSm {
            ctrl: Controller::with_shards(num_shards)?,
        })
    }

    /// The controller; reads through [`quorumkv_raft_core::RaftNode::read`] are linearizable.
    pub fn controller(&self) -> &Controller {
        &self.ctrl
    }
}

impl StateMachine for ControllerSm {
    /// Responds with an encoded `CommandResult`. Bytes that do not decode to a command are
    /// refused as `InvalidArgument` without touching the controller (no session can be
    /// charged for them), identically on every replica.
    fn apply(&mut self, _index: u64, command: &[u8]) -> Result<Vec<u8>, SmError> {
        let result =
            codec::decode_stamped(command).and_then(|(cmd, now)| self.ctrl.apply_at(cmd, now));
        Ok(codec::encode_result(&result))
    }

    /// The whole state, encoded at once: it is small (configurations and sessions).
    fn snapshot(&self) -> Result<Box<dyn SnapshotSource>, SmError> {
        Ok(Box::new(BytesSource::new(codec::encode_snapshot(
            &self.ctrl.snapshot(),
        ))))
    }

    fn restore(&mut self, _index: u64, snapshot: &mut dyn SnapshotChunks) -> Result<(), SmError> {
        self.restore_bytes(&read_all(snapshot)?)?;
        Ok(())
    }
}

impl ControllerSm {
    fn restore_bytes(&mut self, snapshot: &[u8]) -> Result<(), CtrlError> {
        let snap = codec::decode_snapshot(snapshot)?;
        if snap.num_shards != self.ctrl.num_shards() {
            return Err(CtrlError::InvalidArgument(format!(
                "the controller state has {} shards but this member was started with {}; the \
                 shard count is fixed when the controller is created",
                snap.num_shards,
                self.ctrl.num_shards()
            )));
        }
        self.ctrl = Controller::restore(snap)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Applied, Command, RequestId};
    use std::collections::BTreeMap;

    fn join(client: u64, seq: u64, gid: u64) -> Vec<u8> {
        codec::encode_command(&Command::Join {
            id: RequestId { client, seq },
            groups: BTreeMap::from([(gid, vec![format!("s{gid}:1")])]),
        })
    }

    #[test]
    fn applies_once_and_restores_only_its_own_shard_count() {
        let mut sm = ControllerSm::new(8).unwrap();
        let first = sm.apply(1, &join(1, 1, 1)).unwrap();
        assert_eq!(
            codec::decode_result(&first).unwrap(),
            Ok(Applied { num: 1 })
        );
        assert_eq!(
            sm.apply(2, &join(1, 1, 1)).unwrap(),
            first,
            "a retry gets the same bytes"
        );
        assert_eq!(sm.controller().latest().num, 1);
        assert!(matches!(
            codec::decode_result(&sm.apply(3, b"garbage").unwrap()).unwrap(),
            Err(CtrlError::InvalidArgument(_))
        ));

        let snap = codec::encode_snapshot(&sm.controller().snapshot());
        let mut other = ControllerSm::new(8).unwrap();
        other.restore_bytes(&snap).unwrap();
        assert_eq!(other, sm);
        let mut wrong = ControllerSm::new(16).unwrap();
        let err = wrong.restore_bytes(&snap).unwrap_err().to_string();
        assert!(err.contains("8 shards"), "{err}");
    }
}
