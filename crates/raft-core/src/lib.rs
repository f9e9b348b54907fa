//! # QuorumKV raft core
//!
//! A library that runs one member of a Raft group inside a process and replicates any
//! deterministic [`StateMachine`] with it. The shard controller and the shardkv replica groups
//! are both state machines on top of this crate; nothing here knows about shards or keys.
//!
//! ## How the pieces fit
//!
//! ```text
//!  RaftNode (async handle) ──requests──▶ Mailbox ──▶ driver thread ──owns──▶ RawNode<LogStore>
//!        ▲                                 ▲             │    │                     │
//!        │ replies (oneshot), Status (watch)│             │    └─ apply ─▶ StateMachine
//!        │                                 │             ▼
//!  RaftService (gRPC server) ─peer msgs────┘        Transport ──gRPC/mTLS──▶ peers
//! ```
//!
//! - [`RaftNode`] is the API: [`RaftNode::propose`] resolves with the state machine's response
//!   once the command is applied here; [`RaftNode::read`] is a linearizable read through
//!   ReadIndex (no log write); membership changes go through ConfChangeV2 (learner, promote,
//!   remove, replace with joint consensus); [`RaftNode::transfer_leader`], and
//!   [`RaftNode::hand_off_leadership`] for a leader about to stop; [`Status`].
//! - The driver (`driver` module) is the only code that touches raft-rs's `RawNode`, following
//!   the Ready steps in order; see its docs for the steps and for how replies are matched to
//!   proposals by id, never by FIFO position.
//! - [`storage::LogStore`] keeps the log, hard state and the base (snapshot metadata) in
//!   tikv's `raft-engine` (one checksummed record and one `fdatasync` per durable write) and
//!   snapshots in checksummed record files; the storage module docs state the durability rule.
//!   A data directory of the earlier sled format is upgraded in place on open.
//! - [`transport`]: the [`Transport`] trait, the mutual-TLS gRPC implementation and the server
//!   side. Tests wrap a transport to inject partitions, drops and delays. [`RaftAdminService`]
//!   serves the membership calls over gRPC (`RaftAdmin` in `proto/raft.proto`) for the CLIs.
//!   A leader that applied its own removal steps down at once and tells the most caught-up
//!   remaining voter to campaign (raft-rs 0.7 would keep it leading, and panic on its next
//!   commit: its own progress is gone).
//! - [`metrics`]: each member's counters and latency histograms ([`RaftMetrics`], reached
//!   through the mailbox or [`RaftNode::metrics`]): proposals and ReadIndex requests with their
//!   latency, messages sent/dropped per peer, snapshots, and the driver's liveness heartbeat.
//!   Relaxed atomics only; no global registry and no exporter (servers render them).
//!
//! ## Invariants
//! - Persist before acknowledging: entries and hard state are durable (one raft-engine write
//!   with `fdatasync`) before any vote or append response of the same Ready leaves, and before
//!   anything is applied. The leader may send its appends before its own sync (raft-rs
//!   allows it), but counts itself in a quorum only after it.
//! - Apply in order, exactly once per process lifetime: the state machine sees committed
//!   entries in index order. After a restart an in-memory state machine is restored from the
//!   latest snapshot and the committed entries after it are applied again to that restored
//!   state, which rebuilds the exact pre-crash state: the snapshot data and the index it
//!   reflects are written in one atomic step, so nothing is lost and nothing is applied twice to
//!   the same state. A state machine with its own store reports the index its store reflects
//!   ([`StateMachine::persisted_index`]); it is restored from the snapshot only if older than
//!   it, and receives only the entries after its own index. The log is compacted only behind
//!   an index the store was synced past, so whatever suffix such a store lost in a crash is
//!   re-applied. No snapshot is taken while applied is below the store's index.
//! - A read is linearizable unless the caller explicitly asks for [`RaftNode::read_local`].
//! - A snapshot's metadata carries the ConfState at its index; installing one is one atomic
//!   write (the received file first, synced; then one raft-engine write switching base, log
//!   and hard state).
//!
//! ## Deliberately left out
//! - Incremental snapshots: a snapshot is the state machine's whole state, written by a
//!   background job from a point-in-time view (the driver keeps ticking meanwhile) and
//!   streamed in bounded chunks.
//! - Several groups per process sharing one raft-engine; each member has its own data
//!   directory.
//! - Metric export and health endpoints: the servers do that (`quorumkv-admin`).

mod config;
mod driver;
mod error;
mod logger;
mod mailbox;
pub mod metrics;
mod node;
mod state_machine;
mod status;
pub mod storage;
pub mod transport;

pub use config::{Bootstrap, NodeConfig};
pub use error::{Cause, ErrorKindLabel, RaftError, Result};
pub use mailbox::{mailbox, Delivery, Inbox, Mailbox};
pub use metrics::{Histogram, HistogramSnapshot, RaftMetrics};
pub use node::RaftNode;
pub use raft::eraftpb::ConfState;
pub use state_machine::{
    read_all, BytesSource, Durability, SmError, SnapshotChunks, SnapshotSource, StateMachine,
    StoreSyncer,
};
pub use status::{PeerProgress, Role, Status};
pub use transport::admin_service::RaftAdminService;
pub use transport::grpc::{Dialer, GrpcTransport};
pub use transport::service::RaftService;
pub use transport::Transport;
