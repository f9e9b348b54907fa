//! The deterministic state machine of one replica group.
//!
//! It holds the configuration the group has reached (and the one before it, to know where
//! incoming shards come from), and the shards it owns or is migrating. Every change comes from
//! a [`pb::Command`] applied in log order; nothing here reads a clock, a socket or a random
//! number. Time reaches it only as the proposer's timestamp inside client writes, used to
//! expire idle exactly-once sessions the same way on every replica.
//!
//! Invariants:
//! - The group moves to configuration `n + 1` only from `n`, and only when every shard it
//!   holds is `Serving`: a shard is served by at most one group per configuration, and a
//!   group never skips the hand-off of a configuration.
//! - A shard is served only in `Serving` or `Collecting` and only if the current
//!   configuration assigns it to this group.
//! - A client write is applied at most once per (client, seq) within its shard; the session
//!   travels with the shard when it moves.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Unbounded};
use std::path::Path;

use bytes::Bytes;
use prost::Message;
use quorumkv_common::shard_of;
use quorumkv_proto::shardkv as pb;
use quorumkv_shardctrler_client::Config;

use crate::shard::{PullCursor, Session, Shard, ShardState};
use crate::store::{Progress, Store, StoreError, WriteBatch, REDO_LIMIT_BYTES};
use quorumkv_raft_core::SmError;

/// The documented limits (the client library checks them too): keys up to 4 KiB, values up
/// to 1 MiB (also the largest value an append may produce).
pub use quorumkv_shardkv_client::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
/// A client session idle for this long (by proposer timestamps) is forgotten. A retry of a
/// write older than this could apply twice; clients give up on a request long before.
pub const SESSION_TTL_MS: u64 = 10 * 60 * 1000;
/// Expired sessions are swept when the log's clock has advanced this much since the last
/// sweep. A sweep visits every session, so it must not run per write (it took 2.5% of all CPU
/// when it ran every 1,024 writes under load).
const SWEEP_INTERVAL_MS: u64 = 60 * 1000;

/// Why a command or read could not be served here. Deterministic: every replica computes the
/// same outcome for the same command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This group does not own the key's shard in its current configuration.
    WrongGroup,
    /// The shard is ours but still arriving (or the command belongs to another configuration):
    /// retry shortly.
    NotReady(String),
    /// The request breaks a documented limit.
    Invalid(String),
}

/// The outcome of an applied command, returned to the proposer.
pub type Outcome = Result<(), Refusal>;

pub(crate) fn encode_outcome(o: &Outcome) -> Vec<u8> {
    match o {
        Ok(()) => vec![0],
        Err(Refusal::WrongGroup) => vec![1],
        Err(Refusal::NotReady(m)) => [&[2u8][..], m.as_bytes()].concat(),
        Err(Refusal::Invalid(m)) => [&[3u8][..], m.as_bytes()].concat(),
    }
}

pub(crate) fn decode_outcome(b: &[u8]) -> Outcome {
    let msg = || String::from_utf8_lossy(b.get(1..).unwrap_or_default()).into_owned();
    match b.first() {
        Some(0) => Ok(()),
        Some(1) => Err(Refusal::WrongGroup),
        Some(2) => Err(Refusal::NotReady(msg())),
        _ => Err(Refusal::Invalid(msg())),
    }
}

/// What the leader's migration task needs to know about in-flight migrations.
#[derive(Debug, Clone, Default)]
pub struct MigrationView {
    pub config_num: u64,
    /// Every shard is `Serving`: the group may move to the next configuration.
    pub settled: bool,
    /// Shards being pulled.
    pub pulling: Vec<PullTask>,
    /// Shards whose old copy must be deleted.
    pub collecting: Vec<CollectTask>,
}

/// A shard to pull from its previous owner.
#[derive(Debug, Clone)]
pub struct PullTask {
    pub shard: u64,
    /// The previous owner.
    pub from: u64,
    /// Its servers (in the previous configuration).
    pub servers: Vec<String>,
    /// How far the pull has come.
    pub cursor: PullCursor,
}

/// A shard whose previous owner must delete its copy.
#[derive(Debug, Clone)]
pub struct CollectTask {
    pub shard: u64,
    /// The previous owner.
    pub from: u64,
    /// Its servers (in the previous configuration).
    pub servers: Vec<String>,
}

/// One chunk of a shard for its new owner: keys (until `done`), then sessions (until
/// `sessions_done`), together at most about the requested size.
pub struct Chunk {
    pub entries: Vec<(Bytes, Bytes)>,
    /// No key remains after the last entry.
    pub done: bool,
    pub sessions: Vec<(u64, Session)>,
    /// No session remains after the last one: the shard is complete.
    pub sessions_done: bool,
}

impl Chunk {
    /// The reply carrying this chunk to the new owner.
    pub fn into_reply(self) -> pb::PullShardReply {
        pb::PullShardReply {
            entries: self
                .entries
                .into_iter()
                .map(|(key, value)| pb::KeyValue { key, value })
                .collect(),
            done: self.done,
            sessions: self
                .sessions
                .into_iter()
                .map(|(client_id, s)| pb::Session {
                    client_id,
                    seq: s.seq,
                    last_ms: s.last_ms,
                })
                .collect(),
            sessions_done: self.sessions_done,
        }
    }
}

/// The request for the next chunk of a pull at `cursor`.
pub fn pull_request(
    config_num: u64,
    shard: u64,
    cursor: &PullCursor,
    max_bytes: u64,
) -> pb::PullShardRequest {
    let (after_key, sessions_only, sessions_after) = match cursor {
        PullCursor::Keys(k) => (k.clone(), false, None),
        PullCursor::Sessions(c) => (None, true, *c),
    };
    pb::PullShardRequest {
        config_num,
        shard,
        after_key,
        max_bytes,
        sessions_only,
        sessions_after,
    }
}

/// The command that installs `reply` (the answer to `pull_request(.., cursor, ..)`) on the
/// new owner, the cursor after it, and whether the shard is then complete. The state
/// machine's `InsertChunk` makes the same step from the same cursor.
pub fn install_command(
    config_num: u64,
    shard: u64,
    cursor: &PullCursor,
    reply: pb::PullShardReply,
) -> (pb::InsertChunk, PullCursor, bool) {
    let next = match cursor {
        PullCursor::Keys(k) if !reply.done => {
            PullCursor::Keys(reply.entries.last().map(|kv| kv.key.clone()).or(k.clone()))
        }
        PullCursor::Keys(_) => PullCursor::Sessions(reply.sessions.last().map(|s| s.client_id)),
        PullCursor::Sessions(after) => {
            PullCursor::Sessions(reply.sessions.last().map(|s| s.client_id).or(*after))
        }
    };
    let req = pull_request(config_num, shard, cursor, 0);
    let complete = reply.sessions_done;
    let chunk = pb::InsertChunk {
        config_num,
        shard,
        entries: reply.entries,
        done: reply.done,
        sessions: reply.sessions,
        after_key: req.after_key,
        sessions_only: req.sessions_only,
        sessions_after: req.sessions_after,
        sessions_done: reply.sessions_done,
    };
    (chunk, next, complete)
}

