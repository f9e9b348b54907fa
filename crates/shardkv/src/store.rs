//! The replica group's on-disk store: one sled tree with the shards' keys and values, the
//! exactly-once sessions, each shard's header and the group's progress. The state machine
//! writes the effects of each run of applied commands together with the last one's log index
//! as ONE unit, so the store always holds exactly the effects of the log up to the index it
//! records.
//!
//! Layout (integers big-endian, so each shard's keys form one contiguous ordered range; the
//! values are prost messages of `proto/shardkv.proto`):
//!
//! ```text
//!   'd' shard:u64 key          -> value (raw bytes)
//!   's' shard:u64 client:u64   -> StoredSession
//!   'h' shard:u64              -> ShardHeader (state, peer group, key and byte counts, cursor)
//!   'm'                        -> group metadata (StateSnapshot without shards)
//!   'a'                        -> Progress (applied index, log clock, writes, last sweep)
//!   'w'                        -> RedoRecord: the latest run's effects (below)
//!   'v'                        -> StoreFormat (version 2)
//! ```
//!
//! # Atomicity without sled batches
//! In sled 0.34 every `apply_batch` forces its log buffers to disk (several `pwrite` +
//! `sync_file_range` rounds, measured with strace) and takes a process-wide lock, which cut
//! put throughput by two thirds. So a run's effects are written as plain inserts, after ONE
//! insert of a redo record (`'w'`) that lists them all and the new progress. sled recovers a
//! prefix of its writes after a crash; whatever the prefix, [`Store::open`] finds either the
//! previous run's redo record with all of that run's effects, or this run's redo record with
//! some of its effects, and in both cases writes the effects of the record it finds again
//! (they are idempotent: values, removals, progress).
//!
//! # Durability (the rule)
//! Nothing is flushed per write: until the store is synced, the Raft log holds every entry
//! after the store's last sync. [`StoreSync::sync`] (run by the raft core on a background
//! thread before it compacts the log, see `quorumkv_raft_core::Durability::OwnStore`) flushes
//! sled and fsyncs every file sled writes: its main file, the blob files it writes for large
//! pages outside the main file (which sled itself never fsyncs), its own snapshot files, and
//! the directories holding them. Only then may the log be compacted up to the index the store
//! held when the sync began. After a power loss sled recovers a prefix of its writes that
//! includes everything synced (its recovery stops at a page whose blob file is missing), the
//! store reports that prefix's index, and the log re-applies the rest.
//!
//! # Point-in-time views
//! A snapshot for a member that fell behind is read on another thread while commands keep
//! applying ([`Store::view`]), and so is a backup's copy of one shard ([`Store::shard_view`]).
//! sled has no snapshots of its own, so while a view is open, every write of a key the view
//! covers saves the key's previous value (its pre-image) in the view's overlay tree first,
//! once per key; the view reads the data range merged with its overlay, and an
//! overlay entry, where there is one, is the value at the view's point. The overlay lives in
//! sled too (on disk), so memory stays bounded whatever a snapshot's size.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message;
use quorumkv_proto::shardkv as pb;

use crate::shard::{PullCursor, Session, Shard, ShardState};

/// sled's page cache for one member's store. Data beyond it is read from the OS page cache.
const CACHE_BYTES: u64 = 128 << 20;

const DATA: u8 = b'd';
const SESSION: u8 = b's';
const HEADER: u8 = b'h';
const META: &[u8] = b"m";
const PROGRESS: &[u8] = b"a";
const REDO: &[u8] = b"w";
const FORMAT: &[u8] = b"v";
/// The layout this version writes (`StoreFormat`).
const FORMAT_VERSION: u32 = 2;
/// sled stores pages larger than about a quarter of a segment in separate blob files; a redo
/// record, rewritten on every run, is kept out of them (see [`REDO_LIMIT_BYTES`]).
const SEGMENT_BYTES: usize = 16 << 20;
/// A run's pending effects are written as soon as they pass this size, so a redo record holds
/// at most this plus one command (a 1 MiB value, or a 512 KiB migration chunk and its
/// sessions): well under a quarter of a segment.
pub const REDO_LIMIT_BYTES: usize = 1 << 20;

