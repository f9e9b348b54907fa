//! The production transport: mutual-TLS gRPC, one long-lived client stream per peer.
//!
//! For each peer a task owns a bounded queue. The driver's `send` only `try_send`s into it; a
//! full queue (slow peer) or a broken connection drops messages and reports the peer
//! unreachable, so raft-rs slows down replication to it instead of the driver blocking. The
//! task connects lazily when it has something to send, resolving the peer's DNS name anew on
//! every connect, so a peer that came back with another IP is found again. Snapshots go over a
//! separate streaming call, read from their file in 1 MiB chunks as the stream has room (so
//! memory stays bounded by the chunk size, whatever the snapshot's size), and their outcome is
//! reported to raft-rs.
//!
//! Messages handed to a peer's stream and messages discarded are counted per peer in the
//! member's [`crate::RaftMetrics`] (one relaxed add per batch), snapshot transfers too.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message as _;
use protobuf::Message as _;
use quorumkv_common::{HostPort, TlsMaterial};
use quorumkv_proto::raft::raft_transport_client::RaftTransportClient;
use quorumkv_proto::raft::{MessageBatch, SnapshotChunk};
use quorumkv_proto::storage::SnapshotDescriptor;
use raft::eraftpb::{Message, MessageType};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use super::service::MAX_MESSAGE_BYTES;
use super::Transport;
use crate::mailbox::Mailbox;
use crate::metrics::PeerMetrics;

/// Batches queued per peer before messages to it are dropped.
const PEER_QUEUE: usize = 1024;
/// A batch is split into gRPC messages of at most this many bytes.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Snapshot chunk size.
const SNAPSHOT_CHUNK: usize = crate::storage::snapshot::CHUNK_BYTES;

/// How peers are dialled: TLS material and timeouts.
#[derive(Clone)]
pub struct Dialer {
    tls: TlsMaterial,
    connect_timeout: Duration,
}

impl Dialer {
    pub fn new(tls: TlsMaterial) -> Self {
        Dialer {
            tls,
            connect_timeout: Duration::from_secs(2),
        }
    }

    /// Connects to `addr` (`host:port`), verifying that its certificate names `host`.
    pub async fn connect(&self, addr: &str) -> Result<Channel, String> {
        let hp = HostPort::parse(addr).map_err(|e| e.to_string())?;
        Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| e.to_string())?
            .tls_config(self.tls.client_config(hp.tls_name()))
            .map_err(|e| e.to_string())?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("connect {addr}: {e}"))
    }
}

struct Peer {
    addr: String,
    queue: mpsc::Sender<Vec<Message>>,
    task: JoinHandle<()>,
    metrics: Arc<PeerMetrics>,
}

/// Mutual-TLS gRPC transport for one member of one group.
pub struct GrpcTransport {
    self_id: u64,
    group_id: u64,
    dialer: Dialer,
    /// Where the snapshot files that raft-rs's snapshot messages name are.
    snapshot_dir: PathBuf,
    mailbox: Mailbox,
    runtime: tokio::runtime::Handle,
    peers: Mutex<HashMap<u64, Peer>>,
}

impl GrpcTransport {
    /// `mailbox` is the local node's, for failure reports; `runtime` runs the peer tasks;
    /// `snapshot_dir` is the member's snapshot directory (`DATA_DIR/snapshots`).
    pub fn new(
        self_id: u64,
        group_id: u64,
        dialer: Dialer,
        mailbox: Mailbox,
        runtime: tokio::runtime::Handle,
        snapshot_dir: PathBuf,
    ) -> Self {
        GrpcTransport {
            self_id,
            group_id,
            dialer,
            snapshot_dir,
            mailbox,
            runtime,
            peers: Mutex::new(HashMap::new()),
        }
    }