/// What a session costs in a chunk's size budget (client id, seq, timestamp, framing).
const SESSION_BYTES: usize = 32;

/// The replica group's state machine. The keys and values live in the [`Store`]; the
/// configuration, the shard headers and the sessions are also kept in memory (they are small:
/// sessions expire).
pub struct ShardKvState {
    gid: u64,
    num_shards: usize,
    config: Config,
    prev: Config,
    shards: BTreeMap<u64, Shard>,
    progress: Progress,
    store: Store,
    /// Effects of the commands applied since the last [`ShardKvState::flush_applied`].
    pending: WriteBatch,
    /// The applied index the store holds.
    stored: u64,
}

impl std::fmt::Debug for ShardKvState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardKvState")
            .field("gid", &self.gid)
            .field("config", &self.config.num)
            .field("shards", &self.shards)
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

fn empty_config(num_shards: usize) -> Config {
    Config {
        num: 0,
        shards: vec![0; num_shards],
        groups: BTreeMap::new(),
    }
}

pub(crate) fn config_to_pb(c: &Config) -> pb::Config {
    pb::Config {
        num: c.num,
        shards: c.shards.clone(),
        groups: c
            .groups
            .iter()
            .map(|(gid, servers)| pb::Group {
                gid: *gid,
                servers: servers.clone(),
            })
            .collect(),
    }
}

pub(crate) fn config_from_pb(c: pb::Config) -> Config {
    Config {
        num: c.num,
        shards: c.shards,
        groups: c.groups.into_iter().map(|g| (g.gid, g.servers)).collect(),
    }
}

/// A shard's state in a snapshot: its `kind`, or in a format-1 snapshot its name.
fn snapshot_state(s: &pb::ShardSnapshot) -> Result<ShardState, String> {
    let kind = match pb::ShardStateKind::try_from(s.kind) {
        Ok(pb::ShardStateKind::Unspecified) | Err(_) => match s.state.as_str() {
            "serving" => pb::ShardStateKind::Serving,
            "pulling" => pb::ShardStateKind::Pulling,
            "collecting" => pb::ShardStateKind::Collecting,
            "handing-off" => pb::ShardStateKind::HandingOff,
            other => return Err(format!("unknown shard state {other:?}")),
        },
        Ok(k) => k,
    };
    let cursor = PullCursor::from_parts(s.cursor.clone(), s.keys_done, s.session_cursor);
    ShardState::from_kind(kind, s.peer_gid, cursor)
}

/// Entries per batch when a snapshot is loaded into the store.
const RESTORE_BATCH: usize = 4096;
/// The first byte of each piece of a snapshot stream in this format (see `SnapshotPart` in
/// `proto/shardkv.proto`); a format-1 snapshot is one `StateSnapshot`, whose first byte is
/// its `gid` field's tag (0x08).
const PART_VERSION: u8 = 0xB2;