/// The store failed (I/O) or holds bytes this version cannot read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("shard store: {context}")]
    Io {
        context: String,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A record does not decode, or the store breaks an invariant.
    #[error("shard store: {0}")]
    Corrupt(String),
    /// The store was closed (the member stopped).
    #[error("shard store: closed (the member stopped)")]
    Closed,
    /// A point-in-time view was invalidated (the store was replaced by a snapshot).
    #[error("shard store: the view was invalidated by a restore")]
    ViewInvalidated,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io {
            context: "sled".into(),
            source: Arc::new(e),
        }
    }
}

fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io {
        context: path.display().to_string(),
        source: Arc::new(e),
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} is corrupt"))
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
    fn to_pb(self) -> pb::Progress {
        pb::Progress {
            applied: self.applied,
            clock_ms: self.clock_ms,
            writes: self.writes,
            last_sweep_ms: self.last_sweep_ms,
        }
    }

    fn from_pb(p: pb::Progress) -> Self {
        Progress {
            applied: p.applied,
            clock_ms: p.clock_ms,
            writes: p.writes,
            last_sweep_ms: p.last_sweep_ms,
        }
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
    let (cursor, keys_done, session_cursor) = match &s.state {
        ShardState::Pulling { cursor, .. } => cursor.parts(),
        _ => (None, false, None),
    };
    pb::ShardHeader {
        state: s.state.kind() as i32,
        peer_gid: s.state.peer_gid(),
        keys: s.keys,
        bytes: s.bytes,
        cursor,
        keys_done,
        session_cursor,
    }
    .encode_to_vec()
}

