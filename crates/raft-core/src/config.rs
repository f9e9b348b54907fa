//! The configuration of one Raft member. Every field is documented here, once.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{RaftError, Result};

/// How this member starts when its data directory is empty. Ignored when the directory already
/// holds a Raft state: a restarted member always resumes from what it persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Create a new group whose voters are exactly these members (every initial member is
    /// started with the same list, like etcd's `--initial-cluster`).
    NewGroup,
    /// Join an existing group: start with no configuration and wait for the leader, after an
    /// operator added this member with [`crate::RaftNode::add_learner`]. `members` then lists
    /// the existing members, so this one can answer the leader before it learns the group's
    /// address book from a snapshot or the log.
    Join,
}

/// Configuration of one member of one Raft group.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This member's id: non-zero, unique within the group, never reused for another member.
    pub id: u64,
    /// The group's id; messages for another group are refused (one process may later host
    /// several groups, and a misrouted peer must not corrupt this one).
    pub group_id: u64,
    /// Directory of the durable state (sled database and snapshot files). Created if missing.
    pub data_dir: PathBuf,
    /// Known members, `(id, "host:port")`, including this one for a new group.
    pub members: Vec<(u64, String)>,
    /// What to do when `data_dir` is empty.
    pub bootstrap: Bootstrap,
    /// The logical clock of Raft: one tick every `tick_interval`.
    pub tick_interval: Duration,
    /// Ticks without hearing from a leader before a follower campaigns (randomised in
    /// `[election_tick, 2 * election_tick)` by raft-rs).
    pub election_tick: usize,
    /// Ticks between leader heartbeats; must be smaller than `election_tick`.
    pub heartbeat_tick: usize,
    /// A follower's election timeout is drawn from `[election_tick, election_tick +
    /// election_tick_spread)` ticks, so that members rarely campaign at once. Deterministic
    /// tests set it to 1 (no randomness) and give members different `election_tick`s.
    pub election_tick_spread: usize,
    /// Seed of the ids this member gives its proposals (random when `None`; tests fix it).
    pub proposal_id_seed: Option<u64>,
    /// Compact the log once the entries applied since the last compaction exceed this many
    /// bytes (after syncing the state machine's own store, or writing a snapshot file of an
    /// in-memory one). The log's files are sized from it (see `storage::LogOptions`).
    pub snapshot_log_bytes: u64,
    /// Fill the log's recycling pool with zeros when it is first created (about 3 ×
    /// `snapshot_log_bytes` of disk), so that log appends overwrite written blocks and each
    /// fdatasync is cheaper. Tests turn it off to save disk and time.
    pub log_prefill: bool,
    /// Entries kept in the log behind a snapshot, so a briefly lagging follower catches up by
    /// appends rather than by a full snapshot.
    pub keep_entries_after_snapshot: u64,
    /// Upper bound of one append message's entries in bytes (raft-rs's default 0 would send one
    /// entry per message).
    pub max_size_per_msg: u64,
    /// Append messages in flight per follower.
    pub max_inflight_msgs: usize,
    /// Largest command accepted by `propose`, in bytes. It keeps every log entry inline in
    /// sled's segments (see the storage module on durability).
    pub max_command_bytes: usize,
    /// Default deadline of proposals, reads and membership calls.
    pub request_timeout: Duration,
}

impl NodeConfig {
    /// A configuration with production defaults.
    pub fn new(id: u64, group_id: u64, data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            id,
            group_id,
            data_dir: data_dir.into(),
            members: Vec::new(),
            bootstrap: Bootstrap::NewGroup,
            tick_interval: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 2,
            election_tick_spread: 10,
            proposal_id_seed: None,
            snapshot_log_bytes: 16 << 20,
            log_prefill: true,
            keep_entries_after_snapshot: 1_000,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            max_command_bytes: 2 << 20,
            request_timeout: Duration::from_secs(5),
        }
    }

    /// Checks the rules that raft-rs and this crate rely on and names the broken one.
    pub fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(RaftError::InvalidArgument(s));
        if self.id == 0 {
            return bad("member id must be non-zero".into());
        }
        if self.heartbeat_tick == 0 || self.election_tick <= self.heartbeat_tick {
            return bad(format!(
                "election_tick ({}) must be greater than heartbeat_tick ({}), which must be > 0",
                self.election_tick, self.heartbeat_tick
            ));
        }
        if self.election_tick_spread == 0 {
            return bad("election_tick_spread must be positive".into());
        }
        if self.tick_interval.is_zero() {
            return bad("tick_interval must be positive".into());
        }
        if self.max_size_per_msg == 0 {
            return bad("max_size_per_msg must be positive".into());
        }
        if self.max_command_bytes == 0 || self.max_command_bytes > 3 << 20 {
            return bad("max_command_bytes must be between 1 byte and 3 MiB".into());
        }
        let mut ids: Vec<u64> = self.members.iter().map(|m| m.0).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.members.len() || ids.contains(&0) {
            return bad("member ids must be non-zero and unique".into());
        }
        if self.bootstrap == Bootstrap::NewGroup && !ids.contains(&self.id) {
            return bad(format!(
                "a new group's members must include this member ({})",
                self.id
            ));
        }
        Ok(())
    }
}
