//! Wire encoding: the crate's plain types to and from the messages of
//! `proto/shardctrler.proto`, for the Raft log, snapshots and the gRPC API.
//!
//! Invariant: equal values encode to equal bytes. prost writes fields in tag order and repeated
//! fields in vector order, and every vector built here from a map is in key order, so this
//! holds as long as nothing here iterates a hash map.
//!
//! Decoding is strict and deterministic: what is refused here is refused identically on every
//! replica, because the same bytes reach every replica's `apply`.

use std::collections::BTreeMap;

use prost::Message;
use quorumkv_proto::shardctrler as pb;

use crate::controller::Session;
use crate::{Applied, Command, Config, CtrlError, RequestId, Snapshot};

/// The snapshot encoding written by [`encode_snapshot`]; see `ControllerSnapshot.version`.
pub const SNAPSHOT_VERSION: u32 = 1;

fn groups_to_pb(groups: &BTreeMap<u64, Vec<String>>) -> Vec<pb::Group> {
    groups
        .iter()
        .map(|(gid, servers)| pb::Group {
            gid: *gid,
            servers: servers.clone(),
        })
        .collect()
}

/// A configuration as its API message (groups sorted by gid).
pub fn config_to_pb(c: &Config) -> pb::Config {
    pb::Config {
        num: c.num,
        shards: c.shards.clone(),
        groups: groups_to_pb(&c.groups),
    }
}

/// Reads a configuration from a snapshot; the groups must be strictly sorted by gid (what
/// [`config_to_pb`] writes), so that a snapshot has exactly one encoding.
fn config_from_pb(c: pb::Config) -> Result<Config, String> {
    let mut groups = BTreeMap::new();
    let mut last = None;
    for g in c.groups {
        if last.is_some_and(|l| l >= g.gid) {
            return Err(format!(
                "config {}: groups are not sorted by gid at {}",
                c.num, g.gid
            ));
        }
        last = Some(g.gid);
        groups.insert(g.gid, g.servers);
    }
    Ok(Config {
        num: c.num,
        shards: c.shards,
        groups,
    })
}

/// The log entry of `cmd`.
pub fn command_to_pb(cmd: &Command) -> pb::ControllerCommand {
    use pb::controller_command::Op;
    let id = cmd.id();
    let op = match cmd {
        Command::Join { groups, .. } => Op::Join(pb::JoinOp {
            groups: groups_to_pb(groups),
        }),
        Command::Leave { gids, .. } => Op::Leave(pb::LeaveOp { gids: gids.clone() }),
        Command::Move { shard, gid, .. } => Op::Move(pb::MoveOp {
            shard: *shard,
            gid: *gid,
        }),
        Command::SetServers { gid, servers, .. } => Op::SetServers(pb::SetServersOp {
            gid: *gid,
            servers: servers.clone(),
        }),
    };
    pb::ControllerCommand {
        client_id: id.client,
        seq: id.seq,
        op: Some(op),
        now_ms: 0,
    }
}

/// The command of a log entry (or of a request about to be proposed). Refuses, as
/// `InvalidArgument`, what a `Command` cannot express: a zero client id or sequence number, a
/// missing operation, a gid listed twice in one Join.
pub fn command_from_pb(c: pb::ControllerCommand) -> Result<Command, CtrlError> {
    use pb::controller_command::Op;
    let invalid = |s: String| Err(CtrlError::InvalidArgument(s));
    if c.client_id == 0 {
        return invalid("client_id must be non-zero".into());
    }
    if c.seq == 0 {
        return invalid("seq must start at 1".into());
    }
    let id = RequestId {
        client: c.client_id,
        seq: c.seq,
    };
    match c.op {
        None => invalid("the command names no operation".into()),
        Some(Op::Join(j)) => {
            let mut groups = BTreeMap::new();
            for g in j.groups {
                if groups.insert(g.gid, g.servers).is_some() {
                    return invalid(format!("join: group {} is listed more than once", g.gid));
                }
            }
            Ok(Command::Join { id, groups })
        }
        Some(Op::Leave(l)) => Ok(Command::Leave { id, gids: l.gids }),
        Some(Op::Move(m)) => Ok(Command::Move {
            id,
            shard: m.shard,
            gid: m.gid,
        }),
        Some(Op::SetServers(s)) => Ok(Command::SetServers {
            id,
            gid: s.gid,
            servers: s.servers,
        }),
    }
}

