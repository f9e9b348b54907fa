//! The gRPC edge of a controller member: the `ShardCtrler` service.
//!
//! Join, Leave, Move and SetServers are proposed through Raft and answered with what `apply` returned on
//! this member. Query is a linearizable read (ReadIndex): it never writes to the log, so groups
//! can poll it as often as they like without growing it. Status is local.
//!
//! Requests are checked here, before proposing, for everything that needs no state (gid 0,
//! empty lists, malformed or repeated addresses, a shard out of range), so garbage never
//! reaches the log. `apply` repeats every check deterministically, together with those that
//! need the configuration (a gid already in, an unknown gid); this edge is only a shortcut.
//!
//! Errors become [`tonic::Status`] here and nowhere else, following `quorumkv_common::rpc`.
//!
//! Join, Leave, Move, SetServers and Query pass the member's [`RequestGate`] (refused with `ShuttingDown`
//! once the member stops, so clients go to another member) and are counted by operation and
//! result in [`CtrlMetrics`]. Status is always answered.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use quorumkv_admin::RequestGate;
use quorumkv_common::rpc::{to_status, ErrorKind};
use quorumkv_proto::shardctrler as pb;
use quorumkv_proto::shardctrler::shard_ctrler_server::{ShardCtrler, ShardCtrlerServer};
use quorumkv_raft_core::RaftNode;
use tonic::{Request, Response, Status};

use crate::addr::canonical_addr;
use crate::admin::{CtrlMetrics, Op};
use crate::sm::ControllerSm;
use crate::{codec, Command, CtrlError, UNASSIGNED};

/// Serves `ShardCtrler` for one controller member.
pub struct CtrlerService {
    node: Arc<RaftNode<ControllerSm>>,
    num_shards: usize,
    gate: Arc<RequestGate>,
    metrics: Arc<CtrlMetrics>,
}

impl CtrlerService {
    /// `gate` admits requests until the member stops; `metrics` counts them.
    pub fn new(
        node: Arc<RaftNode<ControllerSm>>,
        gate: Arc<RequestGate>,
        metrics: Arc<CtrlMetrics>,
    ) -> Self {
        let num_shards = node.read_local(|sm| sm.controller().num_shards());
        CtrlerService {
            node,
            num_shards,
            gate,
            metrics,
        }
    }

    /// Runs one request of `op` inside the gate, counted and timed.
    async fn admitted<T>(
        &self,
        op: Op,
        f: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let result = match self.gate.enter() {
            Some(guard) => {
                let r = f.await;
                drop(guard);
                r
            }
            None => Err(to_status(
                ErrorKind::ShuttingDown,
                "this controller member is shutting down; use another member",
            )),
        };
        self.metrics.record(op, start, &result);
        result
    }

    /// The tonic server wrapper. Configurations grow with the shard count and the number of
    /// groups (64 shards and 100 groups of 3 servers are ~10 KiB); the default 4 MiB limit
    /// leaves plenty of room.
    pub fn into_server(self) -> ShardCtrlerServer<Self> {
        ShardCtrlerServer::new(self)
    }

    /// Validates, proposes and waits for the outcome of one change.
    async fn change(
        &self,
        mut cmd: pb::ControllerCommand,
    ) -> Result<Response<pb::ChangeReply>, Status> {
        // The log's clock (session expiry) comes from the proposer, never from the appliers.
        cmd.now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let parsed = codec::command_from_pb(cmd.clone()).map_err(error_status)?;
        precheck(&parsed, self.num_shards).map_err(error_status)?;
        let response = self
            .node
            .propose(prost::Message::encode_to_vec(&cmd))
            .await
            .map_err(Status::from)?;
        let result = codec::decode_result(&response)
            .map_err(|e| to_status(ErrorKind::Internal, format!("controller response: {e}")))?;
        match result {
            Ok(applied) => {
                tracing::info!(
                    num = applied.num,
                    client = cmd.client_id,
                    seq = cmd.seq,
                    "configuration changed"
                );
                Ok(Response::new(pb::ChangeReply { num: applied.num }))
            }
            Err(e) => Err(error_status(e)),
        }
    }
}

