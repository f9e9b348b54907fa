//! The shard controller: a deterministic core, replicated by a Raft group and served over gRPC.
//!
//! QuorumKV splits its key space into a fixed number of shards (by default
//! [`DEFAULT_SHARDS`]) and serves each shard from one replica group, a Raft group identified by
//! a non-zero gid. The controller decides which group owns which shard. Its decisions form a
//! numbered sequence of [`Config`]s: configuration 0 has no groups and every shard
//! [`UNASSIGNED`]; every command that takes effect appends exactly one new configuration.
//! KV servers poll the sequence and migrate shards from one configuration to the next, so the
//! controller's job is to keep that sequence stable, balanced, and cheap to follow.
//!
//! # How the pieces fit
//!
//! - [`Controller`] is the state machine the Raft layer ([`sm`]) drives. Committed [`Command`]s
//!   (`Join`, `Leave`, `Move`, `SetServers`) go in through [`Controller::apply`], in log order, on every
//!   replica; [`Controller::query`] reads a configuration by number. [`Controller::snapshot`]
//!   and [`Controller::restore`] move the whole state as plain data.
//! - `Join` and `Leave` rebalance through [`rebalance()`], which moves the fewest shards any
//!   balanced outcome allows; its module documentation carries the argument. Shards moved are
//!   data migrated between groups, which is why "fewest" matters.
//! - `Move` pins one shard to one group without rebalancing (for tests and operators); the pin
//!   lasts until the next `Join` or `Leave`.
//! - `SetServers` records a group's new server list after its Raft membership changed (the
//!   `member` commands of the CLIs send it), with the same address rules as `Join` and the
//!   shard assignment unchanged, so clients and other groups find the new members.
//! - Join's server addresses must be `host:port`; [`check_server_addr`] applies the same rule
//!   for callers that want to reject a bad address before proposing it.
//! - Every refusal is a [`CtrlError`], named for what the caller should do about it.
//!
//! # Invariants
//!
//! - History is append-only and `history[n].num == n`: once configuration `n` is observed,
//!   `query(Some(n))` returns the identical configuration forever.
//! - In every configuration, each shard is owned by exactly one group present in that
//!   configuration, or, when there are no groups, by [`UNASSIGNED`]. No server address serves
//!   two groups.
//! - After `Join` or `Leave`, shard counts of any two groups differ by at most one (with more
//!   groups than shards: one shard each for some groups, none for the others).
//! - Exactly once: the controller remembers each client's newest [`RequestId`] and its outcome,
//!   refusals included, so a request committed twice by Raft takes effect once and both
//!   commits return the same answer. A refused command changes no configuration.
//! - Determinism: identical command sequences give identical controllers. Only ordered
//!   collections are iterated and ties are always broken by gid; there is no clock, randomness
//!   or I/O in the core, in [`codec`] or in [`sm`] (only [`server`] and [`node`] do I/O).
//!
//! # The replicated service
//!
//! The core above knows nothing of Raft, networks or bytes. Four modules turn it into a service
//! (normally 3 members), layered so that each depends only on the ones before it:
//!
//! - [`codec`]: the wire encoding of commands, responses, configurations and snapshots, as
//!   defined in `proto/shardctrler.proto`. Deterministic (equal values, equal bytes) and
//!   versioned (snapshots carry a version; an unknown one is refused, not misread).
//! - [`sm`]: [`ControllerSm`], the controller as a `quorumkv_raft_core::StateMachine`. It holds
//!   the shard count it was started with and refuses a snapshot with another.
//! - [`server`]: [`CtrlerService`], the `ShardCtrler` gRPC service. Join/Leave/Move/SetServers
//!   are proposed through Raft after the stateless checks (so garbage never reaches the log);
//!   Query is a linearizable ReadIndex read that never writes to the log, so polling does not
//!   grow it. Errors become statuses here, following `quorumkv_common::rpc`.
//! - [`node`]: [`CtrlerMember`] and [`serve()`], the wiring of one member (Raft node, mutual-TLS
//!   transport, one listener serving both the Raft transport and `ShardCtrler`), and the shard
//!   count stored in the data directory (`controller.meta`) so a member restarted with another
//!   count refuses to start. It also runs the admin endpoint and the graceful shutdown
//!   (refuse new requests, hand leadership over, drain).
//! - [`admin`]: requests counted by operation and result, and [`admin::CtrlerAdmin`], the
//!   member's view on the plain-HTTP admin port (`quorumkv-admin`).
//!
//! Clients use the `quorumkv-shardctrler-client` crate, which depends only on the wire types.
//!
//! # Deliberately left out
//!
//! Dedup sessions are never expired, as in the classic design: a client that went quiet may
//! still have a retry in flight. The controller group's own membership is changed through
//! raft-core's `RaftAdmin` service, which every member serves next to `ShardCtrler`
//! (`shardctrler-client member ...`); nothing here records it.

mod addr;
pub mod admin;
pub mod codec;
mod config;
mod controller;
mod error;
pub mod node;
mod rebalance;
pub mod server;
pub mod sm;

pub use addr::check_server_addr;
pub use config::{Config, UNASSIGNED};
pub use controller::{
    Applied, Command, Controller, RequestId, Session, Snapshot, DEFAULT_SHARDS, SESSION_TTL_MS,
};
pub use error::CtrlError;
pub use node::{serve, CtrlerMember, MemberOptions, CONTROLLER_GROUP_ID};
pub use rebalance::rebalance;
pub use server::CtrlerService;
pub use sm::ControllerSm;
