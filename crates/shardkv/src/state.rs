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

use bytes::Bytes;
use prost::Message;
use quorumkv_common::shard_of;
use quorumkv_proto::shardkv as pb;
use quorumkv_shardctrler_client::Config;

use crate::shard::{Session, Shard, ShardState};

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
    /// (shard, previous owner, its servers, cursor) for shards being pulled.
    pub pulling: Vec<(u64, u64, Vec<String>, Option<Bytes>)>,
    /// (shard, previous owner, its servers) for shards whose old copy must be deleted.
    pub collecting: Vec<(u64, u64, Vec<String>)>,
}

/// One chunk of a shard for its new owner.
pub struct Chunk {
    pub entries: Vec<(Bytes, Bytes)>,
    pub done: bool,
    pub sessions: Vec<(u64, Session)>,
}

/// The replica group's state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardKvState {
    gid: u64,
    num_shards: usize,
    config: Config,
    prev: Config,
    shards: BTreeMap<u64, Shard>,
    clock_ms: u64,
    writes: u64,
    /// The log clock at the last session sweep.
    last_sweep_ms: u64,
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

impl ShardKvState {
    /// The state of group `gid` before it has seen any configuration. `num_shards` is only a
    /// starting guess: the first configuration applied fixes it.
    pub fn new(gid: u64, num_shards: usize) -> Self {
        ShardKvState {
            gid,
            num_shards,
            config: empty_config(num_shards),
            prev: empty_config(num_shards),
            shards: BTreeMap::new(),
            clock_ms: 0,
            writes: 0,
            last_sweep_ms: 0,
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
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>, Refusal> {
        let shard = self.check_serving(self.shard_of(key))?;
        Ok(shard.data.get(key).cloned())
    }

    /// Applies one encoded command.
    pub fn apply_bytes(&mut self, bytes: &[u8]) -> Outcome {
        match pb::Command::decode(bytes) {
            Ok(pb::Command { cmd: Some(cmd) }) => self.apply(cmd),
            _ => Err(Refusal::Invalid("undecodable command".into())),
        }
    }

    pub fn apply(&mut self, cmd: pb::command::Cmd) -> Outcome {
        match cmd {
            pb::command::Cmd::Write(w) => self.apply_write(w),
            pb::command::Cmd::NextConfig(c) => self.apply_next_config(config_from_pb(c)),
            pb::command::Cmd::InsertChunk(c) => self.apply_insert_chunk(c),
            pb::command::Cmd::ShardDone(d) => self.apply_shard_done(d),
        }
    }

    fn apply_write(&mut self, w: pb::ClientWrite) -> Outcome {
        self.clock_ms = self.clock_ms.max(w.now_ms);
        let id = w.id.unwrap_or_default();
        if w.key.len() > MAX_KEY_BYTES || w.value.len() > MAX_VALUE_BYTES {
            return Err(Refusal::Invalid(format!(
                "key or value too large (limits: {MAX_KEY_BYTES} and {MAX_VALUE_BYTES} bytes)"
            )));
        }
        let shard_id = self.shard_of(&w.key);
        self.check_serving(shard_id)?;
        let now = self.clock_ms;
        let shard = self.shards.get_mut(&shard_id).expect("checked above");
        if shard.is_duplicate(id.client_id, id.seq) {
            return Ok(());
        }
        match pb::WriteOp::try_from(w.op).unwrap_or(pb::WriteOp::Put) {
            pb::WriteOp::Put => shard.put(w.key, w.value),
            pb::WriteOp::Append => {
                let old = shard.data.get(&w.key).cloned().unwrap_or_default();
                if old.len() + w.value.len() > MAX_VALUE_BYTES {
                    return Err(Refusal::Invalid(format!(
                        "append would make the value larger than {MAX_VALUE_BYTES} bytes"
                    )));
                }
                let mut v = Vec::with_capacity(old.len() + w.value.len());
                v.extend_from_slice(&old);
                v.extend_from_slice(&w.value);
                shard.put(w.key, v.into());
            }
            pb::WriteOp::Delete => shard.remove(&w.key),
        }
        shard.record(id.client_id, id.seq, now);
        self.writes += 1;
        if now >= self.last_sweep_ms + SWEEP_INTERVAL_MS {
            self.expire_sessions();
            self.last_sweep_ms = now;
        }
        Ok(())
    }

    /// Forgets sessions idle for longer than the TTL, by the log's own clock.
    fn expire_sessions(&mut self) {
        let horizon = self.clock_ms.saturating_sub(SESSION_TTL_MS);
        for s in self.shards.values_mut() {
            s.sessions.retain(|_, sess| sess.last_ms >= horizon);
        }
    }

    fn apply_next_config(&mut self, next: Config) -> Outcome {
        if next.num != self.config.num + 1 {
            return Err(Refusal::NotReady(format!(
                "configuration {} is not the successor of {}",
                next.num, self.config.num
            )));
        }
        if self.shards.values().any(|s| s.state != ShardState::Serving) {
            return Err(Refusal::NotReady(
                "a migration of the current configuration is unfinished".into(),
            ));
        }
        if self.config.num == 0 {
            self.num_shards = next.shards.len().max(1);
        } else if next.shards.len() != self.num_shards {
            return Err(Refusal::Invalid(format!(
                "configuration {} has {} shards, expected {}",
                next.num,
                next.shards.len(),
                self.num_shards
            )));
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
                        cursor: None,
                    }
                };
                self.shards.insert(shard, Shard::new(state));
            } else if before == self.gid && after != self.gid {
                if after == 0 {
                    // No group owns it any more (the last group left): nobody will pull it.
                    self.shards.remove(&shard);
                } else if let Some(s) = self.shards.get_mut(&shard) {
                    s.state = ShardState::HandingOff { to: after };
                }
            }
        }
        self.prev = std::mem::replace(&mut self.config, next);
        Ok(())
    }

    fn apply_insert_chunk(&mut self, c: pb::InsertChunk) -> Outcome {
        if c.config_num != self.config.num {
            return Err(Refusal::NotReady("chunk of another configuration".into()));
        }
        let Some(shard) = self.shards.get_mut(&c.shard) else {
            return Err(Refusal::NotReady(format!(
                "shard {} is not expected",
                c.shard
            )));
        };
        let ShardState::Pulling { from, cursor } = &shard.state else {
            // Already complete: a duplicate chunk.
            return Ok(());
        };
        let from = *from;
        if cursor.as_deref() != c.after_key.as_deref() {
            return Err(Refusal::NotReady(
                "chunk does not continue the shard".into(),
            ));
        }
        let mut last = cursor.clone();
        for kv in c.entries {
            last = Some(kv.key.clone());
            shard.put(kv.key, kv.value);
        }
        if c.done {
            for s in c.sessions {
                shard.record(s.client_id, s.seq, s.last_ms);
            }
            shard.state = ShardState::Collecting { from };
        } else {
            shard.state = ShardState::Pulling { from, cursor: last };
        }
        Ok(())
    }

    fn apply_shard_done(&mut self, d: pb::ShardDone) -> Outcome {
        if d.config_num > self.config.num {
            return Err(Refusal::NotReady(format!(
                "this group has not reached configuration {} yet",
                d.config_num
            )));
        }
        if d.config_num < self.config.num {
            return Ok(()); // Long done.
        }
        match self.shards.get(&d.shard).map(|s| &s.state) {
            Some(ShardState::HandingOff { .. }) => {
                self.shards.remove(&d.shard);
            }
            Some(ShardState::Collecting { .. }) => {
                self.shards.get_mut(&d.shard).unwrap().state = ShardState::Serving;
            }
            _ => {}
        }
        Ok(())
    }

    /// A chunk of a shard we are handing off, for its new owner (at most ~`max_bytes` of keys
    /// and values, at least one entry).
    pub fn pull_chunk(
        &self,
        config_num: u64,
        shard: u64,
        after: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<Chunk, Refusal> {
        if self.config.num < config_num {
            return Err(Refusal::NotReady(format!(
                "this group is at configuration {}, the shard moves in {config_num}",
                self.config.num
            )));
        }
        let s = match self.shards.get(&shard) {
            Some(s)
                if self.config.num == config_num
                    && matches!(s.state, ShardState::HandingOff { .. }) =>
            {
                s
            }
            _ => {
                return Err(Refusal::Invalid(format!(
                    "shard {shard} is not being handed off in configuration {config_num}"
                )))
            }
        };
        let range = match after {
            Some(k) => s
                .data
                .range::<[u8], _>((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded)),
            None => s.data.range::<[u8], _>(..),
        };
        let mut entries = Vec::new();
        let mut size = 0;
        let mut done = true;
        for (k, v) in range {
            if !entries.is_empty() && size + k.len() + v.len() > max_bytes {
                done = false;
                break;
            }
            size += k.len() + v.len();
            entries.push((k.clone(), v.clone()));
        }
        let sessions = if done {
            s.sessions.iter().map(|(c, s)| (*c, *s)).collect()
        } else {
            Vec::new()
        };
        Ok(Chunk {
            entries,
            done,
            sessions,
        })
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
                    v.pulling
                        .push((*shard, *from, servers(*from), cursor.clone()));
                }
                ShardState::Collecting { from } => {
                    v.settled = false;
                    v.collecting.push((*shard, *from, servers(*from)));
                }
                ShardState::HandingOff { .. } => v.settled = false,
            }
        }
        v
    }

    pub fn encode_snapshot(&self) -> Vec<u8> {
        let kv = |(k, v): (&Bytes, &Bytes)| pb::KeyValue {
            key: k.clone(),
            value: v.clone(),
        };
        let snap = pb::StateSnapshot {
            gid: self.gid,
            num_shards: self.num_shards as u64,
            config: Some(config_to_pb(&self.config)),
            prev_config: Some(config_to_pb(&self.prev)),
            clock_ms: self.clock_ms,
            writes: self.writes,
            last_sweep_ms: self.last_sweep_ms,
            shards: self
                .shards
                .iter()
                .map(|(id, s)| pb::ShardSnapshot {
                    shard: *id,
                    state: s.state.name().to_string(),
                    peer_gid: s.state.peer_gid(),
                    cursor: match &s.state {
                        ShardState::Pulling { cursor, .. } => cursor.clone(),
                        _ => None,
                    },
                    entries: s.data.iter().map(kv).collect(),
                    sessions: s
                        .sessions
                        .iter()
                        .map(|(c, sess)| pb::Session {
                            client_id: *c,
                            seq: sess.seq,
                            last_ms: sess.last_ms,
                        })
                        .collect(),
                })
                .collect(),
        };
        snap.encode_to_vec()
    }

    pub fn decode_snapshot(bytes: &[u8]) -> Result<Self, String> {
        let snap = pb::StateSnapshot::decode(bytes).map_err(|e| e.to_string())?;
        let mut shards = BTreeMap::new();
        for s in snap.shards {
            let state = match s.state.as_str() {
                "serving" => ShardState::Serving,
                "pulling" => ShardState::Pulling {
                    from: s.peer_gid,
                    cursor: s.cursor,
                },
                "collecting" => ShardState::Collecting { from: s.peer_gid },
                "handing-off" => ShardState::HandingOff { to: s.peer_gid },
                other => return Err(format!("unknown shard state {other:?}")),
            };
            let mut shard = Shard::new(state);
            for kv in s.entries {
                shard.put(kv.key, kv.value);
            }
            for sess in s.sessions {
                shard.record(sess.client_id, sess.seq, sess.last_ms);
            }
            shards.insert(s.shard, shard);
        }
        let num_shards = snap.num_shards as usize;
        Ok(ShardKvState {
            gid: snap.gid,
            num_shards,
            config: snap
                .config
                .map(config_from_pb)
                .unwrap_or_else(|| empty_config(num_shards)),
            prev: snap
                .prev_config
                .map(config_from_pb)
                .unwrap_or_else(|| empty_config(num_shards)),
            shards,
            clock_ms: snap.clock_ms,
            writes: snap.writes,
            last_sweep_ms: snap.last_sweep_ms,
        })
    }
}