/// The bytes proposed to the Raft log for `cmd`.
pub fn encode_command(cmd: &Command) -> Vec<u8> {
    command_to_pb(cmd).encode_to_vec()
}

/// Decodes a log entry written by [`encode_command`].
pub fn decode_command(bytes: &[u8]) -> Result<Command, CtrlError> {
    decode_stamped(bytes).map(|(c, _)| c)
}

/// Decodes a log entry and the proposer's timestamp stamped on it (0 if none).
pub fn decode_stamped(bytes: &[u8]) -> Result<(Command, u64), CtrlError> {
    let c = pb::ControllerCommand::decode(bytes)
        .map_err(|e| CtrlError::InvalidArgument(format!("malformed controller command: {e}")))?;
    let now = c.now_ms;
    Ok((command_from_pb(c)?, now))
}

fn result_to_pb(r: &Result<Applied, CtrlError>) -> pb::CommandResult {
    use pb::command_result::Outcome;
    let outcome = match r {
        Ok(Applied { num }) => Outcome::Applied(*num),
        Err(CtrlError::InvalidArgument(s)) => Outcome::InvalidArgument(s.clone()),
        Err(CtrlError::Superseded {
            client,
            seq,
            last_seq,
        }) => Outcome::Superseded(pb::Superseded {
            client_id: *client,
            seq: *seq,
            last_seq: *last_seq,
        }),
        Err(CtrlError::CorruptSnapshot(s)) => Outcome::CorruptSnapshot(s.clone()),
        Err(CtrlError::CannotStart(s)) => Outcome::CannotStart(s.clone()),
    };
    pb::CommandResult {
        outcome: Some(outcome),
    }
}

fn result_from_pb(r: pb::CommandResult) -> Result<Result<Applied, CtrlError>, String> {
    use pb::command_result::Outcome;
    Ok(
        match r.outcome.ok_or("command result without an outcome")? {
            Outcome::Applied(num) => Ok(Applied { num }),
            Outcome::InvalidArgument(s) => Err(CtrlError::InvalidArgument(s)),
            Outcome::Superseded(s) => Err(CtrlError::Superseded {
                client: s.client_id,
                seq: s.seq,
                last_seq: s.last_seq,
            }),
            Outcome::CorruptSnapshot(s) => Err(CtrlError::CorruptSnapshot(s)),
            Outcome::CannotStart(s) => Err(CtrlError::CannotStart(s)),
        },
    )
}

/// The state machine's response to a proposer: the outcome of `apply`.
pub fn encode_result(r: &Result<Applied, CtrlError>) -> Vec<u8> {
    result_to_pb(r).encode_to_vec()
}

/// Decodes a response written by [`encode_result`]. The outer error means the bytes are not a
/// response at all (a bug, not a refusal).
pub fn decode_result(bytes: &[u8]) -> Result<Result<Applied, CtrlError>, String> {
    let r = pb::CommandResult::decode(bytes).map_err(|e| format!("malformed response: {e}"))?;
    result_from_pb(r)
}

/// The snapshot bytes of the controller's state (version [`SNAPSHOT_VERSION`]).
pub fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    pb::ControllerSnapshot {
        version: SNAPSHOT_VERSION,
        num_shards: s.num_shards as u64,
        history: s.history.iter().map(config_to_pb).collect(),
        sessions: s
            .sessions
            .iter()
            .map(|(client, session)| pb::SessionRecord {
                client_id: *client,
                last_seq: session.last_seq,
                last_result: Some(result_to_pb(&session.last_result)),
                last_ms: session.last_ms,
            })
            .collect(),
        clock_ms: s.clock_ms,
        last_sweep_ms: s.last_sweep_ms,
    }
    .encode_to_vec()
}