    fn spawn_snapshot(&self, addr: String, msg: Message) {
        let dialer = self.dialer.clone();
        let mailbox = self.mailbox.clone();
        let group_id = self.group_id;
        let dir = self.snapshot_dir.clone();
        self.runtime.spawn(async move {
            let to = msg.to;
            let result = send_snapshot(&dialer, &addr, group_id, &dir, msg).await;
            let metrics = mailbox.metrics();
            match &result {
                Ok(()) => metrics.snapshots_sent.fetch_add(1, Relaxed),
                Err(e) => {
                    tracing::warn!(to, error = %e, "snapshot transfer failed");
                    metrics.snapshots_send_failed.fetch_add(1, Relaxed)
                }
            };
            mailbox.report_snapshot(to, result.is_ok());
        });
    }
}

impl Drop for GrpcTransport {
    fn drop(&mut self) {
        for (_, p) in self.peers.lock().drain() {
            p.task.abort();
        }
    }
}

impl Transport for GrpcTransport {
    fn send(&self, msgs: Vec<Message>) {
        let mut by_peer: BTreeMap<u64, Vec<Message>> = BTreeMap::new();
        for m in msgs {
            by_peer.entry(m.to).or_default().push(m);
        }
        let peers = self.peers.lock();
        for (to, msgs) in by_peer {
            let Some(peer) = peers.get(&to) else {
                tracing::debug!(to, "no address for peer");
                let dropped = &self.mailbox.metrics().peer(to).dropped;
                dropped.fetch_add(msgs.len() as u64, Relaxed);
                self.mailbox.report_unreachable(to);
                continue;
            };
            let (snaps, msgs): (Vec<_>, Vec<_>) = msgs
                .into_iter()
                .partition(|m| m.get_msg_type() == MessageType::MsgSnapshot);
            for s in snaps {
                self.spawn_snapshot(peer.addr.clone(), s);
            }
            if msgs.is_empty() {
                continue;
            }
            let n = msgs.len() as u64;
            if peer.queue.try_send(msgs).is_err() {
                peer.metrics.dropped.fetch_add(n, Relaxed);
                self.mailbox.report_unreachable(to);
            }
        }
    }

    fn set_members(&self, members: &BTreeMap<u64, String>) {
        let mut peers = self.peers.lock();
        peers.retain(|id, p| {
            let keep = members.get(id) == Some(&p.addr);
            if !keep {
                p.task.abort();
            }
            keep
        });
        for (id, addr) in members {
            if *id == self.self_id || peers.contains_key(id) {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            let metrics = self.mailbox.metrics().peer(*id);
            let task = self.runtime.spawn(run_peer(
                *id,
                addr.clone(),
                self.group_id,
                self.dialer.clone(),
                rx,
                self.mailbox.clone(),
                metrics.clone(),
            ));
            peers.insert(
                *id,
                Peer {
                    addr: addr.clone(),
                    queue: tx,
                    task,
                    metrics,
                },
            );
        }
    }
}

/// Encodes messages into batches of at most `MAX_BATCH_BYTES`.
fn encode_batches(group_id: u64, msgs: Vec<Message>) -> Vec<MessageBatch> {
    let mut out = Vec::new();
    let mut cur = MessageBatch {
        group_id,
        messages: Vec::new(),
    };
    let mut size = 0;
    for m in msgs {
        let bytes = match m.write_to_bytes() {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode raft message");
                continue;
            }
        };
        if size + bytes.len() > MAX_BATCH_BYTES && !cur.messages.is_empty() {
            out.push(std::mem::replace(
                &mut cur,
                MessageBatch {
                    group_id,
                    messages: Vec::new(),
                },
            ));
            size = 0;
        }
        size += bytes.len();
        cur.messages.push(bytes);
    }
    if !cur.messages.is_empty() {
        out.push(cur);
    }
    out
}