impl quorumkv_raft_core::StateMachine for ShardKvState {
    fn apply(&mut self, _index: u64, command: &[u8]) -> Vec<u8> {
        encode_outcome(&self.apply_bytes(command))
    }

    fn snapshot(&self) -> Vec<u8> {
        self.encode_snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let restored = Self::decode_snapshot(snapshot)?;
        if restored.gid != self.gid {
            return Err(format!(
                "snapshot of group {} cannot be restored in group {}",
                restored.gid, self.gid
            ));
        }
        *self = restored;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumkv_raft_core::StateMachine;

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

    fn one_group_owning_everything() -> ShardKvState {
        let mut s = ShardKvState::new(1, 4);
        let config = Config {
            num: 1,
            shards: vec![1; 4],
            groups: [(1, vec!["a:1".to_string()])].into_iter().collect(),
        };
        s.apply(pb::command::Cmd::NextConfig(config_to_pb(&config)))
            .unwrap();
        s
    }

    #[test]
    fn idle_sessions_expire_by_the_log_clock_and_identically_after_a_snapshot() {
        let mut a = one_group_owning_everything();
        a.apply(write(7, 1, "k", 1_000)).unwrap();
        // A retry within the TTL is a duplicate: applied once.
        a.apply(write(7, 1, "k", 2_000)).unwrap();
        assert_eq!(a.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        // Client 8 writes at t1: a sweep runs (client 7 is not idle long enough yet).
        let t1 = SESSION_TTL_MS;
        a.apply(write(8, 1, "other", t1)).unwrap();
        assert_eq!(a.session_count(), 2);

        // A replica restored from a snapshot taken now must sweep at the same points of the
        // log (so the time of the last sweep travels in the snapshot).
        let mut b = ShardKvState::new(1, 4);
        b.restore(&a.snapshot()).unwrap();

        // Client 7 is now idle past the TTL, but the next sweep is not due yet: kept.
        let t2 = 2_000 + SESSION_TTL_MS + 1;
        assert!(t2 < t1 + SWEEP_INTERVAL_MS);
        for s in [&mut a, &mut b] {
            s.apply(write(8, 2, "other", t2)).unwrap();
            assert_eq!(s.session_count(), 2, "swept before the interval passed");
        }
        // Once the interval passed, both sweep it.
        for s in [&mut a, &mut b] {
            s.apply(write(8, 3, "other", t1 + SWEEP_INTERVAL_MS))
                .unwrap();
            assert_eq!(
                s.session_count(),
                1,
                "client 7's idle session was not swept"
            );
        }
        assert_eq!(a, b, "replicas disagree after the sweep");
        assert_eq!(a.snapshot(), b.snapshot());
    }

    #[test]
    fn a_write_to_a_shard_not_owned_or_not_arrived_is_refused_and_changes_nothing() {
        let mut s = ShardKvState::new(2, 4);
        assert_eq!(s.apply(write(1, 1, "k", 1)), Err(Refusal::WrongGroup));
        let before = s.snapshot();
        let big = pb::command::Cmd::Write(pb::ClientWrite {
            key: Bytes::from(vec![b'k'; MAX_KEY_BYTES + 1]),
            ..Default::default()
        });
        assert!(matches!(s.apply(big), Err(Refusal::Invalid(_))));
        assert_eq!(s.snapshot(), before);
    }
}
