//! The receiving side of the raft transport: a tonic service that steps incoming messages into
//! the local node's mailbox, and receives snapshots into files.
//!
//! A snapshot arrives as a stream of chunks: the first carries the `MsgSnapshot` (whose data
//! names the sender's file), the rest the file's bytes. They are written to
//! `snapshots/incoming-….partial` as they come (memory stays bounded by one chunk), then the
//! file is fsynced, checked record by record, renamed to its final `incoming-…` name with
//! its directory fsynced, and only then is the message, now naming the local file, handed to
//! Raft. A transfer that breaks off leaves nothing but a partial file, which is removed.

use std::path::{Path, PathBuf};

use prost::Message as _;
use protobuf::Message as _;
use quorumkv_proto::raft::raft_transport_server::{RaftTransport, RaftTransportServer};
use quorumkv_proto::raft::{MessageBatch, SendAck, SnapshotAck, SnapshotChunk};
use quorumkv_proto::storage::SnapshotDescriptor;
use raft::eraftpb::{Message, MessageType};
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use crate::mailbox::{Delivery, Mailbox};
use crate::storage::snapshot::{sync_dir, SnapshotFileReader, INCOMING_PREFIX};

/// Largest gRPC message the raft service accepts: batches are split by the sender well below
/// this, and snapshots arrive in 1 MiB chunks.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Serves `RaftTransport` for one group member.
pub struct RaftService {
    group_id: u64,
    mailbox: Mailbox,
    /// The member's snapshot directory (`DATA_DIR/snapshots`).
    snapshot_dir: PathBuf,
}

impl RaftService {
    pub fn new(group_id: u64, mailbox: Mailbox, snapshot_dir: PathBuf) -> Self {
        RaftService {
            group_id,
            mailbox,
            snapshot_dir,
        }
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
        let (index, term) = {
            let m = msg.get_snapshot().get_metadata();
            (m.index, m.term)
        };
        let tag = format!(
            "{INCOMING_PREFIX}{index:020}-{term:020}-{:016x}",
            rand::random::<u64>()
        );
        let partial = self.snapshot_dir.join(format!("{tag}.partial"));
        let received = receive_file(&partial, first, &mut stream, self.group_id).await;
        let size = match received {
            Ok(size) => size,
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
        };
        let name = format!("{tag}{}", crate::storage::snapshot::SUFFIX);
        let done = self.snapshot_dir.join(&name);
        if let Err(e) = finish_file(&partial, &done, &self.snapshot_dir, index, term).await {
            let _ = tokio::fs::remove_file(&partial).await;
            let _ = tokio::fs::remove_file(&done).await;
            return Err(e);
        }
        msg.mut_snapshot().set_data(
            SnapshotDescriptor { file: name, size }
                .encode_to_vec()
                .into(),
        );
        if self.mailbox.deliver(msg).is_err() {
            let _ = tokio::fs::remove_file(&done).await;
            return Err(Status::unavailable(
                "member is overloaded or stopped; retry later",
            ));
        }
        Ok(Response::new(SnapshotAck {}))
    }
}

/// Writes the stream's data to `path`, checking the announced length. Returns the size.
async fn receive_file(
    path: &Path,
    first: SnapshotChunk,
    stream: &mut Streaming<SnapshotChunk>,
    group_id: u64,
) -> Result<u64, Status> {
    let io = |e: std::io::Error| Status::internal(format!("{}: {e}", path.display()));
    let total = first.total_len;
    let mut file = tokio::io::BufWriter::with_capacity(
        1 << 20,
        tokio::fs::File::create(path).await.map_err(io)?,
    );
    let mut written = first.data.len() as u64;
    if written > total {
        return Err(Status::invalid_argument("snapshot longer than announced"));
    }
    file.write_all(&first.data).await.map_err(io)?;
    while let Some(chunk) = stream.message().await? {
        if chunk.group_id != group_id {
            return Err(Status::failed_precondition("snapshot chunks of two groups"));
        }
        written += chunk.data.len() as u64;
        if written > total {
            return Err(Status::invalid_argument("snapshot longer than announced"));
        }
        file.write_all(&chunk.data).await.map_err(io)?;
    }
    if written != total {
        return Err(Status::invalid_argument(format!(
            "snapshot stream ended after {written} of {total} bytes"
        )));
    }
    file.flush().await.map_err(io)?;
    file.into_inner().sync_all().await.map_err(io)?;
    Ok(total)
}

/// Checks the received file record by record (it must be the snapshot the message names),
/// then renames it into place and makes the name durable.
async fn finish_file(
    partial: &Path,
    done: &Path,
    dir: &Path,
    index: u64,
    term: u64,
) -> Result<(), Status> {
    let (partial, done, dir) = (partial.to_path_buf(), done.to_path_buf(), dir.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let header = SnapshotFileReader::open(&partial)
            .and_then(|r| r.verify())
            .map_err(|e| Status::invalid_argument(format!("received snapshot: {}", e.chain())))?;
        if (header.index, header.term) != (index, term) {
            return Err(Status::invalid_argument(format!(
                "received snapshot holds {}/{}, the message says {index}/{term}",
                header.index, header.term
            )));
        }
        std::fs::rename(&partial, &done)
            .map_err(|e| Status::internal(format!("{}: {e}", done.display())))?;
        sync_dir(&dir).map_err(|e| Status::internal(e.chain()))
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
}
