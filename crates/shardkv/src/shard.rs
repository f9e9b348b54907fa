//! One shard held by a group: its exactly-once sessions, its size, and its migration state.

use std::collections::BTreeMap;

use bytes::Bytes;
use quorumkv_proto::shardkv::ShardStateKind;

/// Where a shard held by this group stands. Every change is one of the named transitions
/// below, applied through the group's Raft log, so all replicas agree on it.
///
/// ```text
///            (config gives us the shard; previous owner g)          (config takes it away)
///   absent ──────────────────────────────▶ Pulling{g} ─chunks─▶ Collecting{g} ─done─▶ Serving
///   absent ──(previous owner: none)──▶ Serving ────────────────────▶ HandingOff{to} ─done─▶ absent
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardState {
    /// Owned and complete: serves reads and writes.
    Serving,
    /// Owned in the current configuration but still being copied from `from`, the owner in
    /// the previous configuration; `cursor` says how far the copy has come. Not served yet.
    Pulling { from: u64, cursor: PullCursor },
    /// Owned, complete and served, but `from` has not yet confirmed it deleted its copy.
    Collecting { from: u64 },
    /// No longer owned: frozen (not served) until `to` has installed it, then deleted.
    HandingOff { to: u64 },
}

impl ShardState {
    /// Whether client requests may be served from this shard.
    pub fn serves(&self) -> bool {
        matches!(self, ShardState::Serving | ShardState::Collecting { .. })
    }

    /// The state's kind, as stored and sent (`ShardStateKind` in `proto/shardkv.proto`).
    pub fn kind(&self) -> ShardStateKind {
        match self {
            ShardState::Serving => ShardStateKind::Serving,
            ShardState::Pulling { .. } => ShardStateKind::Pulling,
            ShardState::Collecting { .. } => ShardStateKind::Collecting,
            ShardState::HandingOff { .. } => ShardStateKind::HandingOff,
        }
    }

    /// The one spelling of the state in status output, metric labels and the CLI.
    pub fn name(&self) -> &'static str {
        kind_name(self.kind())
    }

    /// The state of kind `kind` with its other group `peer` and, pulling, its `cursor`.
    pub fn from_kind(kind: ShardStateKind, peer: u64, cursor: PullCursor) -> Result<Self, String> {
        Ok(match kind {
            ShardStateKind::Serving => ShardState::Serving,
            ShardStateKind::Pulling => ShardState::Pulling { from: peer, cursor },
            ShardStateKind::Collecting => ShardState::Collecting { from: peer },
            ShardStateKind::HandingOff => ShardState::HandingOff { to: peer },
            ShardStateKind::Unspecified => return Err("a shard without a state".into()),
        })
    }

    /// The other group of a migration, 0 when serving.
    pub fn peer_gid(&self) -> u64 {
        match self {
            ShardState::Serving => 0,
            ShardState::Pulling { from, .. } | ShardState::Collecting { from } => *from,
            ShardState::HandingOff { to } => *to,
        }
    }
}

/// How far a shard being pulled has come: first its keys, in key order, then its
/// exactly-once sessions, in client id order; each arrives in chunks of bounded size (a shard
/// of many recent clients has many sessions, and one chunk of them all could outgrow a Raft
/// command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullCursor {
    /// The keys after this one (all of them when `None`) are still to come.
    Keys(Option<Bytes>),
    /// Every key is in; the sessions of clients after this one (all when `None`) are still
    /// to come.
    Sessions(Option<u64>),
}

impl PullCursor {
    /// The start of a pull.
    pub fn start() -> Self {
        PullCursor::Keys(None)
    }

    /// As stored: (last key, keys done, last session's client).
    pub fn parts(&self) -> (Option<Bytes>, bool, Option<u64>) {
        match self {
            PullCursor::Keys(k) => (k.clone(), false, None),
            PullCursor::Sessions(c) => (None, true, *c),
        }
    }

    /// From the stored parts.
    pub fn from_parts(key: Option<Bytes>, keys_done: bool, session: Option<u64>) -> Self {
        if keys_done {
            PullCursor::Sessions(session)
        } else {
            PullCursor::Keys(key)
        }
    }
}

/// The lower-case name of a state kind without its prefix (`handing_off`).
pub fn kind_name(kind: ShardStateKind) -> &'static str {
    match kind {
        ShardStateKind::Serving => "serving",
        ShardStateKind::Pulling => "pulling",
        ShardStateKind::Collecting => "collecting",
        ShardStateKind::HandingOff => "handing_off",
        ShardStateKind::Unspecified => "unspecified",
    }
}

/// Exactly-once memory of one client within one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// Highest sequence number applied for the client in this shard.
    pub seq: u64,
    /// Proposer timestamp of that write; drives expiry.
    pub last_ms: u64,
}

/// What the state machine keeps in memory about a shard it holds; the keys and values are in
/// the store (`crate::store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub state: ShardState,
    pub sessions: BTreeMap<u64, Session>,
    /// Number of keys, maintained on every change (status without a scan).
    pub keys: u64,
    /// Sum of key and value lengths, maintained on every change.
    pub bytes: u64,
}

impl Shard {
    pub fn new(state: ShardState) -> Self {
        Shard {
            state,
            sessions: BTreeMap::new(),
            keys: 0,
            bytes: 0,
        }
    }

    /// Accounts for `key` changing from a value of `old` bytes (or none) to `new` (or none).
    pub fn account(&mut self, key_len: usize, old: Option<usize>, new: Option<usize>) {
        if let Some(old) = old {
            self.keys -= 1;
            self.bytes -= (key_len + old) as u64;
        }
        if let Some(new) = new {
            self.keys += 1;
            self.bytes += (key_len + new) as u64;
        }
    }

    /// Records that `seq` from `client` applied at `now_ms`; returns the session to store.
    pub fn record(&mut self, client: u64, seq: u64, now_ms: u64) -> Session {
        let s = Session {
            seq,
            last_ms: now_ms,
        };
        self.sessions.insert(client, s);
        s
    }

    /// Whether `seq` from `client` was already applied here.
    pub fn is_duplicate(&self, client: u64, seq: u64) -> bool {
        self.sessions.get(&client).is_some_and(|s| seq <= s.seq)
    }
}
