//! The replica group's on-disk store: one sled tree with the shards' keys and values, the
//! exactly-once sessions, each shard's header and the group's progress. The state machine
//! writes the effects of each run of applied commands together with the last one's log index
//! as ONE unit, so the store always holds exactly the effects of the log up to the index it
//! records.
//!
//! Layout (integers big-endian, so each shard's keys form one contiguous ordered range):
//!
//! ```text
//!   'd' shard:u64 key          -> value
//!   's' shard:u64 client:u64   -> seq:u64 last_ms:u64
//!   'h' shard:u64              -> shard header (state, peer group, key and byte counts, cursor)
//!   'm'                        -> group metadata (gid, shard count, current and previous config)
//!   'a'                        -> applied index, log clock, writes, time of the last sweep
//!   'w'                        -> the latest run's effects (the redo record, below)
//! ```
//!
//! Atomicity without sled batches: in sled 0.34 every `apply_batch` forces its log buffers to
//! disk (several `pwrite` + `sync_file_range` rounds, measured with strace) and takes a
//! process-wide lock, which cut put throughput by two thirds. So a run's effects are written
//! as plain inserts, after ONE insert of a redo record (`'w'`) that lists them all and the new
//! progress. sled recovers a prefix of its writes after a crash; whatever the prefix,
//! [`Store::open`] finds either the previous run's redo record with all of that run's effects,
//! or this run's redo record with some of its effects, and in both cases writes the effects of
//! the record it finds again (they are idempotent: values, removals, progress).
//!
//! Nothing is flushed: durability comes from the Raft log, which holds every entry after the
//! latest snapshot. The raft core re-applies the entries after the index recorded here
//! (`StateMachine::persisted_index`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bytes::Bytes;
use prost::Message;
use quorumkv_proto::shardkv as pb;

use crate::shard::{Session, Shard, ShardState};

/// sled's page cache for one member's store. Data beyond it is read from the OS page cache.
const CACHE_BYTES: u64 = 128 << 20;

const DATA: u8 = b'd';
const SESSION: u8 = b's';
const HEADER: u8 = b'h';
const META: &[u8] = b"m";
const PROGRESS: &[u8] = b"a";
const REDO: &[u8] = b"w";
/// sled stores values larger than about a quarter of a segment in separate blob files, which
/// it never syncs; a redo record must stay in the log, hence 16 MiB segments (and
/// [`REDO_LIMIT_BYTES`]).
const SEGMENT_BYTES: usize = 16 << 20;
/// A run's pending effects are written as soon as they pass this size, so a redo record holds
/// at most this plus one command (a 1 MiB value, or a 512 KiB migration chunk and its
/// sessions): well under a quarter of a segment.
pub const REDO_LIMIT_BYTES: usize = 1 << 20;

/// The store failed (I/O) or holds bytes this version cannot read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("shard store: {0}")]
pub struct StoreError(pub String);

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError(e.to_string())
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError(format!("{what} is corrupt"))
}

fn prefixed(tag: u8, shard: u64, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + rest.len());
    k.push(tag);
    k.extend_from_slice(&shard.to_be_bytes());
    k.extend_from_slice(rest);
    k
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The group's progress through its log, written with every applied command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub applied: u64,
    pub clock_ms: u64,
    pub writes: u64,
    pub last_sweep_ms: u64,
}

impl Progress {
    fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        for (i, v) in [self.applied, self.clock_ms, self.writes, self.last_sweep_ms]
            .into_iter()
            .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_be_bytes());
        }
        b
    }

    fn decode(b: &[u8]) -> Result<Self, StoreError> {
        let f = |i: usize| u64_at(b, i * 8).ok_or_else(|| corrupt("the progress record"));
        Ok(Progress {
            applied: f(0)?,
            clock_ms: f(1)?,
            writes: f(2)?,
            last_sweep_ms: f(3)?,
        })
    }
}

/// Everything but the keys and values, read once when the member starts.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Group metadata (a `StateSnapshot` without shards); `None` for a new store.
    pub meta: Option<pb::StateSnapshot>,
    pub progress: Progress,
    pub shards: BTreeMap<u64, Shard>,
}

