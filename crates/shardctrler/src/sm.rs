//! The controller as a raft-core [`StateMachine`]: committed log entries are decoded and fed to
//! [`Controller::apply`]; snapshots are the versioned encoding of [`Controller::snapshot`].
//!
//! Everything here is synchronous and deterministic (STYLE rule 2): the same entries give the
//! same state and the same response bytes on every replica.

use quorumkv_raft_core::StateMachine;

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
    fn apply(&mut self, _index: u64, command: &[u8]) -> Result<Vec<u8>, String> {
        let result = codec::decode_command(command).and_then(|cmd| self.ctrl.apply(cmd));
        Ok(codec::encode_result(&result))
    }

    fn snapshot(&self) -> Result<Vec<u8>, String> {
        Ok(codec::encode_snapshot(&self.ctrl.snapshot()))
    }

    fn restore(&mut self, _index: u64, snapshot: &[u8]) -> Result<(), String> {
        let snap = codec::decode_snapshot(snapshot).map_err(|e| e.to_string())?;
        if snap.num_shards != self.ctrl.num_shards() {
            return Err(format!(
                "the controller state has {} shards but this member was started with {}; the \
                 shard count is fixed when the controller is created",
                snap.num_shards,
                self.ctrl.num_shards()
            ));
        }
        self.ctrl = Controller::restore(snap).map_err(|e| e.to_string())?;
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

        let snap = sm.snapshot().unwrap();
        let mut other = ControllerSm::new(8).unwrap();
        other.restore(9, &snap).unwrap();
        assert_eq!(other, sm);
        let mut wrong = ControllerSm::new(16).unwrap();
        let err = wrong.restore(9, &snap).unwrap_err();
        assert!(err.contains("8 shards"), "{err}");
    }
}