/// Why a snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("snapshot is corrupt: {0}")]
    Corrupt(String),
    #[error("snapshot of group {found} cannot be restored in group {gid}")]
    WrongGroup { found: u64, gid: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ShardKvState {
    /// Opens group `gid`'s store in `dir` (created if new) and loads its state.
    pub fn open(gid: u64, dir: &Path) -> Result<Self, StoreError> {
        Self::load(gid, Store::open(dir)?)
    }

    /// A state machine on a temporary store (tests and tools).
    pub fn temporary(gid: u64) -> Result<Self, StoreError> {
        Self::load(gid, Store::temporary()?)
    }

    fn load(gid: u64, store: Store) -> Result<Self, StoreError> {
        let loaded = store.load()?;
        let mut s = ShardKvState {
            gid,
            num_shards: 1,
            config: empty_config(1),
            prev: empty_config(1),
            shards: loaded.shards,
            progress: loaded.progress,
            store,
            pending: WriteBatch::default(),
            stored: loaded.progress.applied,
        };
        if let Some(meta) = loaded.meta {
            if meta.gid != gid {
                return Err(StoreError::Corrupt(format!(
                    "this store belongs to group {}, not group {gid}",
                    meta.gid
                )));
            }
            s.set_meta(meta);
        }
        Ok(s)
    }

    fn set_meta(&mut self, meta: pb::StateSnapshot) {
        let n = (meta.num_shards as usize).max(1);
        self.num_shards = n;
        self.config = meta
            .config
            .map(config_from_pb)
            .unwrap_or_else(|| empty_config(n));
        self.prev = meta
            .prev_config
            .map(config_from_pb)
            .unwrap_or_else(|| empty_config(n));
    }

    /// The group metadata as stored (a snapshot header without shards).
    fn meta(&self) -> pb::StateSnapshot {
        pb::StateSnapshot {
            gid: self.gid,
            num_shards: self.num_shards as u64,
            config: Some(config_to_pb(&self.config)),
            prev_config: Some(config_to_pb(&self.prev)),
            clock_ms: self.progress.clock_ms,
            writes: self.progress.writes,
            last_sweep_ms: self.progress.last_sweep_ms,
            shards: Vec::new(),
        }
    }

    pub fn gid(&self) -> u64 {
        self.gid
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn shards(&self) -> &BTreeMap<u64, Shard> {
        &self.shards
    }

    pub fn session_count(&self) -> usize {
        self.shards.values().map(|s| s.sessions.len()).sum()
    }

    /// The index of the last command applied (and stored).
    pub fn applied_index(&self) -> u64 {
        self.progress.applied
    }

    /// The shard of `key` under the current configuration.
    pub fn shard_of(&self, key: &[u8]) -> u64 {
        shard_of(key, self.num_shards) as u64
    }

    fn check_serving(&self, shard: u64) -> Result<&Shard, Refusal> {
        if self.config.shards.get(shard as usize) != Some(&self.gid) {
            return Err(Refusal::WrongGroup);
        }
        match self.shards.get(&shard) {
            Some(s) if s.state.serves() => Ok(s),
            _ => Err(Refusal::NotReady(format!(
                "shard {shard} is still arriving in configuration {}",
                self.config.num
            ))),
        }
    }

    /// A read of `key` (the caller makes it linearizable with ReadIndex first).
    pub fn get(&self, key: &[u8]) -> Result<Result<Option<Bytes>, Refusal>, StoreError> {
        let shard = self.shard_of(key);
        if let Err(r) = self.check_serving(shard) {
            return Ok(Err(r));
        }
        Ok(Ok(self.store.get(shard, key)?))
    }

    /// Applies one encoded command at log index `index`. Its effects reach the store with the
    /// next [`ShardKvState::flush_applied`].
    pub fn apply_bytes(&mut self, index: u64, bytes: &[u8]) -> Result<Outcome, StoreError> {
        match pb::Command::decode(bytes) {
            Ok(pb::Command { cmd: Some(cmd) }) => self.apply(index, cmd),
            _ => {
                self.progress.applied = index;
                Ok(Err(Refusal::Invalid("undecodable command".into())))
            }
        }
    }

    /// Applies one command at log index `index`. Its effects are visible to the commands
    /// applied after it at once, and reach the store with the next
    /// [`ShardKvState::flush_applied`] (or at once, when the run's pending effects grew past
    /// [`REDO_LIMIT_BYTES`]).
    pub fn apply(&mut self, index: u64, cmd: pb::command::Cmd) -> Result<Outcome, StoreError> {
        let mut batch = std::mem::take(&mut self.pending);
        let outcome = match cmd {
            pb::command::Cmd::Write(w) => self.apply_write(&mut batch, w),
            pb::command::Cmd::NextConfig(c) => {
                self.apply_next_config(&mut batch, config_from_pb(c))
            }
            pb::command::Cmd::InsertChunk(c) => self.apply_insert_chunk(&mut batch, c),
            pb::command::Cmd::ShardDone(d) => self.apply_shard_done(&mut batch, d),
        };
        self.pending = batch;
        self.progress.applied = index;
        if self.pending.bytes() > REDO_LIMIT_BYTES {
            self.flush_applied()?;
        }
        outcome
    }

    /// Writes the effects of the commands applied since the last call, and their index, to
    /// the store as one unit. The raft core calls it after every run of applies, before any
    /// read is served or snapshot taken.
    pub fn flush_applied(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() && self.stored == self.progress.applied {
            return Ok(());
        }
        self.store
            .commit(std::mem::take(&mut self.pending), self.progress)?;
        self.stored = self.progress.applied;
        Ok(())
    }

    fn apply_write(
        &mut self,
        batch: &mut WriteBatch,
        w: pb::ClientWrite,
    ) -> Result<Outcome, StoreError> {
        let Ok(op) = pb::WriteOp::try_from(w.op) else {
            // From a newer client or a corrupt entry: applying it as anything would guess.
            return Ok(Err(Refusal::Invalid(format!(
                "unknown write operation {}",
                w.op
            ))));
        };
        self.progress.clock_ms = self.progress.clock_ms.max(w.now_ms);
        let id = w.id.unwrap_or_default();
        if w.key.len() > MAX_KEY_BYTES || w.value.len() > MAX_VALUE_BYTES {
            return Ok(Err(Refusal::Invalid(format!(
                "key or value too large (limits: {MAX_KEY_BYTES} and {MAX_VALUE_BYTES} bytes)"
            ))));
        }
        let shard_id = self.shard_of(&w.key);
        if let Err(r) = self.check_serving(shard_id) {
            return Ok(Err(r));
        }
        let now = self.progress.clock_ms;
        if self.shards[&shard_id].is_duplicate(id.client_id, id.seq) {
            return Ok(Ok(()));
        }
        let (old_len, new_len) = match op {
            pb::WriteOp::Put => {
                let old = self.store.value_len_through(batch, shard_id, &w.key)?;
                batch.put_value(shard_id, &w.key, &w.value);
                (old, Some(w.value.len()))
            }
            pb::WriteOp::Append => {
                let old = self.store.get_through(batch, shard_id, &w.key)?;
                let old_len = old.as_ref().map(|o| o.len());
                let old = old.unwrap_or_default();
                if old.len() + w.value.len() > MAX_VALUE_BYTES {
                    return Ok(Err(Refusal::Invalid(format!(
                        "append would make the value larger than {MAX_VALUE_BYTES} bytes"
                    ))));
                }
                let mut v = Vec::with_capacity(old.len() + w.value.len());
                v.extend_from_slice(&old);
                v.extend_from_slice(&w.value);
                batch.put_value(shard_id, &w.key, &v);
                (old_len, Some(v.len()))
            }
            pb::WriteOp::Delete => {
                let old = self.store.value_len_through(batch, shard_id, &w.key)?;
                if old.is_some() {
                    batch.remove_value(shard_id, &w.key);
                }
                (old, None)
            }
        };
        let shard = self.shards.get_mut(&shard_id).expect("checked above");
        shard.account(w.key.len(), old_len, new_len);
        let session = shard.record(id.client_id, id.seq, now);
        batch.put_session(shard_id, id.client_id, session);
        batch.put_header(shard_id, shard);
        self.progress.writes += 1;
        if now >= self.progress.last_sweep_ms + SWEEP_INTERVAL_MS {
            self.expire_sessions(batch);
            self.progress.last_sweep_ms = now;
        }
        Ok(Ok(()))
    }

    /// Forgets sessions idle for longer than the TTL, by the log's own clock.
    fn expire_sessions(&mut self, batch: &mut WriteBatch) {
        let horizon = self.progress.clock_ms.saturating_sub(SESSION_TTL_MS);
        for (id, s) in self.shards.iter_mut() {
            s.sessions.retain(|client, sess| {
                let keep = sess.last_ms >= horizon;
                if !keep {
                    batch.remove_session(*id, *client);
                }
                keep
            });
        }
    }

    fn apply_next_config(
        &mut self,
        batch: &mut WriteBatch,
        next: Config,
    ) -> Result<Outcome, StoreError> {
        if next.num != self.config.num + 1 {
            return Ok(Err(Refusal::NotReady(format!(
                "configuration {} is not the successor of {}",
                next.num, self.config.num
            ))));
        }
        if self.shards.values().any(|s| s.state != ShardState::Serving) {
            return Ok(Err(Refusal::NotReady(
                "a migration of the current configuration is unfinished".into(),
            )));
        }
        if let Some(why) = self.orphans(&next) {
            return Ok(Err(Refusal::Invalid(why)));
        }
        if self.config.num == 0 {
            self.num_shards = next.shards.len().max(1);
        } else if next.shards.len() != self.num_shards {
            return Ok(Err(Refusal::Invalid(format!(
                "configuration {} has {} shards, expected {}",
                next.num,
                next.shards.len(),
                self.num_shards
            ))));
        }
        for shard in 0..self.num_shards as u64 {
            let before = self.config.shards.get(shard as usize).copied().unwrap_or(0);
            let after = next.shards[shard as usize];
            if after == self.gid && before != self.gid {
                let state = if before == 0 {
                    ShardState::Serving
                } else {
                    ShardState::Pulling {
                        from: before,
                        cursor: PullCursor::start(),
                    }
                };
                let s = Shard::new(state);
                batch.put_header(shard, &s);
                self.shards.insert(shard, s);
            } else if before == self.gid && after != self.gid {
                if after == 0 {
                    // No group owns it any more, and it holds nothing (`orphans` refused the
                    // configuration otherwise): nothing to hand over.
                    batch.remove_shard(shard);
                    self.shards.remove(&shard);
                } else if let Some(s) = self.shards.get_mut(&shard) {
                    s.state = ShardState::HandingOff { to: after };
                    batch.put_header(shard, s);
                }
            }
        }
        self.prev = std::mem::replace(&mut self.config, next);
        batch.put_meta(&self.meta());
        Ok(Ok(()))
    }

    /// Why `next` cannot be applied here: it leaves a shard this group holds, with data,
    /// without any owner (nobody would pull it, and a group given it later would start it
    /// empty). The controller never makes such a configuration (it refuses to let the last
    /// group leave); one from an older controller stops this group at the configuration
    /// before it, with its data, rather than dropping the data.
    pub fn orphans(&self, next: &Config) -> Option<String> {
        let orphaned: Vec<String> = self
            .shards
            .iter()
            .filter(|(id, s)| next.shards.get(**id as usize) == Some(&0) && s.keys > 0)
            .map(|(id, _)| id.to_string())
            .collect();
        (!orphaned.is_empty()).then(|| {
            format!(
                "configuration {} leaves shard(s) {} of group {} with no owner; the data is kept \
                 and the group stays at configuration {} (join a group that can take them)",
                next.num,
                orphaned.join(","),
                self.gid,
                self.config.num
            )
        })
    }

    fn apply_insert_chunk(
        &mut self,
        batch: &mut WriteBatch,
        c: pb::InsertChunk,
    ) -> Result<Outcome, StoreError> {
        if c.config_num != self.config.num {
            return Ok(Err(Refusal::NotReady(
                "chunk of another configuration".into(),
            )));
        }
        let Some(shard) = self.shards.get_mut(&c.shard) else {
            return Ok(Err(Refusal::NotReady(format!(
                "shard {} is not expected",
                c.shard
            ))));
        };
        let ShardState::Pulling { from, cursor } = &shard.state else {
            // Already complete: a duplicate chunk.
            return Ok(Ok(()));
        };
        let from = *from;
        // A chunk is installed only where it continues the shard (duplicates and a stale
        // leader's chunks are ignored).
        let continues = match cursor {
            PullCursor::Keys(k) => !c.sessions_only && k.as_deref() == c.after_key.as_deref(),
            PullCursor::Sessions(after) => c.sessions_only && *after == c.sessions_after,
        };
        if !continues {
            return Ok(Err(Refusal::NotReady(
                "chunk does not continue the shard".into(),
            )));
        }
        let mut next = cursor.clone();
        if let PullCursor::Keys(last) = &mut next {
            for kv in c.entries {
                // Keys arrive in increasing order after the cursor: each one is new here.
                let old = self.store.value_len_through(batch, c.shard, &kv.key)?;
                shard.account(kv.key.len(), old, Some(kv.value.len()));
                batch.put_value(c.shard, &kv.key, &kv.value);
                *last = Some(kv.key);
            }
            if c.done {
                next = PullCursor::Sessions(None);
            }
        }
        if let PullCursor::Sessions(last) = &mut next {
            for s in c.sessions {
                let session = shard.record(s.client_id, s.seq, s.last_ms);
                batch.put_session(c.shard, s.client_id, session);
                *last = Some(s.client_id);
            }
        }
        shard.state = if matches!(next, PullCursor::Sessions(_)) && c.sessions_done {
            ShardState::Collecting { from }
        } else {
            ShardState::Pulling { from, cursor: next }
        };
        batch.put_header(c.shard, shard);
        Ok(Ok(()))
    }

    fn apply_shard_done(
        &mut self,
        batch: &mut WriteBatch,
        d: pb::ShardDone,
    ) -> Result<Outcome, StoreError> {
        if d.config_num > self.config.num {
            return Ok(Err(Refusal::NotReady(format!(
                "this group has not reached configuration {} yet",
                d.config_num
            ))));
        }
        if d.config_num < self.config.num {
            return Ok(Ok(())); // Long done.
        }
        match self.shards.get_mut(&d.shard) {
            Some(s) if matches!(s.state, ShardState::HandingOff { .. }) => {
                batch.remove_shard(d.shard);
                self.shards.remove(&d.shard);
            }
            Some(s) if matches!(s.state, ShardState::Collecting { .. }) => {
                s.state = ShardState::Serving;
                batch.put_header(d.shard, s);
            }
            _ => {}
        }
        Ok(Ok(()))
    }

    /// A chunk of a shard we are handing off, for its new owner continuing at `from`: at
    /// most ~`max_bytes` of keys and values and then of sessions, at least one item.
    pub fn pull_chunk(
        &self,
        config_num: u64,
        shard: u64,
        from: &PullCursor,
        max_bytes: usize,
    ) -> Result<Result<Chunk, Refusal>, StoreError> {
        if self.config.num < config_num {
            return Ok(Err(Refusal::NotReady(format!(
                "this group is at configuration {}, the shard moves in {config_num}",
                self.config.num
            ))));
        }
        let s = match self.shards.get(&shard) {
            Some(s)
                if self.config.num == config_num
                    && matches!(s.state, ShardState::HandingOff { .. }) =>
            {
                s
            }
            _ => {
                return Ok(Err(Refusal::Invalid(format!(
                    "shard {shard} is not being handed off in configuration {config_num}"
                ))))
            }
        };
        let mut entries = Vec::new();
        let mut size = 0;
        let mut done = true;
        let session_after = match from {
            PullCursor::Keys(after) => {
                for kv in self.store.scan(shard, after.as_deref())? {
                    let (k, v) = kv?;
                    if !entries.is_empty() && size + k.len() + v.len() > max_bytes {
                        done = false;
                        break;
                    }
                    size += k.len() + v.len();
                    entries.push((k, v));
                }
                None
            }
            PullCursor::Sessions(after) => *after,
        };
        let mut sessions = Vec::new();
        let mut sessions_done = done;
        if done {
            let range = match session_after {
                Some(c) => s.sessions.range((Excluded(c), Unbounded)),
                None => s.sessions.range(..),
            };
            for (client, sess) in range {
                if size + SESSION_BYTES > max_bytes && (size > 0) {
                    sessions_done = false;
                    break;
                }
                size += SESSION_BYTES;
                sessions.push((*client, *sess));
            }
        }
        Ok(Ok(Chunk {
            entries,
            done,
            sessions,
            sessions_done,
        }))
    }

    /// A point-in-time copy of `shard` for a backup: refused unless this group owns the shard
    /// in its configuration and holds all of it. The caller makes it linearizable with
    /// ReadIndex first; the copy then reflects the log up to [`ShardExport::log_index`].
    pub fn export_shard(&self, shard: u64) -> Result<Result<ShardExport, Refusal>, StoreError> {
        if shard >= self.num_shards as u64 {
            return Ok(Err(Refusal::Invalid(format!(
                "shard {shard} does not exist: the cluster has {} shards (0 to {})",
                self.num_shards,
                self.num_shards.saturating_sub(1)
            ))));
        }
        if let Err(r) = self.check_serving(shard) {
            return Ok(Err(r));
        }
        Ok(Ok(ShardExport {
            shard,
            gid: self.gid,
            config_num: self.config.num,
            log_index: self.progress.applied,
            view: self.store.shard_view(shard)?,
        }))
    }

    /// What the migration task has to do next.
    pub fn migration_view(&self) -> MigrationView {
        let servers = |gid: u64| self.prev.groups.get(&gid).cloned().unwrap_or_default();
        let mut v = MigrationView {
            config_num: self.config.num,
            settled: true,
            ..Default::default()
        };
        for (shard, s) in &self.shards {
            match &s.state {
                ShardState::Serving => {}
                ShardState::Pulling { from, cursor } => {
                    v.settled = false;
                    v.pulling.push(PullTask {
                        shard: *shard,
                        from: *from,
                        servers: servers(*from),
                        cursor: cursor.clone(),
                    });
                }
                ShardState::Collecting { from } => {
                    v.settled = false;
                    v.collecting.push(CollectTask {
                        shard: *shard,
                        from: *from,
                        servers: servers(*from),
                    });
                }
                ShardState::HandingOff { .. } => v.settled = false,
            }
        }
        v
    }

    /// The group's metadata and every shard's state and sessions, without keys and values.
    fn meta_snapshot(&self) -> pb::StateSnapshot {
        let mut snap = self.meta();
        for (id, s) in &self.shards {
            let (cursor, keys_done, session_cursor) = match &s.state {
                ShardState::Pulling { cursor, .. } => cursor.parts(),
                _ => (None, false, None),
            };
            snap.shards.push(pb::ShardSnapshot {
                shard: *id,
                state: String::new(),
                kind: s.state.kind() as i32,
                peer_gid: s.state.peer_gid(),
                cursor,
                keys_done,
                session_cursor,
                entries: Vec::new(),
                sessions: s
                    .sessions
                    .iter()
                    .map(|(c, sess)| pb::Session {
                        client_id: *c,
                        seq: sess.seq,
                        last_ms: sess.last_ms,
                    })
                    .collect(),
            });
        }
        snap
    }

    /// The complete state as one byte string (metadata, then every key and value in order),
    /// for comparing replicas in tests and tools; a store failure yields the error's text.
    pub fn snapshot_bytes(&self) -> Vec<u8> {
        let mut out = self.meta_snapshot().encode_to_vec();
        for id in self.shards.keys() {
            match self.store.scan(*id, None) {
                Ok(it) => {
                    for kv in it {
                        match kv {
                            Ok((k, v)) => pb::KeyValue { key: k, value: v }
                                .encode_length_delimited(&mut out)
                                .expect("a Vec grows"),
                            Err(e) => return e.to_string().into_bytes(),
                        }
                    }
                }
                Err(e) => return e.to_string().into_bytes(),
            }
        }
        out
    }

    /// A point-in-time view of the whole state as a stream of snapshot pieces: the metadata
    /// now, the keys and values read from a store view (cheap to take; read on any thread).
    pub fn snapshot_source(&self) -> Result<ShardSnapshotSource, StoreError> {
        let meta = part(pb::snapshot_part::Part::Meta(self.meta_snapshot()));
        let view = self.store.view()?;
        let entries = view.entries();
        Ok(ShardSnapshotSource {
            meta: Some(meta),
            entries,
            next: None,
            _view: view,
        })
    }

    /// Replaces the whole state (store included) with a snapshot taken at log index `index`,
    /// read piece by piece (memory stays bounded by a piece, whatever the snapshot's size).
    pub fn restore_from(
        &mut self,
        index: u64,
        chunks: &mut dyn quorumkv_raft_core::SnapshotChunks,
    ) -> Result<(), RestoreError> {
        let bad = |e: &dyn std::fmt::Display| RestoreError::Corrupt(e.to_string());
        let Some(first) = chunks.next_chunk().map_err(|e| bad(&e))? else {
            return Err(RestoreError::Corrupt("an empty snapshot".into()));
        };
        if first.first() != Some(&PART_VERSION) {
            // Format 1: the whole state in one message, cut into pieces.
            let mut bytes = first;
            while let Some(c) = chunks.next_chunk().map_err(|e| bad(&e))? {
                bytes.extend_from_slice(&c);
            }
            let mut snap = pb::StateSnapshot::decode(&bytes[..]).map_err(|e| bad(&e))?;
            let shards = std::mem::take(&mut snap.shards);
            let meta = pb::StateSnapshot {
                shards: shards
                    .iter()
                    .map(|s| pb::ShardSnapshot {
                        entries: Vec::new(),
                        ..s.clone()
                    })
                    .collect(),
                ..snap
            };
            self.begin_restore(&meta)?;
            for s in shards {
                self.restore_entries(s.shard, s.entries)?;
            }
            return self.finish_restore(index, meta);
        }
        let meta = match decode_part(&first).map_err(|e| bad(&e))? {
            pb::snapshot_part::Part::Meta(m) => m,
            _ => return Err(RestoreError::Corrupt("a snapshot without metadata".into())),
        };
        self.begin_restore(&meta)?;
        while let Some(c) = chunks.next_chunk().map_err(|e| bad(&e))? {
            match decode_part(&c).map_err(|e| bad(&e))? {
                pb::snapshot_part::Part::Data(d) => self.restore_entries(d.shard, d.entries)?,
                pb::snapshot_part::Part::Meta(_) => {
                    return Err(RestoreError::Corrupt("a second metadata piece".into()))
                }
            }
        }
        self.finish_restore(index, meta)
    }

    /// Clears the store (progress first: a crash until [`Self::finish_restore`] leaves a store
    /// that asks to be restored again) and sets up the shards of `meta`, without their keys.
    fn begin_restore(&mut self, meta: &pb::StateSnapshot) -> Result<(), RestoreError> {
        if meta.gid != self.gid {
            return Err(RestoreError::WrongGroup {
                found: meta.gid,
                gid: self.gid,
            });
        }
        let mut shards = BTreeMap::new();
        for s in &meta.shards {
            let mut shard = Shard::new(snapshot_state(s).map_err(RestoreError::Corrupt)?);
            for sess in &s.sessions {
                shard.record(sess.client_id, sess.seq, sess.last_ms);
            }
            shards.insert(s.shard, shard);
        }
        self.pending = WriteBatch::default();
        self.store.clear()?;
        self.shards = shards;
        Ok(())
    }

    fn restore_entries(&mut self, id: u64, entries: Vec<pb::KeyValue>) -> Result<(), RestoreError> {
        let shard = self.shards.get_mut(&id).ok_or_else(|| {
            RestoreError::Corrupt(format!("keys of shard {id}, which it does not hold"))
        })?;
        for chunk in entries.chunks(RESTORE_BATCH) {
            let mut batch = WriteBatch::default();
            for kv in chunk {
                shard.account(kv.key.len(), None, Some(kv.value.len()));
                batch.put_value(id, &kv.key, &kv.value);
            }
            self.store.load_part(batch)?;
        }
        Ok(())
    }

    /// Writes the shards' headers and sessions, the metadata and the progress at `index`.
    fn finish_restore(&mut self, index: u64, meta: pb::StateSnapshot) -> Result<(), RestoreError> {
        let mut batch = WriteBatch::default();
        for (id, shard) in &self.shards {
            for (client, sess) in &shard.sessions {
                batch.put_session(*id, *client, *sess);
            }
            batch.put_header(*id, shard);
        }
        self.progress = Progress {
            applied: index,
            clock_ms: meta.clock_ms,
            writes: meta.writes,
            last_sweep_ms: meta.last_sweep_ms,
        };
        self.set_meta(meta);
        batch.put_meta(&self.meta());
        self.store.commit(batch, self.progress)?;
        self.stored = index;
        Ok(())
    }
}

fn part(p: pb::snapshot_part::Part) -> Vec<u8> {
    let mut out = vec![PART_VERSION];
    pb::SnapshotPart { part: Some(p) }
        .encode(&mut out)
        .expect("a Vec grows");
    out
}

fn decode_part(b: &[u8]) -> Result<pb::snapshot_part::Part, String> {
    match b.split_first() {
        Some((&PART_VERSION, rest)) => pb::SnapshotPart::decode(rest)
            .map_err(|e| e.to_string())?
            .part
            .ok_or_else(|| "an empty snapshot piece".to_string()),
        _ => Err("a snapshot piece of an unknown format".into()),
    }
}

/// One shard as it was at one log index (see [`ShardKvState::export_shard`]); read it on any
/// thread while commands keep applying. Its store view covers this shard only, so writes to
/// other shards cost nothing extra meanwhile. Dropping it closes the view.
pub struct ShardExport {
    pub shard: u64,
    pub gid: u64,
    /// The configuration the group had reached.
    pub config_num: u64,
    /// The log index the copy reflects.
    pub log_index: u64,
    view: crate::store::StoreView,
}

impl ShardExport {
    /// The shard's keys and values at [`ShardExport::log_index`], in key order.
    pub fn entries(&self) -> impl Iterator<Item = Result<(Bytes, Bytes), StoreError>> {
        self.view.entries().map(|r| r.map(|(_, k, v)| (k, v)))
    }
}

/// A group's state as snapshot pieces (see [`ShardKvState::snapshot_source`]): the metadata,
/// then the keys and values of each shard, read from a point-in-time store view.
pub struct ShardSnapshotSource {
    meta: Option<Vec<u8>>,
    entries: crate::store::ViewIter,
    /// An entry read but not yet sent (it belongs to the next piece).
    next: Option<(u64, Bytes, Bytes)>,
    _view: crate::store::StoreView,
}

impl quorumkv_raft_core::SnapshotSource for ShardSnapshotSource {
    fn next_chunk(
        &mut self,
        max_bytes: usize,
    ) -> Result<Option<Vec<u8>>, quorumkv_raft_core::SmError> {
        if let Some(meta) = self.meta.take() {
            return Ok(Some(meta));
        }
        let mut data = pb::ShardData::default();
        let mut size = 0;
        loop {
            let item = match self.next.take() {
                Some(i) => i,
                None => match self.entries.next() {
                    Some(r) => r?,
                    None => break,
                },
            };
            let (shard, key, value) = item;
            let len = key.len() + value.len() + 16;
            let other_shard = !data.entries.is_empty() && data.shard != shard;
            if other_shard || (!data.entries.is_empty() && size + len > max_bytes) {
                self.next = Some((shard, key, value));
                break;
            }
            data.shard = shard;
            size += len;
            data.entries.push(pb::KeyValue { key, value });
        }
        if data.entries.is_empty() {
            return Ok(None);
        }
        Ok(Some(part(pb::snapshot_part::Part::Data(data))))
    }
}

impl quorumkv_raft_core::StateMachine for ShardKvState {
    fn apply(&mut self, index: u64, command: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(encode_outcome(&self.apply_bytes(index, command)?))
    }

    fn snapshot(&self) -> Result<Box<dyn quorumkv_raft_core::SnapshotSource>, SmError> {
        Ok(Box::new(self.snapshot_source()?))
    }

    fn restore(
        &mut self,
        index: u64,
        snapshot: &mut dyn quorumkv_raft_core::SnapshotChunks,
    ) -> Result<(), SmError> {
        Ok(self.restore_from(index, snapshot)?)
    }

    fn durability(&self) -> quorumkv_raft_core::Durability {
        quorumkv_raft_core::Durability::OwnStore
    }

    fn end_of_batch(&mut self) -> Result<(), SmError> {
        Ok(self.flush_applied()?)
    }

    fn persisted_index(&self) -> u64 {
        self.stored
    }

    fn syncer(&self) -> Option<Box<dyn quorumkv_raft_core::StoreSyncer>> {
        struct Syncer(crate::store::StoreSync);
        impl quorumkv_raft_core::StoreSyncer for Syncer {
            fn sync(&mut self) -> Result<(), SmError> {
                Ok(self.0.sync()?)
            }
        }
        match self.store.sync_handle() {
            Ok(h) => Some(Box::new(Syncer(h))),
            Err(e) => {
                tracing::warn!(error = %e, "no sync handle for the shard store");
                None
            }
        }
    }

    fn close(&mut self) {
        if let Err(e) = self.flush_applied() {
            tracing::warn!(error = %e, "writing the last applied commands on close failed");
        }
        self.store.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumkv_raft_core::{SnapshotChunks, SnapshotSource, StateMachine};

    /// Streams `from`'s snapshot into `to`, as taken at `index`.
    fn transfer(from: &ShardKvState, to: &mut ShardKvState, index: u64) {
        let mut src = from.snapshot_source().unwrap();
        let mut chunks = Vec::new();
        while let Some(c) = src.next_chunk(256).unwrap() {
            chunks.push(c);
        }
        drop(src);
        struct Pieces(std::vec::IntoIter<Vec<u8>>);
        impl SnapshotChunks for Pieces {
            fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, SmError> {
                Ok(self.0.next())
            }
        }
        to.restore_from(index, &mut Pieces(chunks.into_iter()))
            .unwrap();
    }

    fn write(client: u64, seq: u64, key: &str, now_ms: u64) -> pb::command::Cmd {
        pb::command::Cmd::Write(pb::ClientWrite {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            op: pb::WriteOp::Append as i32,
            id: Some(pb::RequestId {
                client_id: client,
                seq,
            }),
            now_ms,
        })
    }

    /// Applies at the next index (tests number the log themselves).
    fn step(s: &mut ShardKvState, cmd: pb::command::Cmd) -> Outcome {
        let index = s.applied_index() + 1;
        let outcome = s.apply(index, cmd).expect("store");
        s.flush_applied().expect("store");
        outcome
    }

    fn next_config() -> pb::command::Cmd {
        let config = Config {
            num: 1,
            shards: vec![1; 4],
            groups: [(1, vec!["a:1".to_string()])].into_iter().collect(),
        };
        pb::command::Cmd::NextConfig(config_to_pb(&config))
    }

    fn get(s: &ShardKvState, key: &[u8]) -> Option<Bytes> {
        s.get(key).unwrap().unwrap()
    }

    fn one_group_owning_everything() -> ShardKvState {
        let mut s = ShardKvState::temporary(1).unwrap();
        step(&mut s, next_config()).unwrap();
        s
    }

    #[test]
    fn idle_sessions_expire_by_the_log_clock_and_identically_after_a_snapshot() {
        let mut a = one_group_owning_everything();
        step(&mut a, write(7, 1, "k", 1_000)).unwrap();
        // A retry within the TTL is a duplicate: applied once.
        step(&mut a, write(7, 1, "k", 2_000)).unwrap();
        assert_eq!(get(&a, b"k").as_deref(), Some(&b"v"[..]));
        // Client 8 writes at t1: a sweep runs (client 7 is not idle long enough yet).
        let t1 = SESSION_TTL_MS;
        step(&mut a, write(8, 1, "other", t1)).unwrap();
        assert_eq!(a.session_count(), 2);

        // A replica restored from a snapshot taken now must sweep at the same points of the
        // log (so the time of the last sweep travels in the snapshot).
        let mut b = ShardKvState::temporary(1).unwrap();
        transfer(&a, &mut b, a.applied_index());

        // Client 7 is now idle past the TTL, but the next sweep is not due yet: kept.
        let t2 = 2_000 + SESSION_TTL_MS + 1;
        assert!(t2 < t1 + SWEEP_INTERVAL_MS);
        for s in [&mut a, &mut b] {
            step(s, write(8, 2, "other", t2)).unwrap();
            assert_eq!(s.session_count(), 2, "swept before the interval passed");
        }
        // Once the interval passed, both sweep it.
        for s in [&mut a, &mut b] {
            step(s, write(8, 3, "other", t1 + SWEEP_INTERVAL_MS)).unwrap();
            assert_eq!(
                s.session_count(),
                1,
                "client 7's idle session was not swept"
            );
        }
        assert_eq!(a.shards(), b.shards(), "replicas disagree after the sweep");
        assert_eq!(a.snapshot_bytes(), b.snapshot_bytes());
    }

    #[test]
    fn a_shard_with_many_sessions_moves_in_chunks_of_bounded_size() {
        // Defect: the last chunk of a migrating shard carried every session of the shard,
        // uncounted against the chunk size; with tens of thousands of recent clients it
        // outgrew the command size limit and the shard stayed `pulling` for ever.
        let mut a = one_group_owning_everything();
        let moving = a.shard_of(b"k0");
        let mut clients = 0u64;
        for i in 0..200_000u64 {
            let key = format!("k{}", i % 500);
            if a.shard_of(key.as_bytes()) != moving {
                continue;
            }
            clients += 1;
            step(&mut a, write(1_000 + i, 1, &key, 5)).unwrap();
            if clients == 20_000 {
                break;
            }
        }
        let moved = |num: u64| Config {
            num,
            shards: (0..4).map(|s| if s == moving { 2 } else { 1 }).collect(),
            groups: [(1, vec!["a:1".to_string()]), (2, vec!["b:1".to_string()])]
                .into_iter()
                .collect(),
        };
        step(
            &mut a,
            pb::command::Cmd::NextConfig(config_to_pb(&moved(2))),
        )
        .unwrap();
        let mut b = ShardKvState::temporary(2).unwrap();
        let first = Config {
            groups: [(1, vec!["a:1".to_string()])].into_iter().collect(),
            ..moved(1)
        };
        let first = Config {
            shards: vec![1; 4],
            ..first
        };
        step(&mut b, pb::command::Cmd::NextConfig(config_to_pb(&first))).unwrap();
        step(
            &mut b,
            pb::command::Cmd::NextConfig(config_to_pb(&moved(2))),
        )
        .unwrap();
        let max = 32 * 1024;
        let mut cursor = PullCursor::start();
        let mut chunks = 0;
        loop {
            let chunk = a.pull_chunk(2, moving, &cursor, max).unwrap().unwrap();
            let (cmd, next, complete) = install_command(2, moving, &cursor, chunk.into_reply());
            let cmd = pb::command::Cmd::InsertChunk(cmd);
            let size = pb::Command {
                cmd: Some(cmd.clone()),
            }
            .encoded_len();
            assert!(size <= max + 4096, "a chunk of {size} bytes (budget {max})");
            step(&mut b, cmd).unwrap();
            chunks += 1;
            cursor = next;
            if complete {
                break;
            }
            assert!(chunks < 10_000, "the pull does not end");
        }
        assert!(
            chunks > 10,
            "{chunks} chunks: the sessions did not need several"
        );
        assert_eq!(
            b.shards()[&moving].state,
            ShardState::Collecting { from: 1 }
        );
        assert_eq!(b.shards()[&moving].sessions, a.shards()[&moving].sessions);
        assert_eq!(b.shards()[&moving].sessions.len() as u64, clients);
        let held = a.store.get(moving, b"k0").unwrap();
        assert!(held.is_some());
        assert_eq!(b.store.get(moving, b"k0").unwrap(), held);
    }

    #[test]
    fn a_configuration_that_leaves_a_shard_with_data_ownerless_is_refused() {
        // Defect: a configuration giving a held shard to no group (the last group left)
        // made the group delete it, data included.
        let mut s = one_group_owning_everything();
        step(&mut s, write(1, 1, "k", 1)).unwrap();
        let held = s.shard_of(b"k");
        let mut next = Config {
            num: 2,
            shards: vec![1; 4],
            groups: [(1, vec!["a:1".to_string()])].into_iter().collect(),
        };
        next.shards[held as usize] = 0;
        let empty = (0..4).find(|i| *i != held).unwrap();
        next.shards[empty as usize] = 0;
        let before = s.snapshot_bytes();
        let out = step(&mut s, pb::command::Cmd::NextConfig(config_to_pb(&next)));
        assert!(
            matches!(out, Err(Refusal::Invalid(ref m)) if m.contains("no owner")),
            "{out:?}"
        );
        assert_eq!(s.config().num, 1);
        assert_eq!(get(&s, b"k").as_deref(), Some(&b"v"[..]));
        assert_eq!(s.snapshot_bytes(), before, "the refusal changed the state");
        // Only empty shards left ownerless: they go.
        next.shards[held as usize] = 1;
        step(&mut s, pb::command::Cmd::NextConfig(config_to_pb(&next))).unwrap();
        assert_eq!(s.config().num, 2);
        assert!(!s.shards().contains_key(&empty));
        assert_eq!(get(&s, b"k").as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn a_shard_export_is_the_shard_at_one_index_and_only_from_its_owner() {
        let mut s = one_group_owning_everything();
        for (seq, key) in ["a", "b", "c", "d", "e", "f"].into_iter().enumerate() {
            step(&mut s, write(1, seq as u64 + 1, key, 1)).unwrap();
        }
        let shard = s.shard_of(b"a");
        let export = s.export_shard(shard).unwrap().unwrap();
        assert_eq!(export.log_index, s.applied_index());
        assert_eq!((export.gid, export.config_num), (1, 1));
        let keys =
            |e: &ShardExport| -> Vec<(Bytes, Bytes)> { e.entries().map(|r| r.unwrap()).collect() };
        let before = keys(&export);
        assert!(before.iter().any(|(k, _)| k.as_ref() == b"a"));
        assert!(before.iter().all(|(k, _)| s.shard_of(k) == shard));
        // Writes after the export do not reach it.
        step(&mut s, write(2, 1, "a", 2)).unwrap();
        step(&mut s, write(2, 2, "a-new-key-0", 2)).unwrap();
        assert_eq!(keys(&export), before);
        // Only the owner exports; a shard out of range is a bad request.
        let other = ShardKvState::temporary(2).unwrap();
        assert!(matches!(
            other.export_shard(0).unwrap(),
            Err(Refusal::WrongGroup)
        ));
        assert!(matches!(
            s.export_shard(4).unwrap(),
            Err(Refusal::Invalid(m)) if m.contains("does not exist")
        ));
    }

    #[test]
    fn a_write_to_a_shard_not_owned_or_not_arrived_is_refused_and_changes_nothing() {
        let mut s = ShardKvState::temporary(2).unwrap();
        assert_eq!(step(&mut s, write(1, 1, "k", 1)), Err(Refusal::WrongGroup));
        let before = s.snapshot_bytes();
        let big = pb::command::Cmd::Write(pb::ClientWrite {
            key: Bytes::from(vec![b'k'; MAX_KEY_BYTES + 1]),
            ..Default::default()
        });
        assert!(matches!(step(&mut s, big), Err(Refusal::Invalid(_))));
        assert_eq!(s.snapshot_bytes(), before);
        // An operation this version does not know is refused, not applied as a put.
        let mut t = one_group_owning_everything();
        let before = t.snapshot_bytes();
        let unknown = pb::command::Cmd::Write(pb::ClientWrite {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            op: 99,
            id: Some(pb::RequestId {
                client_id: 1,
                seq: 1,
            }),
            now_ms: 1,
        });
        let out = step(&mut t, unknown);
        assert!(
            matches!(out, Err(Refusal::Invalid(ref m)) if m.contains("unknown")),
            "{out:?}"
        );
        assert_eq!(get(&t, b"k"), None);
        assert_eq!(t.snapshot_bytes(), before);
    }

    #[test]
    fn the_store_keeps_data_sessions_and_progress_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let put = |client, seq, key: &str, value: &str, op: pb::WriteOp| {
            pb::command::Cmd::Write(pb::ClientWrite {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::copy_from_slice(value.as_bytes()),
                op: op as i32,
                id: Some(pb::RequestId {
                    client_id: client,
                    seq,
                }),
                now_ms: 5,
            })
        };
        let snapshot = {
            let mut s = ShardKvState::open(1, dir.path()).unwrap();
            step(&mut s, next_config()).unwrap();
            step(&mut s, put(1, 1, "a", "1", pb::WriteOp::Put)).unwrap();
            step(&mut s, put(1, 2, "a", "23", pb::WriteOp::Append)).unwrap();
            step(&mut s, put(1, 3, "b", "x", pb::WriteOp::Put)).unwrap();
            step(&mut s, put(1, 4, "b", "", pb::WriteOp::Delete)).unwrap();
            step(&mut s, put(2, 1, "c", "yy", pb::WriteOp::Put)).unwrap();
            assert_eq!(s.applied_index(), 6);
            s.snapshot_bytes()
        };
        let mut s = ShardKvState::open(1, dir.path()).unwrap();
        assert_eq!(s.persisted_index(), 6, "the applied index was not stored");
        assert_eq!(get(&s, b"a").as_deref(), Some(&b"123"[..]));
        assert_eq!(get(&s, b"b"), None);
        assert_eq!(
            s.snapshot_bytes(),
            snapshot,
            "state differs after reopening"
        );
        let (keys, bytes) = s
            .shards()
            .values()
            .fold((0, 0), |(k, b), sh| (k + sh.keys, b + sh.bytes));
        assert_eq!((keys, bytes), (2, (1 + 3) + (1 + 2)), "counters not kept");
        // A retried write is still recognised as a duplicate after the reopen.
        step(&mut s, put(1, 2, "a", "23", pb::WriteOp::Append)).unwrap();
        assert_eq!(get(&s, b"a").as_deref(), Some(&b"123"[..]));
        // Another group's store is refused.
        drop(s);
        let err = ShardKvState::open(2, dir.path()).unwrap_err();
        assert!(err.to_string().contains("group 1"), "{err}");
    }

    #[test]
    fn restoring_a_snapshot_replaces_the_store_and_records_its_index() {
        let mut a = one_group_owning_everything();
        step(&mut a, write(1, 1, "k", 1)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        {
            let mut b = ShardKvState::open(1, dir.path()).unwrap();
            step(&mut b, next_config()).unwrap();
            step(&mut b, write(9, 1, "stale", 1)).unwrap();
            transfer(&a, &mut b, 40);
            assert_eq!(get(&b, b"stale"), None, "old data survived the restore");
        }
        let b = ShardKvState::open(1, dir.path()).unwrap();
        assert_eq!(b.persisted_index(), 40);
        assert_eq!(b.snapshot_bytes(), a.snapshot_bytes());
    }

    #[test]
    fn commands_of_one_run_see_each_other_and_reach_the_store_together() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ShardKvState::open(1, dir.path()).unwrap();
        step(&mut s, next_config()).unwrap();
        let stored = s.persisted_index();
        // One run: an append on top of a put that is not in the store yet.
        s.apply(stored + 1, write(1, 1, "k", 5)).unwrap().unwrap();
        s.apply(stored + 2, write(1, 2, "k", 6)).unwrap().unwrap();
        assert_eq!(s.persisted_index(), stored, "written before the run ended");
        s.flush_applied().unwrap();
        assert_eq!(s.persisted_index(), stored + 2);
        assert_eq!(get(&s, b"k").as_deref(), Some(&b"vv"[..]));
        // A run cut off by a crash (no flush, no close) leaves the store at the previous run.
        s.apply(stored + 3, write(1, 3, "k", 7)).unwrap().unwrap();
        drop(s);
        let s = ShardKvState::open(1, dir.path()).unwrap();
        assert_eq!(s.persisted_index(), stored + 2);
        assert_eq!(get(&s, b"k").as_deref(), Some(&b"vv"[..]));
    }

    #[test]
    fn a_run_with_large_values_is_written_in_parts_of_bounded_size() {
        let mut s = one_group_owning_everything();
        let stored = s.persisted_index();
        let big = |seq: u64| {
            pb::command::Cmd::Write(pb::ClientWrite {
                key: Bytes::from(format!("big-{seq}")),
                value: Bytes::from(vec![b'x'; 600 * 1024]),
                op: pb::WriteOp::Put as i32,
                id: Some(pb::RequestId { client_id: 1, seq }),
                now_ms: 1,
            })
        };
        s.apply(stored + 1, big(1)).unwrap().unwrap();
        assert_eq!(s.persisted_index(), stored, "600 KiB is under the limit");
        s.apply(stored + 2, big(2)).unwrap().unwrap();
        assert_eq!(
            s.persisted_index(),
            stored + 2,
            "a run past the redo limit was not written at once"
        );
        s.apply(stored + 3, big(3)).unwrap().unwrap();
        s.flush_applied().unwrap();
        assert_eq!(s.persisted_index(), stored + 3);
        assert_eq!(get(&s, b"big-3").map(|v| v.len()), Some(600 * 1024));
    }
}