/// A controller refusal as a status (see `quorumkv_common::rpc`).
/// The message carries the reason only: the client's own error type names the kind
/// ("invalid argument: ..."), so the kind's name must not be part of the message too.
fn error_status(e: CtrlError) -> Status {
    match e {
        CtrlError::InvalidArgument(why) => to_status(ErrorKind::InvalidArgument, why),
        // Only a client that reuses an old sequence number sees this: a client bug, so the
        // request is refused rather than retried.
        e @ CtrlError::Superseded { .. } => to_status(ErrorKind::InvalidArgument, e.to_string()),
        e @ (CtrlError::CorruptSnapshot(_) | CtrlError::CannotStart(_)) => {
            to_status(ErrorKind::Internal, e.to_string())
        }
    }
}

/// The checks of `Controller::apply` that need no configuration.
fn precheck(cmd: &Command, num_shards: usize) -> Result<(), CtrlError> {
    let invalid = |s: String| Err(CtrlError::InvalidArgument(s));
    match cmd {
        Command::Join { groups, .. } => {
            if groups.is_empty() {
                return invalid("join names no groups".into());
            }
            let mut owner_of: BTreeMap<String, u64> = BTreeMap::new();
            for (gid, servers) in groups {
                if *gid == UNASSIGNED {
                    return invalid("join: gid 0 is reserved for unassigned shards".into());
                }
                if servers.is_empty() {
                    return invalid(format!("join: group {gid} lists no servers"));
                }
                for server in servers {
                    let key = canonical_addr(server).map_err(|why| {
                        CtrlError::InvalidArgument(format!(
                            "join: group {gid}: server address {server:?} {why}"
                        ))
                    })?;
                    if let Some(other) = owner_of.insert(key, *gid) {
                        return invalid(if other == *gid {
                            format!("join: group {gid} lists server {server:?} more than once")
                        } else {
                            format!(
                                "join: server {server:?} is listed for groups {other} and {gid}"
                            )
                        });
                    }
                }
            }
        }
        Command::Leave { gids, .. } => {
            if gids.is_empty() {
                return invalid("leave names no groups".into());
            }
            let mut seen = BTreeSet::new();
            for gid in gids {
                if *gid == UNASSIGNED {
                    return invalid("leave: gid 0 is reserved for unassigned shards".into());
                }
                if !seen.insert(gid) {
                    return invalid(format!("leave: group {gid} is listed more than once"));
                }
            }
        }
        Command::SetServers { gid, servers, .. } => {
            if *gid == UNASSIGNED {
                return invalid("set-servers: gid 0 is reserved for unassigned shards".into());
            }
            if servers.is_empty() {
                return invalid(format!("set-servers: group {gid} lists no servers"));
            }
            let mut seen = BTreeSet::new();
            for server in servers {
                let key = canonical_addr(server).map_err(|why| {
                    CtrlError::InvalidArgument(format!(
                        "set-servers: group {gid}: server address {server:?} {why}"
                    ))
                })?;
                if !seen.insert(key) {
                    return invalid(format!(
                        "set-servers: group {gid} lists server {server:?} more than once"
                    ));
                }
            }
        }
        Command::Move { shard, gid, .. } => {
            if usize::try_from(*shard).map_or(true, |s| s >= num_shards) {
                return invalid(format!(
                    "move: shard {shard} is out of range 0..{num_shards}"
                ));
            }
            if *gid == UNASSIGNED {
                return invalid(
                    "move: gid 0 is reserved; a shard cannot be moved to no group".into(),
                );
            }
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl ShardCtrler for CtrlerService {
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::ChangeReply>, Status> {
        let r = request.into_inner();
        let cmd = pb::ControllerCommand {
            client_id: r.client_id,
            seq: r.seq,
            now_ms: 0,
            op: Some(pb::controller_command::Op::Join(pb::JoinOp {
                groups: r.groups,
            })),
        };
        self.admitted(Op::Join, self.change(cmd)).await
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::ChangeReply>, Status> {
        let r = request.into_inner();
        let cmd = pb::ControllerCommand {
            client_id: r.client_id,
            seq: r.seq,
            now_ms: 0,
            op: Some(pb::controller_command::Op::Leave(pb::LeaveOp {
                gids: r.gids,
            })),
        };
        self.admitted(Op::Leave, self.change(cmd)).await
    }

    async fn r#move(
        &self,
        request: Request<pb::MoveRequest>,
    ) -> Result<Response<pb::ChangeReply>, Status> {
        let r = request.into_inner();
        let cmd = pb::ControllerCommand {
            client_id: r.client_id,
            seq: r.seq,
            now_ms: 0,
            op: Some(pb::controller_command::Op::Move(pb::MoveOp {
                shard: r.shard,
                gid: r.gid,
            })),
        };
        self.admitted(Op::Move, self.change(cmd)).await
    }

    async fn set_servers(
        &self,
        request: Request<pb::SetServersRequest>,
    ) -> Result<Response<pb::ChangeReply>, Status> {
        let r = request.into_inner();
        let cmd = pb::ControllerCommand {
            client_id: r.client_id,
            seq: r.seq,
            now_ms: 0,
            op: Some(pb::controller_command::Op::SetServers(pb::SetServersOp {
                gid: r.gid,
                servers: r.servers,
            })),
        };
        self.admitted(Op::SetServers, self.change(cmd)).await
    }

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryReply>, Status> {
        let num = request.into_inner().num;
        let query = async {
            let config = self
                .node
                .read(|sm| sm.controller().query(num).map(codec::config_to_pb))
                .await
                .map_err(Status::from)?
                .map_err(error_status)?;
            Ok(Response::new(pb::QueryReply {
                config: Some(config),
            }))
        };
        self.admitted(Op::Query, query).await
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let s = self.node.status();
        let latest_config = self.node.read_local(|sm| sm.controller().latest().num);
        Ok(Response::new(pb::StatusReply {
            id: s.id,
            role: s.role.to_string(),
            term: s.term,
            leader_id: s.leader_id.unwrap_or(0),
            leader_addr: s.leader_addr().unwrap_or_default().to_string(),
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            snapshot_index: s.snapshot_index,
            voters: s.voters.clone(),
            num_shards: self.num_shards as u64,
            latest_config,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RequestId;

    const ID: RequestId = RequestId { client: 1, seq: 1 };

    /// The client prefixes the kind ("invalid argument: "); the status must not as well.
    #[test]
    fn refusals_carry_the_reason_without_the_kind() {
        let s = error_status(CtrlError::InvalidArgument("group 1 is already in".into()));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(s.message(), "group 1 is already in");
    }

    #[test]
    fn precheck_refuses_stateless_mistakes() {
        let join = |groups: Vec<(u64, Vec<&str>)>| Command::Join {
            id: ID,
            groups: groups
                .into_iter()
                .map(|(g, s)| (g, s.into_iter().map(String::from).collect()))
                .collect(),
        };
        for bad in [
            join(vec![]),
            join(vec![(0, vec!["a:1"])]),
            join(vec![(1, vec![])]),
            join(vec![(1, vec!["a"])]),
            join(vec![(1, vec!["a:1", "A:1"])]),
            join(vec![(1, vec!["a:1"]), (2, vec!["a:1"])]),
            Command::Leave {
                id: ID,
                gids: vec![],
            },
            Command::Leave {
                id: ID,
                gids: vec![0],
            },
            Command::Leave {
                id: ID,
                gids: vec![3, 3],
            },
            Command::Move {
                id: ID,
                shard: 8,
                gid: 1,
            },
            Command::Move {
                id: ID,
                shard: 0,
                gid: 0,
            },
            Command::SetServers {
                id: ID,
                gid: 0,
                servers: vec!["a:1".into()],
            },
            Command::SetServers {
                id: ID,
                gid: 1,
                servers: vec![],
            },
            Command::SetServers {
                id: ID,
                gid: 1,
                servers: vec!["a:1".into(), "A:1".into()],
            },
            Command::SetServers {
                id: ID,
                gid: 1,
                servers: vec!["nohost".into()],
            },
        ] {
            assert!(precheck(&bad, 8).is_err(), "{bad:?} accepted");
        }
        assert!(precheck(&join(vec![(1, vec!["a:1", "b:1"]), (2, vec!["c:1"])]), 8).is_ok());
        assert!(precheck(
            &Command::Move {
                id: ID,
                shard: 7,
                gid: 9
            },
            8
        )
        .is_ok());
    }
}
