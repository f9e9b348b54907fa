//! The replica group's on-disk store: one sled tree with the shards' keys and values, the
//! exactly-once sessions, each shard's header and the group's progress. The state machine
//! writes the effects of each applied command together with its log index in ONE atomic
//! batch, so the store always holds exactly the effects of the log up to the index it records.
//!
//! Layout (integers big-endian, so each shard's keys form one contiguous ordered range):
//!
//! ```text
//!   'd' shard:u64 key          -> value
//!   's' shard:u64 client:u64   -> seq:u64 last_ms:u64
//!   'h' shard:u64              -> shard header (state, peer group, key and byte counts, cursor)
//!   'm'                        -> group metadata (gid, shard count, current and previous config)
//!   'a'                        -> applied index, log clock, writes, time of the last sweep
//! ```
//!
//! Batches are not flushed: durability comes from the Raft log, which holds every entry after
//! the latest snapshot. After a crash sled recovers an earlier batch boundary (a prefix of the
//! writes), and the raft core re-applies the entries after the index recorded there
//! (`StateMachine::persisted_index`).

use std::collections::BTreeMap;
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

/// The effects of one applied command, written atomically by [`Store::commit`].
#[derive(Default)]
pub struct WriteBatch(sled::Batch);

impl WriteBatch {
    pub fn put_value(&mut self, shard: u64, key: &[u8], value: &[u8]) {
        self.0.insert(prefixed(DATA, shard, key), value);
    }

    pub fn remove_value(&mut self, shard: u64, key: &[u8]) {
        self.0.remove(prefixed(DATA, shard, key));
    }

    pub fn put_session(&mut self, shard: u64, client: u64, s: Session) {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&s.seq.to_be_bytes());
        v[8..].copy_from_slice(&s.last_ms.to_be_bytes());
        self.0
            .insert(prefixed(SESSION, shard, &client.to_be_bytes()), &v[..]);
    }

    pub fn remove_session(&mut self, shard: u64, client: u64) {
        self.0
            .remove(prefixed(SESSION, shard, &client.to_be_bytes()));
    }

    pub fn put_header(&mut self, shard: u64, s: &Shard) {
        self.0
            .insert(prefixed(HEADER, shard, &[]), encode_header(s));
    }

    pub fn put_meta(&mut self, meta: &pb::StateSnapshot) {
        self.0.insert(META, meta.encode_to_vec());
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
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(|e| StoreError(format!("{}: {e}", dir.display())))?;
        Self::with_db(db)
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
        if let Some((tree, db)) = self.open.take() {
            if let Err(e) = db.flush() {
                tracing::warn!(error = %e, "flushing the shard store on close failed");
            }
            drop(tree);
            drop(db);
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
        Ok(self
            .tree()?
            .get(prefixed(DATA, shard, key))?
            .map(|v| Bytes::copy_from_slice(&v)))
    }

    /// The size of the value under `key`, if any.
    pub fn value_len(&self, shard: u64, key: &[u8]) -> Result<Option<usize>, StoreError> {
        Ok(self
            .tree()?
            .get(prefixed(DATA, shard, key))?
            .map(|v| v.len()))
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

    /// Adds to `batch` the removal of everything stored for `shard`.
    pub fn remove_shard(&self, batch: &mut WriteBatch, shard: u64) -> Result<(), StoreError> {
        for tag in [DATA, SESSION] {
            for k in self.tree()?.scan_prefix(prefixed(tag, shard, &[])).keys() {
                batch.0.remove(k?);
            }
        }
        batch.0.remove(prefixed(HEADER, shard, &[]));
        Ok(())
    }

    /// Writes `batch` and the progress record atomically.
    pub fn commit(&self, mut batch: WriteBatch, progress: Progress) -> Result<(), StoreError> {
        batch.0.insert(PROGRESS, &progress.encode()[..]);
        self.tree()?.apply_batch(batch.0)?;
        Ok(())
    }

    /// Removes everything (before a snapshot is installed). Not atomic: the progress record
    /// goes first, so a crash in between leaves a store that asks to be restored again.
    pub fn clear(&self) -> Result<(), StoreError> {
        self.tree()?.remove(PROGRESS)?;
        self.tree()?.clear()?;
        Ok(())
    }
}
