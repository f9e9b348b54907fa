//! The Raft log of one member on `raft-engine`, and raft-rs's `Storage` over it.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message as _;
use protobuf::Message as _;
use quorumkv_proto::storage as pb;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use raft_engine::{Command, Engine, LogBatch, MessageExt, ReadableSize};

use super::snapshot::{self, members_from_pb, members_to_pb, SnapshotHeader};
use crate::error::{RaftError, Result};

/// Index (and term) of the starting point of a new group. A group starts with its
/// configuration in a base at this index rather than at 0, so the log before it counts as
/// compacted: a member added later can never replay the group's history from index 1 without
/// knowing the initial voters; it must receive a snapshot, which carries the ConfState (TiKV
/// does the same).
pub const BOOTSTRAP_INDEX: u64 = 5;

/// The raft-engine region of the member's group (one group per engine).
const REGION: u64 = 1;
const KEY_FORMAT: &[u8] = b"format";
const KEY_HARD_STATE: &[u8] = b"hs";
const KEY_BASE: &[u8] = b"base";
const KEY_COMPACTED: &[u8] = b"compacted";
/// The layout this version writes (see `StorageFormat` in `proto/storage.proto`).
pub const FORMAT_VERSION: u32 = 2;
/// The log engine's directory inside the data directory.
pub const LOG_DIR: &str = "raft-log";
/// Snapshot files' directory inside the data directory.
pub const SNAPSHOT_DIR: &str = "snapshots";
/// How the log engine lays out its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// raft-engine rotates its files at this size and recycles purged ones.
    pub file_bytes: u64,
    /// Purging (recycling or deleting files whose entries were all compacted) starts once the
    /// log's files hold more than this.
    pub purge_bytes: u64,
    /// Write the recycling pool's files (1.5 × `purge_bytes`) full of zeros when the log is
    /// first opened, so that appends overwrite written blocks: an `fdatasync` after an
    /// overwrite does not have to convert the file system's unwritten extents (measured here:
    /// 0.13 ms instead of 0.25 ms).
    pub prefill: bool,
}

impl Default for LogOptions {
    /// Small files, no prefill (tests and tools).
    fn default() -> Self {
        LogOptions {
            file_bytes: 1 << 20,
            purge_bytes: 4 << 20,
            prefill: false,
        }
    }
}

impl LogOptions {
    /// The layout for a member that compacts its log every `compact_bytes`: files of half
    /// that, purged once they hold twice that (so a purge seldom has live entries to copy).
    pub fn for_compaction_every(compact_bytes: u64) -> Self {
        let file_bytes = (compact_bytes / 2).clamp(1 << 20, 64 << 20);
        LogOptions {
            file_bytes,
            purge_bytes: (compact_bytes * 2).max(file_bytes * 4),
            prefill: true,
        }
    }
}

/// raft-rs entries as raft-engine messages.
struct EntryMsg;

impl MessageExt for EntryMsg {
    type Entry = Entry;

    fn index(e: &Entry) -> u64 {
        e.index
    }
}

/// The point a member restarts from (see the module docs of `storage`).
#[derive(Debug, Clone, PartialEq)]
pub struct Base {
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfState,
    /// The group's address book at `index`.
    pub members: BTreeMap<u64, String>,
    /// The snapshot file holding the state at `index`, when the state machine's own store
    /// does not (always, for a state machine kept in memory).
    pub snapshot_file: Option<String>,
}

impl Base {
    fn to_pb(&self) -> Result<pb::LogBase> {
        Ok(pb::LogBase {
            index: self.index,
            term: self.term,
            conf_state: self
                .conf_state
                .write_to_bytes()
                .map_err(|e| RaftError::corrupt("conf state", e))?
                .into(),
            members: members_to_pb(&self.members),
            snapshot_file: self.snapshot_file.clone().unwrap_or_default(),
        })
    }

    fn from_pb(b: pb::LogBase) -> Result<Self> {
        Ok(Base {
            index: b.index,
            term: b.term,
            conf_state: ConfState::parse_from_bytes(&b.conf_state)
                .map_err(|e| RaftError::corrupt("the log base's conf state", e))?,
            members: members_from_pb(b.members),
            snapshot_file: (!b.snapshot_file.is_empty()).then_some(b.snapshot_file),
        })
    }