fn encode_header(s: &Shard) -> Vec<u8> {
    let (tag, cursor) = match &s.state {
        ShardState::Serving => (0u8, None),
        ShardState::Pulling { cursor, .. } => (1, cursor.as_ref()),
        ShardState::Collecting { .. } => (2, None),
        ShardState::HandingOff { .. } => (3, None),
    };
    let mut b = Vec::with_capacity(26 + cursor.map_or(0, |c| c.len()));
    b.push(tag);
    b.extend_from_slice(&s.state.peer_gid().to_be_bytes());
    b.extend_from_slice(&s.keys.to_be_bytes());
    b.extend_from_slice(&s.bytes.to_be_bytes());
    if let Some(c) = cursor {
        b.push(1);
        b.extend_from_slice(c);
    } else {
        b.push(0);
    }
    b
}

fn decode_header(b: &[u8]) -> Result<Shard, StoreError> {
    let bad = || corrupt("a shard header");
    let peer = u64_at(b, 1).ok_or_else(bad)?;
    let keys = u64_at(b, 9).ok_or_else(bad)?;
    let bytes = u64_at(b, 17).ok_or_else(bad)?;
    let cursor = match b.get(25) {
        Some(1) => Some(Bytes::copy_from_slice(&b[26..])),
        Some(0) => None,
        _ => return Err(bad()),
    };
    let state = match b.first() {
        Some(0) => ShardState::Serving,
        Some(1) => ShardState::Pulling { from: peer, cursor },
        Some(2) => ShardState::Collecting { from: peer },
        Some(3) => ShardState::HandingOff { to: peer },
        _ => return Err(bad()),
    };
    Ok(Shard {
        state,
        sessions: BTreeMap::new(),
        keys,
        bytes,
    })
}

/// One change to the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
    /// Every key starting with these bytes.
    RemovePrefix(Vec<u8>),
}

/// The effects of a run of applied commands, written as one unit by [`Store::commit`]. It
/// also answers reads of the values it changes, so later commands of the run see them.
#[derive(Debug, Default)]
pub struct WriteBatch {
    ops: Vec<Op>,
    /// Index in `ops` of the latest `Put` or `Remove` of each key.
    latest: HashMap<Vec<u8>, usize>,
    /// (index in `ops`, prefix) of each `RemovePrefix`.
    cleared: Vec<(usize, Vec<u8>)>,
    /// Bytes of keys and values in `ops`.
    bytes: usize,
}