fn decode_header(b: &[u8]) -> Result<Shard, StoreError> {
    let h = pb::ShardHeader::decode(b).map_err(|_| corrupt("a shard header"))?;
    let kind = pb::ShardStateKind::try_from(h.state).map_err(|_| corrupt("a shard header"))?;
    let cursor = PullCursor::from_parts(h.cursor, h.keys_done, h.session_cursor);
    let state = ShardState::from_kind(kind, h.peer_gid, cursor).map_err(StoreError::Corrupt)?;
    Ok(Shard {
        state,
        sessions: BTreeMap::new(),
        keys: h.keys,
        bytes: h.bytes,
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

impl Op {
    fn to_pb(&self) -> pb::RedoOp {
        use pb::redo_op::Op as P;
        pb::RedoOp {
            op: Some(match self {
                Op::Put(k, v) => P::Put(pb::KeyValue {
                    key: Bytes::copy_from_slice(k),
                    value: Bytes::copy_from_slice(v),
                }),
                Op::Remove(k) => P::Remove(Bytes::copy_from_slice(k)),
                Op::RemovePrefix(p) => P::RemovePrefix(Bytes::copy_from_slice(p)),
            }),
        }
    }

    fn from_pb(o: pb::RedoOp) -> Result<Self, StoreError> {
        use pb::redo_op::Op as P;
        Ok(match o.op.ok_or_else(|| corrupt("the redo record"))? {
            P::Put(kv) => Op::Put(kv.key.to_vec(), kv.value.to_vec()),
            P::Remove(k) => Op::Remove(k.to_vec()),
            P::RemovePrefix(p) => Op::RemovePrefix(p.to_vec()),
        })
    }
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
        let v = pb::StoredSession {
            seq: s.seq,
            last_ms: s.last_ms,
        }
        .encode_to_vec();
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

    /// The redo record: the progress and each effective op.
    fn encode(&self, progress: Progress) -> Vec<u8> {
        pb::RedoRecord {
            progress: Some(progress.to_pb()),
            ops: self.effective().map(Op::to_pb).collect(),
        }
        .encode_to_vec()
    }

    fn decode(b: &[u8]) -> Result<(Self, Progress), StoreError> {
        let r = pb::RedoRecord::decode(b).map_err(|_| corrupt("the redo record"))?;
        let progress = Progress::from_pb(r.progress.ok_or_else(|| corrupt("the redo record"))?);
        let mut batch = WriteBatch::default();
        for op in r.ops {
            batch.push(Op::from_pb(op)?);
        }
        Ok((batch, progress))
    }
}

/// An open point-in-time view's shared state.
struct ViewState {
    /// Pre-images of the data keys written since the view was opened: `[0]` for a key that
    /// did not exist, `[1] + value` otherwise.
    overlay: sled::Tree,
    /// Set when the store is cleared (a snapshot restore) under the view.
    invalidated: AtomicBool,
    /// The data keys the view shows, `[from, to)`: every shard, or one (a backup's copy).
    /// Writes outside it keep no pre-image for this view.
    range: (Vec<u8>, Vec<u8>),
}

impl ViewState {
    fn covers(&self, key: &[u8]) -> bool {
        self.range.0.as_slice() <= key && key < self.range.1.as_slice()
    }
}

/// The store's open views, shared with the views themselves (which remove themselves when
/// dropped).
#[derive(Default)]
struct Views {
    open: Mutex<Vec<Arc<ViewState>>>,
    next_id: AtomicU64,
}

/// One member's store (see the module docs).
pub struct Store {
    /// The tree and its database; `None` once closed.
    open: Option<(sled::Tree, sled::Db)>,
    /// The store's directory (`None` for a temporary store).
    dir: Option<PathBuf>,
    views: Arc<Views>,
}

impl Store {
    /// Opens (or creates) the store in `dir`. A store in the format-1 layout is cleared: it
    /// reports index 0 and is rebuilt from the member's snapshot and log.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .segment_size(SEGMENT_BYTES)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(|e| StoreError::Io {
                context: dir.display().to_string(),
                source: Arc::new(e),
            })?;
        let mut store = Self::with_db(db)?;
        store.dir = Some(dir.to_path_buf());
        store.check_format()?;
        store.redo()?;
        Ok(store)
    }

    /// A store deleted when dropped (tests and tools).
    pub fn temporary() -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(16 << 20)
            .open()?;
        let store = Self::with_db(db)?;
        store.check_format()?;
        Ok(store)
    }

    fn with_db(db: sled::Db) -> Result<Self, StoreError> {
        let tree = db.open_tree("shardkv")?;
        // Overlays of views a crash left behind.
        for name in db.tree_names() {
            if name.starts_with(b"view-") {
                db.drop_tree(name)?;
            }
        }
        Ok(Store {
            open: Some((tree, db)),
            dir: None,
            views: Arc::new(Views::default()),
        })
    }

    fn check_format(&self) -> Result<(), StoreError> {
        let tree = self.tree()?;
        match tree.get(FORMAT)? {
            Some(v) => {
                let f =
                    pb::StoreFormat::decode(&v[..]).map_err(|_| corrupt("the format record"))?;
                if f.version != FORMAT_VERSION {
                    return Err(StoreError::Corrupt(format!(
                        "the store has format {}, which this version (format {FORMAT_VERSION}) \
                         cannot read: move the member's `kv` directory away; it is rebuilt \
                         from the member's snapshot and log",
                        f.version
                    )));
                }
            }
            None => {
                if !tree.is_empty() {
                    tracing::info!(
                        "the shard store has the format-1 layout: clearing it, to be rebuilt \
                         from the snapshot and the log"
                    );
                    tree.clear()?;
                }
                let f = pb::StoreFormat {
                    version: FORMAT_VERSION,
                };
                tree.insert(FORMAT, f.encode_to_vec())?;
            }
        }
        Ok(())
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
        self.tree()?
            .insert(PROGRESS, progress.to_pb().encode_to_vec())?;
        Ok(())
    }

    fn write_ops(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        let tree = self.tree()?;
        // Open views keep the pre-image of every data key before its first change.
        let views = self.views.open.lock();
        let keep = |key: &[u8]| -> Result<(), StoreError> {
            if views.is_empty() || key.first() != Some(&DATA) {
                return Ok(());
            }
            let mut old: Option<Option<sled::IVec>> = None;
            for v in views.iter() {
                if !v.covers(key) || v.overlay.contains_key(key)? {
                    continue;
                }
                let pre = match &old {
                    Some(o) => o.clone(),
                    None => {
                        let o = tree.get(key)?;
                        old = Some(o.clone());
                        o
                    }
                };
                let mut image = Vec::with_capacity(1 + pre.as_ref().map_or(0, |p| p.len()));
                match pre {
                    Some(p) => {
                        image.push(1);
                        image.extend_from_slice(&p);
                    }
                    None => image.push(0),
                }
                v.overlay.insert(key, image)?;
            }
            Ok(())
        };
        for op in batch.effective() {
            match op {
                Op::Put(k, v) => {
                    keep(k)?;
                    tree.insert(k.as_slice(), v.as_slice())?;
                }
                Op::Remove(k) => {
                    keep(k)?;
                    tree.remove(k.as_slice())?;
                }
                Op::RemovePrefix(p) => {
                    for k in tree.scan_prefix(p).keys() {
                        let k = k?;
                        keep(&k)?;
                        tree.remove(k)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn tree(&self) -> Result<&sled::Tree, StoreError> {
        match &self.open {
            Some((tree, _)) => Ok(tree),
            None => Err(StoreError::Closed),
        }
    }

    fn db(&self) -> Result<&sled::Db, StoreError> {
        match &self.open {
            Some((_, db)) => Ok(db),
            None => Err(StoreError::Closed),
        }
    }

    /// Flushes and closes the store, releasing its directory. Later calls fail.
    pub fn close(&mut self) {
        self.invalidate_views();
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
            Some(b) => Progress::from_pb(
                pb::Progress::decode(&b[..]).map_err(|_| corrupt("the progress record"))?,
            ),
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
            let s = pb::StoredSession::decode(&v[..]).map_err(|_| bad())?;
            shards
                .get_mut(&shard)
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("a session of shard {shard}, which is not held"))
                })?
                .sessions
                .insert(
                    client,
                    Session {
                        seq: s.seq,
                        last_ms: s.last_ms,
                    },
                );
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
    /// first, so a crash in between leaves a store that asks to be restored again. Open views
    /// are invalidated.
    pub fn clear(&self) -> Result<(), StoreError> {
        self.invalidate_views();
        let tree = self.tree()?;
        tree.remove(PROGRESS)?;
        tree.remove(REDO)?;
        tree.clear()?;
        tree.insert(
            FORMAT,
            pb::StoreFormat {
                version: FORMAT_VERSION,
            }
            .encode_to_vec(),
        )?;
        Ok(())
    }

    fn invalidate_views(&self) {
        for v in self.views.open.lock().drain(..) {
            v.invalidated.store(true, Ordering::Relaxed);
        }
    }

    /// A point-in-time view of every shard's keys and values as they are now (see the module
    /// docs). Cheap to open; read it on any thread.
    pub fn view(&self) -> Result<StoreView, StoreError> {
        self.view_of(vec![DATA], vec![DATA + 1])
    }

    /// A point-in-time view of one shard's keys and values (a backup's copy): writes to other
    /// shards keep no pre-images for it.
    pub fn shard_view(&self, shard: u64) -> Result<StoreView, StoreError> {
        self.view_of(prefixed(DATA, shard, &[]), prefixed(DATA, shard + 1, &[]))
    }

    fn view_of(&self, from: Vec<u8>, to: Vec<u8>) -> Result<StoreView, StoreError> {
        let db = self.db()?.clone();
        let id = self.views.next_id.fetch_add(1, Ordering::Relaxed);
        let name = format!("view-{id}");
        let overlay = db.open_tree(&name)?;
        let state = Arc::new(ViewState {
            overlay,
            invalidated: AtomicBool::new(false),
            range: (from, to),
        });
        self.views.open.lock().push(state.clone());
        Ok(StoreView {
            tree: self.tree()?.clone(),
            db,
            name,
            state,
            views: self.views.clone(),
        })
    }

    /// A handle that makes the store durable (see the module docs), for another thread.
    pub fn sync_handle(&self) -> Result<StoreSync, StoreError> {
        Ok(StoreSync {
            db: self.db()?.clone(),
            dir: self.dir.clone(),
        })
    }
}

/// A point-in-time view of the store's keys and values (see [`Store::view`]). Closing it
/// (dropping it) ends the copying of pre-images.
pub struct StoreView {
    tree: sled::Tree,
    db: sled::Db,
    name: String,
    state: Arc<ViewState>,
    views: Arc<Views>,
}

impl StoreView {
    /// Every data key of the view (every shard, or its one shard) at the view's point, in key
    /// order: `(shard, key, value)`.
    pub fn entries(&self) -> ViewIter {
        let (from, to) = &self.state.range;
        ViewIter {
            data: self.tree.range(from.clone()..to.clone()).peekable(),
            overlay: self.state.overlay.iter().peekable(),
            state: self.state.clone(),
            last: None,
        }
    }
}

impl Drop for StoreView {
    fn drop(&mut self) {
        // Stop copying pre-images first, then drop the overlay (no writer holds it: writers
        // take the list's lock for the whole of a write).
        self.views
            .open
            .lock()
            .retain(|v| !Arc::ptr_eq(v, &self.state));
        if let Err(e) = self.db.drop_tree(&self.name) {
            tracing::warn!(error = %e, "dropping a snapshot view's overlay failed");
        }
    }
}

/// The merge of the data range and a view's overlay (see [`StoreView::entries`]).
pub struct ViewIter {
    data: std::iter::Peekable<sled::Iter>,
    overlay: std::iter::Peekable<sled::Iter>,
    state: Arc<ViewState>,
    /// The last key handled: overlay keys at or before it were already decided.
    last: Option<sled::IVec>,
}

fn pre_image(image: &[u8]) -> Result<Option<&[u8]>, StoreError> {
    match image.split_first() {
        Some((0, _)) => Ok(None),
        Some((1, v)) => Ok(Some(v)),
        _ => Err(corrupt("a view's pre-image")),
    }
}

impl Iterator for ViewIter {
    type Item = Result<(u64, Bytes, Bytes), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.state.invalidated.load(Ordering::Relaxed) {
                return Some(Err(StoreError::ViewInvalidated));
            }
            // Overlay keys already decided (seen from the data side) are skipped.
            while let Some(Ok((k, _))) = self.overlay.peek() {
                if self.last.as_ref().is_some_and(|l| k <= l) {
                    self.overlay.next();
                } else {
                    break;
                }
            }
            let d = match self.data.peek() {
                Some(Ok((k, _))) => Some(k.clone()),
                Some(Err(_)) => return self.data.next().map(|r| Err(r.unwrap_err().into())),
                None => None,
            };
            let o = match self.overlay.peek() {
                Some(Ok((k, _))) => Some(k.clone()),
                Some(Err(_)) => return self.overlay.next().map(|r| Err(r.unwrap_err().into())),
                None => None,
            };
            let (key, value) = match (d, o) {
                (None, None) => return None,
                // The overlay holds the value at the view's point for this key.
                (d, Some(ok)) if d.as_ref().is_none_or(|dk| ok <= *dk) => {
                    let (_, image) = self.overlay.next()?.ok()?;
                    if d.as_ref() == Some(&ok) {
                        self.data.next();
                    }
                    self.last = Some(ok.clone());
                    match pre_image(&image) {
                        Ok(Some(v)) => (ok, Bytes::copy_from_slice(v)),
                        Ok(None) => continue,
                        Err(e) => return Some(Err(e)),
                    }
                }
                // A data key: its pre-image, if it was written since (the write saves the
                // pre-image before it changes the key, so it is there if the value read is
                // newer than the view).
                (Some(dk), _) => {
                    let (_, value) = self.data.next()?.ok()?;
                    self.last = Some(dk.clone());
                    match self.state.overlay.get(&dk) {
                        Ok(Some(image)) => match pre_image(&image) {
                            Ok(Some(v)) => (dk, Bytes::copy_from_slice(v)),
                            Ok(None) => continue,
                            Err(e) => return Some(Err(e)),
                        },
                        Ok(None) => (dk, Bytes::copy_from_slice(&value)),
                        Err(e) => return Some(Err(e.into())),
                    }
                }
                (None, Some(_)) => unreachable!("handled above"),
            };
            let Some(shard) = u64_at(&key, 1) else {
                return Some(Err(corrupt("a data key")));
            };
            return Some(Ok((shard, Bytes::copy_from_slice(&key[9..]), value)));
        }
    }
}