    /// The snapshot header this base corresponds to.
    pub fn header(&self) -> SnapshotHeader {
        SnapshotHeader {
            index: self.index,
            term: self.term,
            conf_state: self.conf_state.clone(),
            members: self.members.clone(),
        }
    }
}

/// A snapshot file the leader can send to a member that fell behind.
#[derive(Debug, Clone, PartialEq)]
pub struct SendableSnapshot {
    pub metadata: SnapshotMetadata,
    pub file: String,
    pub size: u64,
}

fn engine_err(what: &str, e: raft_engine::Error) -> RaftError {
    RaftError::storage(format!("raft log: {what}"), e)
}

fn to_raft(e: RaftError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

/// The member's Raft log: entries, hard state, base and compaction point in `raft-engine`,
/// plus an in-memory copy of every entry's term (raft-rs asks for terms on every append it
/// receives or commits; reading them from files each time would cost a syscall each).
///
/// Read entries on one thread per log (the driver's): raft-engine caches the last block it
/// decoded per thread, keyed by file and offset only, so two logs with the same layout read on
/// one thread would see each other's entries.
pub struct LogStore {
    engine: Arc<Engine>,
    data_dir: PathBuf,
    snap_dir: PathBuf,
    hard_state: HardState,
    base: Base,
    /// (index, term) of the entry just before `first_index`.
    compacted: (u64, u64),
    /// Terms of entries `first_index..=last_index`.
    terms: VecDeque<u64>,
    /// The latest snapshot file that may be sent to a follower.
    sendable: Option<SendableSnapshot>,
    /// Set when raft-rs asked for a snapshot newer than the sendable one; the driver then has
    /// one written.
    snapshot_wanted: Cell<bool>,
}

impl LogStore {
    /// Opens (or creates) the log in `data_dir`. When the directory holds no Raft state yet,
    /// `bootstrap` decides the initial configuration: `Some(voters)` creates a new group with
    /// those voters, `None` starts empty (a member waiting to be added to a group). `members`
    /// is the address book written into the initial base. A data directory in the previous
    /// (sled) layout is upgraded in place first.
    pub fn open(
        data_dir: &Path,
        bootstrap: Option<Vec<u64>>,
        members: &BTreeMap<u64, String>,
    ) -> Result<Self> {
        Self::open_with(data_dir, bootstrap, members, LogOptions::default())
    }

    /// [`LogStore::open`] with the engine's file layout.
    pub fn open_with(
        data_dir: &Path,
        bootstrap: Option<Vec<u64>>,
        members: &BTreeMap<u64, String>,
        opts: LogOptions,
    ) -> Result<Self> {
        let snap_dir = data_dir.join(SNAPSHOT_DIR);
        std::fs::create_dir_all(&snap_dir).map_err(|e| RaftError::storage_io(&snap_dir, e))?;
        let log_dir = data_dir.join(LOG_DIR);
        if !log_dir.exists() && super::legacy_sled::exists(data_dir) {
            super::legacy_sled::upgrade(data_dir, &log_dir, opts)?;
        }
        let engine = Arc::new(open_engine(&log_dir, opts)?);
        let mut s = LogStore {
            engine,
            data_dir: data_dir.to_path_buf(),
            snap_dir,
            hard_state: HardState::default(),
            base: Base {
                index: 0,
                term: 0,
                conf_state: ConfState::default(),
                members: members.clone(),
                snapshot_file: None,
            },
            compacted: (0, 0),
            terms: VecDeque::new(),
            sendable: None,
            snapshot_wanted: Cell::new(false),
        };
        match s.get::<pb::StorageFormat>(KEY_FORMAT)? {
            Some(f) if f.version == FORMAT_VERSION => {
                s.load()?;
                super::legacy_sled::remove_leftover(data_dir);
            }
            Some(f) => {
                return Err(RaftError::storage_msg(format!(
                    "{} holds a Raft log in format {}, which this version (format \
                     {FORMAT_VERSION}) cannot read: run the version that wrote it, or move the \
                     directory away and re-add this member to its group",
                    log_dir.display(),
                    f.version
                )))
            }
            None if s.engine.last_index(REGION).is_some() => {
                return Err(RaftError::corrupt(
                    "the raft log",
                    format!("{} has entries but no format record", log_dir.display()),
                ))
            }
            None => s.create(bootstrap)?,
        }
        // Nothing is being received yet: incoming files are leftovers of a crash.
        s.remove_unreferenced_snapshots(true);
        Ok(s)
    }

    /// A brand-new member: a founding member starts from a base at [`BOOTSTRAP_INDEX`]
    /// holding the initial voters; a joining member starts empty (index 0, no configuration)
    /// and waits for the leader's snapshot.
    fn create(&mut self, bootstrap: Option<Vec<u64>>) -> Result<()> {
        if let Some(voters) = bootstrap {
            self.base.index = BOOTSTRAP_INDEX;
            self.base.term = BOOTSTRAP_INDEX;
            self.base.conf_state.voters = voters;
            self.hard_state.term = BOOTSTRAP_INDEX;
            self.hard_state.commit = BOOTSTRAP_INDEX;
        }
        self.compacted = (self.base.index, self.base.term);
        let mut batch = LogBatch::default();
        put(
            &mut batch,
            KEY_FORMAT,
            &pb::StorageFormat {
                version: FORMAT_VERSION,
            },
        )?;
        self.put_state(&mut batch, true)?;
        self.write(&mut batch, true, "creating the log")
    }

    fn load(&mut self) -> Result<()> {
        let bad = |what: &str| RaftError::corrupt("the raft log", format!("{what} is missing"));
        self.base = Base::from_pb(self.get(KEY_BASE)?.ok_or_else(|| bad("the base"))?)?;
        let c: pb::Compacted = self
            .get(KEY_COMPACTED)?
            .ok_or_else(|| bad("the compaction point"))?;
        self.compacted = (c.index, c.term);
        self.hard_state = self
            .engine
            .get_message::<HardState>(REGION, KEY_HARD_STATE)
            .map_err(|e| engine_err("reading the hard state", e))?
            .ok_or_else(|| bad("the hard state"))?;
        let last = self.engine.last_index(REGION).unwrap_or(self.compacted.0);
        let first = self.first_index();
        if last + 1 < first {
            return Err(RaftError::corrupt(
                "the raft log",
                format!(
                    "it ends at {last}, before its compaction point {}",
                    first - 1
                ),
            ));
        }
        // The terms, read in bounded slices.
        let mut at = first;
        while at <= last {
            let mut slice = Vec::new();
            self.engine
                .fetch_entries_to::<EntryMsg>(REGION, at, last + 1, Some(16 << 20), &mut slice)
                .map_err(|e| engine_err("reading entries", e))?;
            if slice.is_empty() {
                return Err(RaftError::corrupt(
                    "the raft log",
                    format!("entry {at} is missing"),
                ));
            }
            for e in &slice {
                if e.index != at {
                    return Err(RaftError::corrupt(
                        "the raft log",
                        format!("entry {at} is stored as {}", e.index),
                    ));
                }
                self.terms.push_back(e.term);
                at += 1;
            }
        }
        if let Some(file) = &self.base.snapshot_file {
            let path = self.snap_dir.join(file);
            if !path.exists() {
                return Err(RaftError::corrupt(
                    "the data directory",
                    format!("the snapshot file {} is missing", path.display()),
                ));
            }
        }
        Ok(())
    }

    fn get<M: prost::Message + Default>(&self, key: &[u8]) -> Result<Option<M>> {
        match self.engine.get(REGION, key) {
            Some(v) => M::decode(&v[..])
                .map(Some)
                .map_err(|e| RaftError::corrupt(&String::from_utf8_lossy(key), e)),
            None => Ok(None),
        }
    }

    /// Puts the hard state, and with `meta` the base and the compaction point.
    fn put_state(&self, batch: &mut LogBatch, meta: bool) -> Result<()> {
        batch
            .put_message(REGION, KEY_HARD_STATE.to_vec(), &self.hard_state)
            .map_err(|e| engine_err("encoding the hard state", e))?;
        if meta {
            put(batch, KEY_BASE, &self.base.to_pb()?)?;
            put(
                batch,
                KEY_COMPACTED,
                &pb::Compacted {
                    index: self.compacted.0,
                    term: self.compacted.1,
                },
            )?;
        }
        Ok(())
    }

    fn write(&self, batch: &mut LogBatch, sync: bool, what: &str) -> Result<()> {
        self.engine
            .write(batch, sync)
            .map(|_| ())
            .map_err(|e| engine_err(what, e))
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn base(&self) -> &Base {
        &self.base
    }

    pub fn first_index(&self) -> u64 {
        self.compacted.0 + 1
    }

    pub fn last_index(&self) -> u64 {
        self.compacted.0 + self.terms.len() as u64
    }

    /// The directory of snapshot files.
    pub fn snapshot_dir(&self) -> &Path {
        &self.snap_dir
    }

    /// The data directory this log lives in.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The engine, shared with the background worker that purges its files.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Whether raft-rs asked for a snapshot newer than the sendable one (and clears it).
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// The latest snapshot file that may be sent.
    pub fn sendable(&self) -> Option<&SendableSnapshot> {
        self.sendable.as_ref()
    }

    /// Offers a freshly written snapshot file to followers that need one (replacing, and
    /// deleting, an older one not otherwise referenced).
    pub fn set_sendable(&mut self, s: SendableSnapshot) {
        self.sendable = Some(s);
        self.remove_unreferenced_snapshots(false);
    }

    /// Records a commit index learned after the last write; written with the next one.
    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = self.hard_state.commit.max(commit);
    }

    /// The term of an entry in the log (or of the compaction point).
    fn term_of(&self, idx: u64) -> Option<u64> {
        if idx == self.compacted.0 {
            return Some(self.compacted.1);
        }
        let i = idx.checked_sub(self.first_index())?;
        self.terms.get(i as usize).copied()
    }

    /// Appends `entries` (replacing any conflicting suffix) and records `hs` with one write.
    /// With `sync` (raft-rs's `Ready::must_sync`: new entries, or a new term or vote) the write
    /// is fdatasynced before this returns; Raft may send the Ready's messages only after that.
    /// A hard state that only moves the commit index is written without a sync: a lost commit
    /// index is learned again from the leader after a restart.
    pub fn append(&mut self, entries: &[Entry], hs: Option<&HardState>, sync: bool) -> Result<()> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        let mut batch = LogBatch::default();
        if let Some(first) = entries.first() {
            if first.index < self.first_index() || first.index > self.last_index() + 1 {
                return Err(RaftError::storage_msg(format!(
                    "raft log: cannot append at {} to a log of {}..={}",
                    first.index,
                    self.first_index(),
                    self.last_index()
                )));
            }
            if entries.windows(2).any(|w| w[1].index != w[0].index + 1) {
                return Err(RaftError::storage_msg(
                    "raft log: entries to append are not contiguous",
                ));
            }
            batch
                .add_entries::<EntryMsg>(REGION, entries)
                .map_err(|e| engine_err("encoding entries", e))?;
        }
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        self.put_state(&mut batch, false)?;
        self.write(&mut batch, sync, "appending entries")?;
        if let Some(first) = entries.first() {
            self.terms
                .truncate((first.index - self.first_index()) as usize);
            self.terms.extend(entries.iter().map(|e| e.term));
        }
        Ok(())
    }

    /// Moves the base to `base` and removes the entries up to `compact_to` (at most the base
    /// index), with one synced write. The caller guarantees that the state at `base.index` is
    /// durable: in `base.snapshot_file`, or in the state machine's synced store.
    pub fn compact(&mut self, base: Base, compact_to: u64) -> Result<()> {
        let compact_to = compact_to.min(base.index).min(self.last_index());
        if base.index < self.base.index || base.index > self.last_index() {
            return Err(RaftError::storage_msg(format!(
                "raft log: base {} outside {}..={}",
                base.index,
                self.base.index,
                self.last_index()
            )));
        }
        let compacted = if compact_to > self.compacted.0 {
            let term = self.term_of(compact_to).expect("in the log");
            (compact_to, term)
        } else {
            self.compacted
        };
        let old = std::mem::replace(&mut self.base, base);
        let old_compacted = std::mem::replace(&mut self.compacted, compacted);
        self.hard_state.commit = self.hard_state.commit.max(self.base.index);
        let mut batch = LogBatch::default();
        let written = self.put_state(&mut batch, true).and_then(|()| {
            batch.add_command(
                REGION,
                Command::Compact {
                    index: compacted.0 + 1,
                },
            );
            self.write(&mut batch, true, "compacting")
        });
        if let Err(e) = written {
            self.base = old;
            self.compacted = old_compacted;
            return Err(e);
        }
        let removed = (compacted.0 - old_compacted.0) as usize;
        self.terms.drain(..removed.min(self.terms.len()));
        self.remove_unreferenced_snapshots(false);
        Ok(())
    }

    /// Installs a snapshot received from the leader, whose (verified) file is `file` in the
    /// snapshot directory: one synced write clears the log, makes the snapshot the base (naming
    /// the file, which the state machine is restored from next) and raises the hard state's
    /// commit to it.
    pub fn install_snapshot(&mut self, header: &SnapshotHeader, file: String) -> Result<()> {
        if header.index <= self.base.index {
            return Err(RaftError::storage_msg(format!(
                "raft log: snapshot {} is not newer than the base {}",
                header.index, self.base.index
            )));
        }
        self.base = Base {
            index: header.index,
            term: header.term,
            conf_state: header.conf_state.clone(),
            members: header.members.clone(),
            snapshot_file: Some(file),
        };
        self.compacted = (header.index, header.term);
        self.hard_state.commit = self.hard_state.commit.max(header.index);
        self.hard_state.term = self.hard_state.term.max(header.term);
        let mut batch = LogBatch::default();
        batch.add_command(REGION, Command::Clean);
        put(
            &mut batch,
            KEY_FORMAT,
            &pb::StorageFormat {
                version: FORMAT_VERSION,
            },
        )?;
        self.put_state(&mut batch, true)?;
        self.write(&mut batch, true, "installing a snapshot")?;
        self.terms.clear();
        self.sendable = None;
        self.remove_unreferenced_snapshots(false);
        Ok(())
    }

    /// The base's snapshot file is no longer needed (the state machine's store holds the base
    /// index durably): forget it, with one synced write, and delete it.
    pub fn release_base_file(&mut self) -> Result<()> {
        if self.base.snapshot_file.is_none() {
            return Ok(());
        }
        let mut base = self.base.clone();
        base.snapshot_file = None;
        let compacted = self.compacted.0;
        self.compact(base, compacted)
    }

    /// Removes the files of the snapshot directory that neither the base nor the sendable
    /// snapshot names (older snapshots); `at_open`, also files being written or received
    /// (left by a crash: otherwise a background job may be writing one, and a received one
    /// may be on its way to the driver, which removes it if raft-rs does not install it).
    fn remove_unreferenced_snapshots(&self, at_open: bool) {
        let keep: Vec<&str> = [
            self.base.snapshot_file.as_deref(),
            self.sendable.as_ref().map(|s| s.file.as_str()),
        ]
        .into_iter()
        .flatten()
        .collect();
        let Ok(rd) = std::fs::read_dir(&self.snap_dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let in_flight = name.starts_with(snapshot::INCOMING_PREFIX) || name.ends_with(".tmp");
            if keep.contains(&name.as_ref()) || (!at_open && in_flight) {
                continue;
            }
            if let Err(err) = std::fs::remove_file(e.path()) {
                tracing::warn!(file = %e.path().display(), error = %err, "cannot remove an old snapshot file");
            }
        }
    }

    /// Bytes of the log's files (for metrics).
    pub fn used_bytes(&self) -> u64 {
        self.engine.get_used_size() as u64
    }
}

