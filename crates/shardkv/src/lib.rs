//! # ShardKV replica groups
//!
//! A replica group is a Raft group (normally three `shardkv-server` members) that serves the
//! shards the shard controller's current configuration assigns to it, and moves shards to and
//! from other groups when the configuration changes.
//!
//! - [`state::ShardKvState`] is the deterministic state machine: the configuration the group
//!   has reached, and each shard it holds with its data, its exactly-once sessions and its
//!   migration state ([`shard::ShardState`]: `Serving`, `Pulling`, `Collecting`,
//!   `HandingOff`). Its module docs state the invariants.
//! - [`store::Store`] keeps the shards' keys and values (and a copy of everything else) in a
//!   sled tree in the member's data directory; each run of applied commands writes its effects
//!   and its last log index there as one unit, so a restart re-applies only the log after it.
//! - [`service::KvService`] is the gRPC edge: `Get` is a linearizable read through ReadIndex
//!   (no log write); `Put`/`Append`/`Delete` are proposed through Raft; `PullShard` and
//!   `DeleteShard` serve other groups; `ExportShard` streams an operator's backup of one shard
//!   from a point-in-time store view taken after a ReadIndex
//!   ([`state::ShardKvState::export_shard`]).
//! - [`migrate`] is the leader's background task: it polls the controller every 100 ms and
//!   proposes configurations strictly one at a time, pulls incoming shards from their previous
//!   owners in bounded chunks (each installed through the log), then has the previous owner
//!   delete its copy (garbage collection) and marks the shard fully owned.
//! - [`node::KvMember`] wires one member (Raft node, TLS server, migration task, admin
//!   endpoint) and stops it gracefully (refuse new requests, hand leadership over, drain).
//! - [`metrics`] counts client requests by operation and result, and migration progress;
//!   [`admin::KvAdmin`] shows them, the state of each shard and the Raft metrics on the
//!   admin port (`quorumkv-admin`).
//! - [`stale_reads`] is a deliberately broken read path for tests only (follower reads
//!   without ReadIndex from a lagging follower): it shows that `shardkv-client check` catches
//!   stale reads.
//!
//! A shard is served from the moment it has fully arrived, even while other shards of the same
//! configuration are still missing; shards that do not move keep being served throughout.
//!
//! Snapshots (for log compaction and for members that fell behind) are still whole-state
//! copies, built on the Raft driver's thread: a very large group pauses while one is taken.

pub mod admin;
pub mod metrics;
pub mod migrate;
pub mod node;
pub mod service;
pub mod shard;
pub mod stale_reads;
pub mod state;
pub mod store;

pub use node::{KvMember, KvMemberOptions, StartError};
pub use stale_reads::ReadMode;
pub use state::{ShardKvState, MAX_KEY_BYTES, MAX_VALUE_BYTES};
