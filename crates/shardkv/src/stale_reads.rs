//! A deliberately broken read path, for tests only: it proves that a linearizability check
//! (`shardkv-client check`) can fail, by making a group serve stale reads for real.
//!
//! [`ReadMode::UnsafeFollowerReadsForTesting`] is "follower reads" done wrong, a classic:
//! - the leader offloads every `Get` to one follower, the *read follower* (the voter with the
//!   highest id other than the leader), by answering `NotLeader` with that follower as the
//!   hint, which clients follow;
//! - a member that does not lead answers a `Get` from its own applied state at once: no
//!   ReadIndex, no check that it has seen what the leader acknowledged;
//! - the leader holds back its log appends and heartbeats to the read follower by
//!   [`READ_FOLLOWER_LAG`] (a slow link), so that follower always trails the acknowledged
//!   writes by that much. The leader commits with the other voters meanwhile.
//!
//! A client that writes a key and then reads it back is thus served the value of a fraction of
//! a second earlier, every time, which no linearizable store may do. Everything else (writes,
//! migrations, membership) works as usual. The only way in is `shardkv-server`'s hidden flag
//! `--unsafe-stale-reads-for-testing`; never use it for data you care about.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quorumkv_admin::RequestGate;
use quorumkv_common::rpc::{to_status, ErrorKind};
use quorumkv_proto::shardkv as pb;
use quorumkv_proto::shardkv::shard_kv_server::{ShardKv, ShardKvServer};
use quorumkv_raft_core::{GrpcTransport, RaftError, RaftNode, Status as RaftStatus, Transport};
use raft::eraftpb::{Message, MessageType};
use tonic::{Request, Response, Status};

use crate::metrics::{KvMetrics, Op};
use crate::service::{refusal_status, KvService};
use crate::state::ShardKvState;

/// How far the read follower trails the leader in [`ReadMode::UnsafeFollowerReadsForTesting`]:
/// well above the time a client takes to write and read back, well below an election timeout
/// (heartbeats still arrive regularly, just late).
pub const READ_FOLLOWER_LAG: Duration = Duration::from_millis(400);

/// How a member serves `Get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// Linearizable: on the leader, through ReadIndex (the only mode for real use).
    #[default]
    ReadIndex,
    /// Stale reads on purpose, to test that checks catch them (see the module docs).
    UnsafeFollowerReadsForTesting,
}

/// The read follower of a group as its leader `status` sees it: the voter with the highest id
/// other than the leader; `None` in a group of one.
fn read_follower(status: &RaftStatus) -> Option<u64> {
    status
        .voters
        .iter()
        .copied()
        .filter(|id| *id != status.id)
        .max()
}

/// The `ShardKv` service with the unsafe read path; everything but `Get` is [`KvService`]'s.
pub struct StaleReadsService {
    inner: KvService,
    node: Arc<RaftNode<ShardKvState>>,
    gate: Arc<RequestGate>,
    metrics: Arc<KvMetrics>,
}

impl StaleReadsService {
    pub fn new(
        node: Arc<RaftNode<ShardKvState>>,
        gate: Arc<RequestGate>,
        metrics: Arc<KvMetrics>,
    ) -> Self {
        StaleReadsService {
            inner: KvService::new(node.clone(), gate.clone(), metrics.clone()),
            node,
            gate,
            metrics,
        }
    }

    pub fn into_server(self) -> ShardKvServer<Self> {
        let limit = quorumkv_shardkv_client::MAX_MESSAGE_BYTES;
        ShardKvServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    fn serve_get(&self, req: pb::GetRequest) -> Result<Response<pb::GetReply>, Status> {
        let Some(_inside) = self.gate.enter() else {
            return Err(to_status(
                ErrorKind::ShuttingDown,
                "this member is shutting down; use another member of the group",
            ));
        };
        let status = self.node.status();
        if status.is_leader() {
            if let Some(follower) = read_follower(&status) {
                return Err(Status::from(RaftError::NotLeader {
                    leader_id: Some(follower),
                    leader_addr: status.members.get(&follower).cloned(),
                }));
            }
        }
        let found = self
            .node
            .read_local(|sm| sm.get(&req.key))
            .map_err(|e| to_status(ErrorKind::Internal, e.to_string()))?
            .map_err(refusal_status)?;
        Ok(Response::new(match found {
            Some(value) => pb::GetReply { found: true, value },
            None => pb::GetReply {
                found: false,
                value: Bytes::new(),
            },
        }))
    }
}

#[tonic::async_trait]
impl ShardKv for StaleReadsService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetReply>, Status> {
        let start = std::time::Instant::now();
        let result = self.serve_get(req.into_inner());
        self.metrics.record(Op::Get, start, &result);
        result
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::WriteReply>, Status> {
        self.inner.put(req).await
    }