/// The batch that creates an upgraded log (see `legacy_sled`): the format record, the hard
/// state, the base, the compaction point and the entries after it.
pub(super) fn write_upgraded(
    batch: &mut LogBatch,
    hs: &HardState,
    base: Base,
    compacted: (u64, u64),
    entries: &[Entry],
) -> Result<()> {
    let contiguous = entries
        .iter()
        .enumerate()
        .all(|(i, e)| e.index == compacted.0 + 1 + i as u64);
    if !contiguous || compacted.0 > base.index {
        return Err(RaftError::corrupt(
            "the format-1 log",
            format!(
                "its entries do not follow its compaction point {} (base {})",
                compacted.0, base.index
            ),
        ));
    }
    put(
        batch,
        KEY_FORMAT,
        &pb::StorageFormat {
            version: FORMAT_VERSION,
        },
    )?;
    batch
        .put_message(REGION, KEY_HARD_STATE.to_vec(), hs)
        .map_err(|e| engine_err("encoding the hard state", e))?;
    put(batch, KEY_BASE, &base.to_pb()?)?;
    put(
        batch,
        KEY_COMPACTED,
        &pb::Compacted {
            index: compacted.0,
            term: compacted.1,
        },
    )?;
    if !entries.is_empty() {
        batch
            .add_entries::<EntryMsg>(REGION, entries)
            .map_err(|e| engine_err("encoding entries", e))?;
    }
    Ok(())
}

