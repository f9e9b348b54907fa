//! The receiving side of the raft transport: a tonic service that steps incoming messages into
//! the local node's mailbox.

use bytes::BytesMut;
use protobuf::Message as _;
use quorumkv_proto::raft::raft_transport_server::{RaftTransport, RaftTransportServer};
use quorumkv_proto::raft::{MessageBatch, SendAck, SnapshotAck, SnapshotChunk};
use raft::eraftpb::{Message, MessageType};
use tonic::{Request, Response, Status, Streaming};

use crate::mailbox::{Delivery, Mailbox};

/// Largest gRPC message the raft service accepts: batches are split by the sender well below
/// this, and snapshots arrive in 1 MiB chunks.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Serves `RaftTransport` for one group member.
pub struct RaftService {
    group_id: u64,
    mailbox: Mailbox,
}

impl RaftService {
    pub fn new(group_id: u64, mailbox: Mailbox) -> Self {
        RaftService { group_id, mailbox }
    }

    /// The tonic server wrapper, with the message size limit raised for append batches.
    pub fn into_server(self) -> RaftTransportServer<Self> {
        RaftTransportServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn check_group(&self, group_id: u64) -> Result<(), Status> {
        if group_id != self.group_id {
            return Err(Status::failed_precondition(format!(
                "this member serves raft group {}, not {group_id}",
                self.group_id
            )));
        }
        Ok(())
    }
}

fn parse(bytes: &[u8]) -> Result<Message, Status> {
    Message::parse_from_bytes(bytes)
        .map_err(|e| Status::invalid_argument(format!("malformed raft message: {e}")))
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn send(
        &self,
        request: Request<Streaming<MessageBatch>>,
    ) -> Result<Response<SendAck>, Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            self.check_group(batch.group_id)?;
            for m in &batch.messages {
                let msg = parse(m)?;
                if msg.get_msg_type() == MessageType::MsgSnapshot {
                    return Err(Status::invalid_argument(
                        "snapshots must use InstallSnapshot",
                    ));
                }
                // A full inbox drops the message (Raft retransmits). A stopped member ends the
                // stream, so the peer reconnects to whoever serves this address next.
                if self.mailbox.deliver(msg) == Err(Delivery::Stopped) {
                    return Err(Status::unavailable("raft member stopped"));
                }
            }
        }
        Ok(Response::new(SendAck {}))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotAck>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        self.check_group(first.group_id)?;
        let mut msg = parse(&first.header)?;
        if msg.get_msg_type() != MessageType::MsgSnapshot {
            return Err(Status::invalid_argument(
                "first chunk is not a snapshot message",
            ));
        }
        let total = first.total_len as usize;
        let mut data = BytesMut::with_capacity(total.min(1 << 30));
        data.extend_from_slice(&first.data);
        while let Some(chunk) = stream.message().await? {
            self.check_group(chunk.group_id)?;
            if data.len() + chunk.data.len() > total {
                return Err(Status::invalid_argument("snapshot longer than announced"));
            }
            data.extend_from_slice(&chunk.data);
        }
        if data.len() != total {
            return Err(Status::invalid_argument(format!(
                "snapshot stream ended after {} of {total} bytes",
                data.len()
            )));
        }
        msg.mut_snapshot().set_data(data.freeze());
        if self.mailbox.deliver(msg).is_err() {
            return Err(Status::unavailable(
                "member is overloaded or stopped; retry later",
            ));
        }
        Ok(Response::new(SnapshotAck {}))
    }
}