impl WriteBatch {
    fn push(&mut self, op: Op) {
        let i = self.ops.len();
        self.bytes += match &op {
            Op::Put(k, v) => k.len() + v.len(),
            Op::Remove(k) | Op::RemovePrefix(k) => k.len(),
        };
        match &op {
            Op::Put(k, _) | Op::Remove(k) => {
                self.latest.insert(k.clone(), i);
            }
            Op::RemovePrefix(p) => self.cleared.push((i, p.clone())),
        }
        self.ops.push(op);
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of keys and values written or removed (about the redo record's size).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What this batch says about `key`: `Some(Some(v))` written, `Some(None)` removed,
    /// `None` untouched (read the store).
    fn lookup(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        let at = self.latest.get(key).copied();
        let cleared_after = |i: Option<usize>| {
            self.cleared
                .iter()
                .any(|(j, p)| i.is_none_or(|i| *j > i) && key.starts_with(p))
        };
        if cleared_after(at) {
            return Some(None);
        }
        match at.map(|i| &self.ops[i]) {
            Some(Op::Put(_, v)) => Some(Some(v)),
            Some(_) => Some(None),
            None => None,
        }
    }

    /// The ops that matter: each key's latest put or removal, and every prefix removal.
    fn effective(&self) -> impl Iterator<Item = &Op> {
        self.ops.iter().enumerate().filter_map(|(i, op)| match op {
            Op::Put(k, _) | Op::Remove(k) => (self.latest.get(k) == Some(&i)).then_some(op),
            Op::RemovePrefix(_) => Some(op),
        })
    }

    pub fn put_value(&mut self, shard: u64, key: &[u8], value: &[u8]) {
        self.push(Op::Put(prefixed(DATA, shard, key), value.to_vec()));
    }

    pub fn remove_value(&mut self, shard: u64, key: &[u8]) {
        self.push(Op::Remove(prefixed(DATA, shard, key)));
    }

    pub fn put_session(&mut self, shard: u64, client: u64, s: Session) {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&s.seq.to_be_bytes());
        v.extend_from_slice(&s.last_ms.to_be_bytes());
        self.push(Op::Put(prefixed(SESSION, shard, &client.to_be_bytes()), v));
    }

    pub fn remove_session(&mut self, shard: u64, client: u64) {
        self.push(Op::Remove(prefixed(SESSION, shard, &client.to_be_bytes())));
    }

    pub fn put_header(&mut self, shard: u64, s: &Shard) {
        self.push(Op::Put(prefixed(HEADER, shard, &[]), encode_header(s)));
    }

    pub fn put_meta(&mut self, meta: &pb::StateSnapshot) {
        self.push(Op::Put(META.to_vec(), meta.encode_to_vec()));
    }

    /// Everything stored for `shard`: its keys and values, sessions and header.
    pub fn remove_shard(&mut self, shard: u64) {
        self.push(Op::RemovePrefix(prefixed(DATA, shard, &[])));
        self.push(Op::RemovePrefix(prefixed(SESSION, shard, &[])));
        self.push(Op::Remove(prefixed(HEADER, shard, &[])));
    }

    /// The redo record: the progress, then each op as a tag and length-prefixed bytes.
    fn encode(&self, progress: Progress) -> Vec<u8> {
        let size: usize = self
            .effective()
            .map(|op| match op {
                Op::Put(k, v) => 9 + k.len() + v.len(),
                Op::Remove(k) | Op::RemovePrefix(k) => 5 + k.len(),
            })
            .sum();
        let mut b = Vec::with_capacity(32 + size);
        b.extend_from_slice(&progress.encode());
        let bytes = |b: &mut Vec<u8>, x: &[u8]| {
            b.extend_from_slice(&(x.len() as u32).to_be_bytes());
            b.extend_from_slice(x);
        };
        for op in self.effective() {
            match op {
                Op::Put(k, v) => {
                    b.push(0);
                    bytes(&mut b, k);
                    bytes(&mut b, v);
                }
                Op::Remove(k) => {
                    b.push(1);
                    bytes(&mut b, k);
                }
                Op::RemovePrefix(k) => {
                    b.push(2);
                    bytes(&mut b, k);
                }
            }
        }
        b
    }

    fn decode(mut b: &[u8]) -> Result<(Self, Progress), StoreError> {
        let bad = || corrupt("the redo record");
        let progress = Progress::decode(b.get(..32).ok_or_else(bad)?)?;
        b = &b[32..];
        let take = |b: &mut &[u8]| -> Result<Vec<u8>, StoreError> {
            let n = u32::from_be_bytes(b.get(..4).ok_or_else(bad)?.try_into().unwrap()) as usize;
            let x = b.get(4..4 + n).ok_or_else(bad)?.to_vec();
            *b = &b[4 + n..];
            Ok(x)
        };
        let mut batch = WriteBatch::default();
        while let Some((&tag, rest)) = b.split_first() {
            b = rest;
            batch.push(match tag {
                0 => {
                    let k = take(&mut b)?;
                    Op::Put(k, take(&mut b)?)
                }
                1 => Op::Remove(take(&mut b)?),
                2 => Op::RemovePrefix(take(&mut b)?),
                _ => return Err(bad()),
            });
        }
        Ok((batch, progress))
    }
}

/// One member's store (see the module docs).
pub struct Store {
    /// The tree and its database; `None` once closed.
    open: Option<(sled::Tree, sled::Db)>,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .segment_size(SEGMENT_BYTES)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(|e| StoreError(format!("{}: {e}", dir.display())))?;
        let store = Self::with_db(db)?;
        store.redo()?;
        Ok(store)
    }