fn put(batch: &mut LogBatch, key: &[u8], m: &impl prost::Message) -> Result<()> {
    batch
        .put(REGION, key.to_vec(), m.encode_to_vec())
        .map_err(|e| engine_err("encoding a record", e))
}

/// Opens raft-engine in `dir` and makes its files and their directory entries durable: the
/// engine syncs its directory whenever it creates a file later, but not for the first files,
/// and writes the header of the first rewrite-queue file without a sync (seen with strace).
pub(super) fn open_engine(dir: &Path, opts: LogOptions) -> Result<Engine> {
    let cfg = raft_engine::Config {
        dir: dir.display().to_string(),
        target_file_size: ReadableSize(opts.file_bytes),
        purge_threshold: ReadableSize(opts.purge_bytes),
        prefill_for_recycle: opts.prefill,
        prefill_limit: opts.prefill.then_some(ReadableSize(opts.purge_bytes)),
        // Entries are state machine commands; compressing them costs CPU on the write path
        // for little space (the log is compacted regularly).
        batch_compression_threshold: ReadableSize(0),
        recovery_threads: 2,
        ..Default::default()
    };
    let engine =
        Engine::open(cfg).map_err(|e| engine_err(&format!("opening {}", dir.display()), e))?;
    for e in std::fs::read_dir(dir).map_err(|e| RaftError::storage_io(dir, e))? {
        let path = e.map_err(|e| RaftError::storage_io(dir, e))?.path();
        if path.is_file() {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| RaftError::storage_io(&path, e))?;
        }
    }
    snapshot::sync_dir(dir)?;
    if let Some(parent) = dir.parent() {
        snapshot::sync_dir(parent)?;
    }
    Ok(engine)
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.base.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        if low == high {
            return Ok(out);
        }
        let max = max_size.into().map(|m| m.min(usize::MAX as u64) as usize);
        self.engine
            .fetch_entries_to::<EntryMsg>(REGION, low, high, max, &mut out)
            .map_err(|e| to_raft(engine_err("reading entries", e)))?;
        if out.is_empty() || out[0].index != low {
            // A hole: never hand raft-rs a shorter range than it asked for.
            return Err(to_raft(RaftError::corrupt(
                "the raft log",
                format!("entries {low}..{high} are incomplete"),
            )));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.compacted.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(LogStore::first_index(self))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(LogStore::last_index(self))
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // The sendable snapshot must be recent enough for the request and include the
        // recipient: a member silently ignores a snapshot whose ConfState lacks it. Otherwise
        // the driver has a fresh one written and raft-rs asks again.
        let usable = self.sendable.as_ref().filter(|s| {
            let cs = s.metadata.get_conf_state();
            let includes_to = [
                &cs.voters,
                &cs.learners,
                &cs.voters_outgoing,
                &cs.learners_next,
            ]
            .iter()
            .any(|ids| ids.contains(&to));
            s.metadata.index >= request_index && includes_to
        });
        let Some(s) = usable else {
            self.snapshot_wanted.set(true);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        };
        let mut snap = Snapshot::default();
        snap.set_metadata(s.metadata.clone());
        snap.set_data(
            pb::SnapshotDescriptor {
                file: s.file.clone(),
                size: s.size,
            }
            .encode_to_vec()
            .into(),
        );
        Ok(snap)
    }
}