async fn run_peer(
    to: u64,
    addr: String,
    group_id: u64,
    dialer: Dialer,
    mut queue: mpsc::Receiver<Vec<Message>>,
    mailbox: Mailbox,
    metrics: Arc<PeerMetrics>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        // Connect lazily, when there is something to send.
        let Some(first) = queue.recv().await else {
            return;
        };
        let channel = match dialer.connect(&addr).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(to, error = %e, "peer unreachable");
                mailbox.report_unreachable(to);
                // What queued up meanwhile is stale; raft-rs resends what matters.
                let mut dropped = first.len() as u64;
                while let Ok(m) = queue.try_recv() {
                    dropped += m.len() as u64;
                }
                metrics.dropped.fetch_add(dropped, Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let mut client = RaftTransportClient::new(channel)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let (stream_tx, stream_rx) = mpsc::channel::<MessageBatch>(64);
        let mut call = tokio::spawn(async move {
            client
                .send(tokio_stream::wrappers::ReceiverStream::new(stream_rx))
                .await
        });
        let mut pending = Some(first);
        let ended = loop {
            let msgs = match pending.take() {
                Some(m) => m,
                None => tokio::select! {
                    m = queue.recv() => match m {
                        Some(m) => m,
                        None => { call.abort(); return; }
                    },
                    r = &mut call => break r,
                },
            };
            let mut broken = false;
            for batch in encode_batches(group_id, msgs) {
                let n = batch.messages.len() as u64;
                if stream_tx.send(batch).await.is_err() {
                    metrics.dropped.fetch_add(n, Relaxed);
                    broken = true;
                    break;
                }
                metrics.sent.fetch_add(n, Relaxed);
            }
            if broken {
                break (&mut call).await;
            }
        };
        match ended {
            Ok(Err(status)) => tracing::debug!(to, %status, "raft stream to peer ended"),
            Ok(Ok(_)) => {}
            Err(e) if e.is_cancelled() => return,
            Err(e) => tracing::warn!(to, error = %e, "raft stream task failed"),
        }
        mailbox.report_unreachable(to);
    }
}

/// Streams the snapshot file a `MsgSnapshot` names to `addr`: the message (still naming the
/// file by its name here) on the first chunk, then the file's bytes, read as the stream has
/// room.
async fn send_snapshot(
    dialer: &Dialer,
    addr: &str,
    group_id: u64,
    dir: &std::path::Path,
    msg: Message,
) -> Result<(), String> {
    let desc = SnapshotDescriptor::decode(msg.get_snapshot().get_data())
        .map_err(|e| format!("snapshot message without a file: {e}"))?;
    let path = dir.join(&desc.file);
    // Opened before the transfer starts: the file stays readable even if a newer snapshot
    // replaces (and removes) it meanwhile.
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let total_len = file
        .metadata()
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    let header = Bytes::from(msg.write_to_bytes().map_err(|e| e.to_string())?);
    let chunks = futures::stream::unfold(
        (file, Some(header), total_len),
        move |(mut file, header, left)| async move {
            if left == 0 && header.is_none() {
                return None;
            }
            let mut buf = vec![0u8; SNAPSHOT_CHUNK.min(left as usize)];
            if let Err(e) = file.read_exact(&mut buf).await {
                // Ending the stream early makes the receiver refuse the transfer.
                tracing::warn!(error = %e, "reading a snapshot file to send failed");
                return None;
            }
            let first = header.is_some();
            let chunk = SnapshotChunk {
                group_id,
                header: header.unwrap_or_default(),
                data: Bytes::from(buf),
                total_len: if first { total_len } else { 0 },
            };
            let left = left - chunk.data.len() as u64;
            Some((chunk, (file, None, left)))
        },
    );
    let channel = dialer.connect(addr).await?;
    let mut client = RaftTransportClient::new(channel)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    // Generous, size-proportional bound: a stuck transfer must end so raft-rs can retry.
    let limit = Duration::from_secs(30) + Duration::from_millis(total_len / 1000);
    tokio::time::timeout(limit, client.install_snapshot(chunks))
        .await
        .map_err(|_| format!("snapshot to {addr} timed out after {limit:?}"))?
        .map_err(|s| format!("snapshot to {addr}: {s}"))?;
    Ok(())
}