    async fn append(
        &self,
        req: Request<pb::PutRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        self.inner.append(req).await
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        self.inner.delete(req).await
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        self.inner.status(req).await
    }

    async fn pull_shard(
        &self,
        req: Request<pb::PullShardRequest>,
    ) -> Result<Response<pb::PullShardReply>, Status> {
        self.inner.pull_shard(req).await
    }

    async fn delete_shard(
        &self,
        req: Request<pb::DeleteShardRequest>,
    ) -> Result<Response<pb::DeleteShardReply>, Status> {
        self.inner.delete_shard(req).await
    }

    type ExportShardStream = tonic::codegen::BoxStream<pb::ExportShardChunk>;

    async fn export_shard(
        &self,
        req: Request<pb::ExportShardRequest>,
    ) -> Result<Response<Self::ExportShardStream>, Status> {
        self.inner.export_shard(req).await
    }
}

/// A Raft transport that delivers what a leader sends to its read follower (appends,
/// heartbeats, snapshots) [`READ_FOLLOWER_LAG`] late, in order; everything else at once.
/// Only leaders send those messages, so on a follower it changes nothing.
pub struct LaggingTransport {
    inner: Arc<GrpcTransport>,
    /// The read follower when this member leads: the highest other member id.
    follower: Option<u64>,
    /// To the thread that sends held-back messages once they are due.
    held: mpsc::Sender<(Instant, Vec<Message>)>,
}

impl LaggingTransport {
    /// Wraps member `id`'s transport; `members` are the group's members at start.
    pub fn new(inner: GrpcTransport, id: u64, members: &[(u64, String)]) -> Self {
        let inner = Arc::new(inner);
        let (held, due) = mpsc::channel::<(Instant, Vec<Message>)>();
        let sender = inner.clone();
        // Constant delay, one queue: messages leave in the order they came. The thread ends
        // when the transport is dropped.
        std::thread::Builder::new()
            .name("stale-reads-lag".into())
            .spawn(move || {
                while let Ok((at, msgs)) = due.recv() {
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    sender.send(msgs);
                }
            })
            .expect("spawn a thread");
        LaggingTransport {
            inner,
            follower: members.iter().map(|(m, _)| *m).filter(|m| *m != id).max(),
            held,
        }
    }
}

impl Transport for LaggingTransport {
    fn send(&self, msgs: Vec<Message>) {
        let (late, now): (Vec<Message>, Vec<Message>) = msgs.into_iter().partition(|m| {
            Some(m.to) == self.follower
                && matches!(
                    m.get_msg_type(),
                    MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
                )
        });
        if !late.is_empty() {
            let _ = self.held.send((Instant::now() + READ_FOLLOWER_LAG, late));
        }
        if !now.is_empty() {
            self.inner.send(now);
        }
    }

    fn set_members(&self, members: &BTreeMap<u64, String>) {
        self.inner.set_members(members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_follower_is_the_highest_other_voter() {
        let status = |id| RaftStatus {
            id,
            voters: vec![1, 2, 3],
            ..RaftStatus::default()
        };
        assert_eq!(read_follower(&status(1)), Some(3));
        assert_eq!(read_follower(&status(3)), Some(2));
        let alone = RaftStatus {
            id: 1,
            voters: vec![1],
            ..RaftStatus::default()
        };
        assert_eq!(read_follower(&alone), None);
    }
}