/// Decodes snapshot bytes; structural problems are `CorruptSnapshot`. The invariants of the
/// state itself are checked by [`crate::Controller::restore`].
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, CtrlError> {
    let corrupt = |s: String| CtrlError::CorruptSnapshot(s);
    let s = pb::ControllerSnapshot::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
    if s.version != SNAPSHOT_VERSION {
        return Err(corrupt(format!(
            "snapshot encoding version {} is not supported (this build reads version \
             {SNAPSHOT_VERSION})",
            s.version
        )));
    }
    let num_shards = usize::try_from(s.num_shards)
        .map_err(|_| corrupt(format!("shard count {} is too large", s.num_shards)))?;
    let history = s
        .history
        .into_iter()
        .map(config_from_pb)
        .collect::<Result<Vec<_>, _>>()
        .map_err(corrupt)?;
    let mut sessions = BTreeMap::new();
    let mut last = None;
    for r in s.sessions {
        if last.is_some_and(|l| l >= r.client_id) {
            return Err(corrupt(format!(
                "sessions are not sorted by client id at {}",
                r.client_id
            )));
        }
        last = Some(r.client_id);
        let last_result = result_from_pb(r.last_result.unwrap_or_default()).map_err(corrupt)?;
        sessions.insert(
            r.client_id,
            Session {
                last_seq: r.last_seq,
                last_result,
                last_ms: r.last_ms,
            },
        );
    }
    Ok(Snapshot {
        num_shards,
        history,
        sessions,
        clock_ms: s.clock_ms,
        last_sweep_ms: s.last_sweep_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Controller;

    fn id(client: u64, seq: u64) -> RequestId {
        RequestId { client, seq }
    }

    #[test]
    fn commands_round_trip() {
        let cmds = [
            Command::Join {
                id: id(1, 1),
                groups: BTreeMap::from([(2, vec!["b:1".into()]), (1, vec!["a:1".into()])]),
            },
            Command::Leave {
                id: id(1, 2),
                gids: vec![2, 1],
            },
            Command::Move {
                id: id(3, 9),
                shard: 5,
                gid: 1,
            },
            Command::SetServers {
                id: id(3, 10),
                gid: 2,
                servers: vec!["c:1".into(), "b:1".into()],
            },
        ];
        for c in cmds {
            assert_eq!(decode_command(&encode_command(&c)).unwrap(), c);
        }
    }

    #[test]
    fn refuses_what_a_command_cannot_express() {
        for bad in [
            pb::ControllerCommand {
                client_id: 0,
                seq: 1,
                now_ms: 0,
                op: Some(pb::controller_command::Op::Leave(pb::LeaveOp {
                    gids: vec![1],
                })),
            },
            pb::ControllerCommand {
                client_id: 1,
                seq: 0,
                now_ms: 0,
                op: Some(pb::controller_command::Op::Leave(pb::LeaveOp {
                    gids: vec![1],
                })),
            },
            pb::ControllerCommand {
                client_id: 1,
                seq: 1,
                now_ms: 0,
                op: None,
            },
            pb::ControllerCommand {
                client_id: 1,
                seq: 1,
                now_ms: 0,
                op: Some(pb::controller_command::Op::Join(pb::JoinOp {
                    groups: vec![
                        pb::Group {
                            gid: 1,
                            servers: vec!["a:1".into()],
                        },
                        pb::Group {
                            gid: 1,
                            servers: vec!["b:1".into()],
                        },
                    ],
                })),
            },
        ] {
            assert!(matches!(
                decode_command(&bad.encode_to_vec()),
                Err(CtrlError::InvalidArgument(_))
            ));
        }
        assert!(matches!(
            decode_command(b"\xff\xff\xff"),
            Err(CtrlError::InvalidArgument(_))
        ));
    }

    #[test]
    fn snapshots_round_trip_deterministically() {
        let mut c = Controller::with_shards(10).unwrap();
        c.apply(Command::Join {
            id: id(7, 1),
            groups: BTreeMap::from([(1, vec!["a:1".into()]), (2, vec!["b:1".into()])]),
        })
        .unwrap();
        c.apply(Command::Leave {
            id: id(8, 1),
            gids: vec![5],
        })
        .unwrap_err();
        let bytes = encode_snapshot(&c.snapshot());
        let restored = Controller::restore(decode_snapshot(&bytes).unwrap()).unwrap();
        assert_eq!(restored, c);
        assert_eq!(encode_snapshot(&restored.snapshot()), bytes);
        let mut wrong_version = pb::ControllerSnapshot::decode(&bytes[..]).unwrap();
        wrong_version.version = 2;
        assert!(matches!(
            decode_snapshot(&wrong_version.encode_to_vec()),
            Err(CtrlError::CorruptSnapshot(_))
        ));
    }

    #[test]
    fn results_round_trip() {
        for r in [
            Ok(Applied { num: 3 }),
            Err(CtrlError::InvalidArgument("x".into())),
            Err(CtrlError::Superseded {
                client: 1,
                seq: 2,
                last_seq: 3,
            }),
        ] {
            assert_eq!(decode_result(&encode_result(&r)).unwrap(), r);
        }
    }
}