    /// A store deleted when dropped (tests and tools).
    pub fn temporary() -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(16 << 20)
            .open()?;
        Self::with_db(db)
    }

    fn with_db(db: sled::Db) -> Result<Self, StoreError> {
        let tree = db.open_tree("shardkv")?;
        Ok(Store {
            open: Some((tree, db)),
        })
    }

    /// After a restart: writes the effects of the latest redo record again (see the module
    /// docs), so the store holds exactly the effects up to the index it records.
    fn redo(&self) -> Result<(), StoreError> {
        if let Some(record) = self.tree()?.get(REDO)? {
            let (batch, progress) = WriteBatch::decode(&record)?;
            self.write(&batch, progress)?;
        }
        Ok(())
    }

    /// Writes `batch`'s effects, then the progress record.
    fn write(&self, batch: &WriteBatch, progress: Progress) -> Result<(), StoreError> {
        self.write_ops(batch)?;
        self.tree()?.insert(PROGRESS, &progress.encode()[..])?;
        Ok(())
    }

    fn write_ops(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        let tree = self.tree()?;
        for op in batch.effective() {
            match op {
                Op::Put(k, v) => {
                    tree.insert(k.as_slice(), v.as_slice())?;
                }
                Op::Remove(k) => {
                    tree.remove(k.as_slice())?;
                }
                Op::RemovePrefix(p) => {
                    for k in tree.scan_prefix(p).keys() {
                        tree.remove(k?)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn tree(&self) -> Result<&sled::Tree, StoreError> {
        match &self.open {
            Some((tree, _)) => Ok(tree),
            None => Err(StoreError(
                "the store is closed (the member stopped)".into(),
            )),
        }
    }

    /// Flushes and closes the store, releasing its directory. Later calls fail.
    pub fn close(&mut self) {
        // Dropping the tree and the database releases the directory.
        if let Some((_tree, db)) = self.open.take() {
            if let Err(e) = db.flush() {
                tracing::warn!(error = %e, "flushing the shard store on close failed");
            }
        }
    }

    /// Reads the metadata, progress, shard headers and sessions.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let meta = match self.tree()?.get(META)? {
            Some(b) => {
                Some(pb::StateSnapshot::decode(&b[..]).map_err(|_| corrupt("the group metadata"))?)
            }
            None => None,
        };
        let progress = match self.tree()?.get(PROGRESS)? {
            Some(b) => Progress::decode(&b)?,
            None => Progress::default(),
        };
        let mut shards = BTreeMap::new();
        for kv in self.tree()?.scan_prefix([HEADER]) {
            let (k, v) = kv?;
            let shard = u64_at(&k, 1).ok_or_else(|| corrupt("a shard header key"))?;
            shards.insert(shard, decode_header(&v)?);
        }
        for kv in self.tree()?.scan_prefix([SESSION]) {
            let (k, v) = kv?;
            let bad = || corrupt("a session");
            let shard = u64_at(&k, 1).ok_or_else(bad)?;
            let client = u64_at(&k, 9).ok_or_else(bad)?;
            let s = Session {
                seq: u64_at(&v, 0).ok_or_else(bad)?,
                last_ms: u64_at(&v, 8).ok_or_else(bad)?,
            };
            shards
                .get_mut(&shard)
                .ok_or_else(|| {
                    StoreError(format!("a session of shard {shard}, which is not held"))
                })?
                .sessions
                .insert(client, s);
        }
        Ok(Loaded {
            meta,
            progress,
            shards,
        })
    }

    pub fn get(&self, shard: u64, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        self.get_through(&WriteBatch::default(), shard, key)
    }

    /// The value under `key` as of `pending` (not yet committed) applied to the store.
    pub fn get_through(
        &self,
        pending: &WriteBatch,
        shard: u64,
        key: &[u8],
    ) -> Result<Option<Bytes>, StoreError> {
        self.read_through(pending, shard, key, Bytes::copy_from_slice)
    }

    /// The size of the value under `key` as of `pending` applied to the store, if any (without
    /// copying it).
    pub fn value_len_through(
        &self,
        pending: &WriteBatch,
        shard: u64,
        key: &[u8],
    ) -> Result<Option<usize>, StoreError> {
        self.read_through(pending, shard, key, <[u8]>::len)
    }

    fn read_through<T>(
        &self,
        pending: &WriteBatch,
        shard: u64,
        key: &[u8],
        f: impl Fn(&[u8]) -> T,
    ) -> Result<Option<T>, StoreError> {
        let k = prefixed(DATA, shard, key);
        match pending.lookup(&k) {
            Some(v) => Ok(v.map(f)),
            None => Ok(self.tree()?.get(k)?.map(|v| f(&v))),
        }
    }

    /// The keys and values of `shard` in key order, after `after` (exclusive) if given.
    pub fn scan(
        &self,
        shard: u64,
        after: Option<&[u8]>,
    ) -> Result<impl Iterator<Item = Result<(Bytes, Bytes), StoreError>>, StoreError> {
        let start = prefixed(DATA, shard, after.unwrap_or_default());
        let end = prefixed(DATA, shard + 1, &[]);
        let skip = after.map(|_| start.clone());
        Ok(self
            .tree()?
            .range(start..end)
            .filter(move |kv| match (kv, &skip) {
                (Ok((k, _)), Some(s)) => k.as_ref() != s.as_slice(),
                _ => true,
            })
            .map(|kv| {
                let (k, v) = kv?;
                Ok((Bytes::copy_from_slice(&k[9..]), Bytes::copy_from_slice(&v)))
            }))
    }

    /// Writes `batch` and the progress record as one unit (see the module docs): first the
    /// redo record, then the effects.
    pub fn commit(&self, batch: WriteBatch, progress: Progress) -> Result<(), StoreError> {
        self.tree()?.insert(REDO, batch.encode(progress))?;
        self.write(&batch, progress)
    }

    /// Writes `batch` without a redo record, while a snapshot is loaded into a cleared store
    /// (which has no progress record until the load is complete, so a crash in between makes
    /// the raft core restore the snapshot again).
    pub fn load_part(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.write_ops(&batch)
    }

    /// Removes everything (before a snapshot is installed). The progress and redo records go
    /// first, so a crash in between leaves a store that asks to be restored again.
    pub fn clear(&self) -> Result<(), StoreError> {
        let tree = self.tree()?;
        tree.remove(PROGRESS)?;
        tree.remove(REDO)?;
        tree.clear()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(applied: u64) -> Progress {
        Progress {
            applied,
            clock_ms: applied * 10,
            writes: applied,
            last_sweep_ms: 0,
        }
    }

    #[test]
    fn a_command_cut_short_by_a_crash_is_completed_from_its_redo_record() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut first = WriteBatch::default();
            first.put_value(3, b"a", b"1");
            first.put_value(4, b"gone", b"x");
            store.commit(first, progress(1)).unwrap();
            // The second command: its redo record and only the first of its effects reach the
            // store before the "crash".
            let mut second = WriteBatch::default();
            second.put_value(3, b"b", b"2");
            second.remove_value(3, b"a");
            second.remove_shard(4);
            let tree = store.tree().unwrap();
            tree.insert(REDO, second.encode(progress(2))).unwrap();
            tree.insert(prefixed(DATA, 3, b"b"), &b"2"[..]).unwrap();
            assert_eq!(store.load().unwrap().progress, progress(1));
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap().progress, progress(2));
        assert_eq!(store.get(3, b"a").unwrap(), None);
        assert_eq!(store.get(3, b"b").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(store.get(4, b"gone").unwrap(), None);
        // Redoing is idempotent: a second restart changes nothing.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap().progress, progress(2));
        assert_eq!(store.get(3, b"b").unwrap().as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn redo_records_round_trip_and_truncation_is_refused() {
        let mut b = WriteBatch::default();
        b.put_value(1, b"k", &[0u8; 300]);
        b.remove_session(2, 9);
        b.remove_shard(5);
        let bytes = b.encode(progress(7));
        let (back, p) = WriteBatch::decode(&bytes).unwrap();
        assert_eq!((back.ops, p), (b.ops, progress(7)));
        assert!(WriteBatch::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