/// Makes a store durable from another thread (see the module docs).
pub struct StoreSync {
    db: sled::Db,
    dir: Option<PathBuf>,
}

impl StoreSync {
    /// Flushes sled, then fsyncs its main file, its blob files, its snapshot files and the
    /// directories holding them: everything the store held when this started is durable when
    /// it returns.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let sync_file = |p: &Path| -> Result<(), StoreError> {
            File::open(p)
                .and_then(|f| f.sync_all())
                .map_err(|e| io_err(p, e))
        };
        sync_file(&dir.join("db"))?;
        let blobs = dir.join("blobs");
        if blobs.exists() {
            for e in std::fs::read_dir(&blobs).map_err(|e| io_err(&blobs, e))? {
                let e = e.map_err(|e| io_err(&blobs, e))?;
                match sync_file(&e.path()) {
                    // sled removes blobs it no longer needs at any time.
                    Err(StoreError::Io { source, .. })
                        if source
                            .downcast_ref::<std::io::Error>()
                            .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) => {}
                    other => other?,
                }
            }
            sync_file(&blobs)?;
        }
        for e in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
            let e = e.map_err(|e| io_err(dir, e))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name == "conf" || (name.starts_with("snap.") && !name.ends_with(".generating")) {
                match sync_file(&e.path()) {
                    Err(StoreError::Io { source, .. })
                        if source
                            .downcast_ref::<std::io::Error>()
                            .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) => {}
                    other => other?,
                }
            }
        }
        sync_file(dir)?;
        if let Some(parent) = dir.parent() {
            sync_file(parent)?;
        }
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

    fn entries(v: &StoreView) -> Vec<(u64, String, String)> {
        v.entries()
            .map(|r| {
                let (s, k, v) = r.unwrap();
                (
                    s,
                    String::from_utf8(k.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_shard_view_shows_its_shard_at_its_point_and_keeps_no_other_pre_images() {
        let store = Store::temporary().unwrap();
        let mut b = WriteBatch::default();
        for (s, k, v) in [(1, "a", "1"), (2, "a", "2"), (2, "b", "3"), (3, "c", "4")] {
            b.put_value(s, k.as_bytes(), v.as_bytes());
        }
        store.commit(b, progress(1)).unwrap();
        let view = store.shard_view(2).unwrap();
        let mut b = WriteBatch::default();
        b.put_value(2, b"a", b"changed");
        b.remove_value(2, b"b");
        b.put_value(2, b"c", b"new");
        b.put_value(1, b"a", b"other shard");
        b.remove_shard(3);
        store.commit(b, progress(2)).unwrap();
        assert_eq!(
            entries(&view),
            vec![
                (2, "a".to_string(), "2".to_string()),
                (2, "b".into(), "3".into())
            ]
        );
        // Only shard 2's three changed keys were copied for the view.
        assert_eq!(view.state.overlay.len(), 3);
    }

    #[test]
    fn a_view_keeps_showing_the_state_it_was_opened_at() {
        let store = Store::temporary().unwrap();
        let mut b = WriteBatch::default();
        for (s, k, v) in [(1, "a", "1"), (1, "c", "3"), (2, "b", "2"), (3, "x", "9")] {
            b.put_value(s, k.as_bytes(), v.as_bytes());
        }
        store.commit(b, progress(1)).unwrap();
        let view = store.view().unwrap();
        let before = vec![
            (1, "a".to_string(), "1".to_string()),
            (1, "c".into(), "3".into()),
            (2, "b".into(), "2".into()),
            (3, "x".into(), "9".into()),
        ];
        // Changes after the view: an update, a new key, a removal and a whole shard removed.
        let mut b = WriteBatch::default();
        b.put_value(1, b"a", b"changed");
        b.put_value(1, b"b", b"new");
        b.remove_value(1, b"c");
        b.remove_shard(3);
        store.commit(b, progress(2)).unwrap();
        assert_eq!(entries(&view), before);
        // Changes while the view is being read.
        let mut it = view.entries();
        assert_eq!(it.next().unwrap().unwrap().2.as_ref(), b"1");
        let mut b = WriteBatch::default();
        b.put_value(2, b"b", b"later");
        b.put_value(2, b"a", b"new after the view");
        store.commit(b, progress(3)).unwrap();
        let rest: Vec<_> = it.map(|r| r.unwrap().2).collect();
        assert_eq!(
            rest,
            vec![Bytes::from("3"), Bytes::from("2"), Bytes::from("9")]
        );
        // Closing the view stops the copying and drops its overlay.
        let name = view.name.clone();
        drop(view);
        assert!(store.views.open.lock().is_empty());
        assert!(!store
            .db()
            .unwrap()
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == name.as_bytes()));
        // A clear invalidates an open view instead of showing it a half-restored store.
        let view = store.view().unwrap();
        store.clear().unwrap();
        assert!(matches!(
            view.entries().next(),
            Some(Err(StoreError::ViewInvalidated))
        ));
    }

    #[test]
    fn a_format_1_store_is_cleared_to_be_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new()
                .path(dir.path())
                .segment_size(SEGMENT_BYTES)
                .open()
                .unwrap();
            let tree = db.open_tree("shardkv").unwrap();
            tree.insert(b"a", vec![0u8; 32]).unwrap();
            tree.insert(prefixed(DATA, 1, b"k"), &b"v"[..]).unwrap();
            db.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap().progress, Progress::default());
        assert_eq!(store.get(1, b"k").unwrap(), None);
    }
}
