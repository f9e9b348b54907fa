//! Durable Raft storage on sled: log entries, hard state and snapshot metadata in one sled tree,
//! snapshot data in files beside it.
//!
//! # Layout
//! One tree, `raft`, with keys:
//! - `hs`: the `HardState` (term, vote, commit);
//! - `snap`: the metadata of the latest snapshot (index, term, and the `ConfState` at that
//!   index), which names the data file `snapshots/snap-<index>-<term>.bin`;
//! - `e` + big-endian index: one log entry.
//!
//! Every change is one `apply_batch` on that tree, which sled applies atomically. A snapshot's
//! data file is written and fsynced *before* the batch that refers to it, so the switch to a new
//! snapshot (metadata, log truncation, hard state) is that one atomic batch; files that no
//! batch refers to are garbage and are removed on open.
//!
//! # Durability (what "persisted" means here)
//! sled 0.34's `flush()` writes its buffers and calls `sync_file_range`, which neither flushes
//! the device cache nor the file's metadata: it is not an fsync. Raft may acknowledge only what
//! survives power loss, so after each flush this module calls `fdatasync` on sled's data file
//! (`sync_data` on a handle kept open for that purpose). One flush + one fdatasync per Ready
//! covers all its entries and the hard state. sled stores items larger than a quarter of a
//! segment as separate "blob" files that it never fsyncs; the segment size is therefore raised
//! to 16 MiB and commands are limited to 3 MiB (see `NodeConfig::max_command_bytes`), so that log
//! entries always stay inline in the synced file.
//!
//! # Invariants
//! - `first_index = snapshot.index + 1` once the log is compacted up to the snapshot; with
//!   trailing entries kept, `first_index <= snapshot.index + 1` and entries up to the snapshot
//!   stay readable.
//! - `term(first_index - 1)` is always answerable: compaction records the index and term of
//!   the last removed entry (`cmp`), since raft-rs checks that term when it appends.
//! - The persisted hard state's commit is never below the snapshot index.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::error::{RaftError, Result};

const KEY_HARD_STATE: &[u8] = b"hs";
const KEY_SNAPSHOT: &[u8] = b"snap";
/// Index and term of the last compacted entry (the entry just before `first_index`).
const KEY_COMPACTED: &[u8] = b"cmp";
const ENTRY_PREFIX: u8 = b'e';

/// Index (and term) of the bootstrap snapshot of a new group. A group starts with its
/// configuration in a snapshot at this index rather than at 0, so the log before it counts as
/// compacted: a member added later can never replay the group's history from index 1 without
/// knowing the initial voters; it must receive a snapshot, which carries the ConfState
/// (TiKV does the same).
pub const BOOTSTRAP_INDEX: u64 = 5;

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = ENTRY_PREFIX;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// What a snapshot's data file holds: the group's address book at the snapshot index and the
/// state machine's bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotData {
    /// Member id -> `host:port`, as of the snapshot index.
    pub members: BTreeMap<u64, String>,
    /// `StateMachine::snapshot()` output (empty for the bootstrap snapshot at index 0).
    pub state: Vec<u8>,
}

impl SnapshotData {
    const MAGIC: &'static [u8; 4] = b"QKS1";

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.state.len() + 64);
        out.extend_from_slice(Self::MAGIC);
        out.extend_from_slice(&(self.members.len() as u32).to_be_bytes());
        for (id, addr) in &self.members {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&(addr.len() as u32).to_be_bytes());
            out.extend_from_slice(addr.as_bytes());
        }
        out.extend_from_slice(&self.state);
        out
    }

    pub fn decode(mut b: &[u8]) -> Result<Self> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
            if b.len() < n {
                return Err(RaftError::storage("snapshot data truncated"));
            }
            let (head, rest) = b.split_at(n);
            *b = rest;
            Ok(head)
        }
        if take(&mut b, 4)? != Self::MAGIC {
            return Err(RaftError::storage("snapshot data has an unknown format"));
        }
        let n = u32::from_be_bytes(take(&mut b, 4)?.try_into().unwrap());
        let mut members = BTreeMap::new();
        for _ in 0..n {
            let id = u64::from_be_bytes(take(&mut b, 8)?.try_into().unwrap());
            let len = u32::from_be_bytes(take(&mut b, 4)?.try_into().unwrap()) as usize;
            let addr = std::str::from_utf8(take(&mut b, len)?)
                .map_err(|_| RaftError::storage("snapshot member address is not UTF-8"))?;
            members.insert(id, addr.to_string());
        }
        Ok(SnapshotData {
            members,
            state: b.to_vec(),
        })
    }
}

/// sled-backed implementation of raft-rs's `Storage`, owned by the driver (inside `RawNode`).
pub struct SledStorage {
    _db: sled::Db,
    tree: sled::Tree,
    /// A handle on sled's data file, kept open to fdatasync it after every flush.
    data_file: File,
    snap_dir: PathBuf,
    hard_state: HardState,
    snapshot: SnapshotMetadata,
    /// (index, term) of the entry just before `first_index`.
    compacted: (u64, u64),
    last_index: u64,
    /// Set when raft-rs asked for a snapshot newer than the one we have; the driver then takes
    /// one.
    snapshot_wanted: Cell<bool>,
}

fn sled_err(e: sled::Error) -> RaftError {
    RaftError::storage(e)
}

fn io_err(path: &Path, e: std::io::Error) -> RaftError {
    RaftError::Storage(format!("{}: {e}", path.display()))
}

fn pb_err(e: protobuf::ProtobufError) -> RaftError {
    RaftError::storage(format!("corrupt record: {e}"))
}

impl SledStorage {
    /// Opens (or creates) the storage in `dir`. When the directory holds no Raft state yet,
    /// `bootstrap` decides the initial configuration: `Some(voters)` creates a new group with
    /// those voters, `None` starts empty (a member waiting to be added to a group). `members`
    /// is the address book written into the initial snapshot.
    pub fn open(
        dir: &Path,
        bootstrap: Option<Vec<u64>>,
        members: &BTreeMap<u64, String>,
    ) -> Result<Self> {
        let sled_dir = dir.join("sled");
        let snap_dir = dir.join("snapshots");
        std::fs::create_dir_all(&snap_dir).map_err(|e| io_err(&snap_dir, e))?;
        let db = sled::Config::new()
            .path(&sled_dir)
            .segment_size(16 << 20)
            .open()
            .map_err(sled_err)?;
        let tree = db.open_tree("raft").map_err(sled_err)?;
        let data_path = sled_dir.join("db");
        let data_file = File::open(&data_path).map_err(|e| io_err(&data_path, e))?;
        let mut s = SledStorage {
            _db: db,
            tree,
            data_file,
            snap_dir,
            hard_state: HardState::default(),
            snapshot: SnapshotMetadata::default(),
            compacted: (0, 0),
            last_index: 0,
            snapshot_wanted: Cell::new(false),
        };
        match s.tree.get(KEY_SNAPSHOT).map_err(sled_err)? {
            Some(v) => {
                s.snapshot = SnapshotMetadata::parse_from_bytes(&v).map_err(pb_err)?;
                if let Some(v) = s.tree.get(KEY_HARD_STATE).map_err(sled_err)? {
                    s.hard_state = HardState::parse_from_bytes(&v).map_err(pb_err)?;
                }
                s.compacted = match s.tree.get(KEY_COMPACTED).map_err(sled_err)? {
                    Some(v) if v.len() == 16 => (
                        u64::from_be_bytes(v[..8].try_into().unwrap()),
                        u64::from_be_bytes(v[8..].try_into().unwrap()),
                    ),
                    _ => (s.snapshot.index, s.snapshot.term),
                };
                s.last_index = match s.tree.scan_prefix([ENTRY_PREFIX]).next_back() {
                    Some(kv) => {
                        let (k, _) = kv.map_err(sled_err)?;
                        u64::from_be_bytes(k[1..].try_into().unwrap())
                    }
                    None => s.snapshot.index,
                };
                s.remove_stale_snapshot_files();
            }
            None => {
                // A brand-new member. A founding member starts from a bootstrap snapshot at
                // BOOTSTRAP_INDEX holding the initial voters; a joining member starts empty
                // (index 0, no configuration) and waits for the leader's snapshot.
                let mut meta = SnapshotMetadata::default();
                if let Some(voters) = bootstrap {
                    meta.index = BOOTSTRAP_INDEX;
                    meta.term = BOOTSTRAP_INDEX;
                    meta.mut_conf_state().voters = voters;
                    s.hard_state.term = BOOTSTRAP_INDEX;
                    s.hard_state.commit = BOOTSTRAP_INDEX;
                }
                let data = SnapshotData {
                    members: members.clone(),
                    state: Vec::new(),
                };
                let index = meta.index;
                s.save_snapshot(meta, &data.encode(), index)?;
                s.last_index = index;
            }
        }
        Ok(s)
    }

    fn snap_path(&self, meta: &SnapshotMetadata) -> PathBuf {
        self.snap_dir
            .join(format!("snap-{:020}-{:020}.bin", meta.index, meta.term))
    }

    fn remove_stale_snapshot_files(&self) {
        let keep = self.snap_path(&self.snapshot);
        if let Ok(rd) = std::fs::read_dir(&self.snap_dir) {
            for e in rd.flatten() {
                if e.path() != keep {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Makes everything written so far durable: sled flush, then fdatasync of its data file.
    fn sync(&self) -> Result<()> {
        self.tree.flush().map_err(sled_err)?;
        self.data_file.sync_data().map_err(RaftError::storage)
    }

    fn write_snapshot_file(&self, meta: &SnapshotMetadata, data: &[u8]) -> Result<()> {
        let path = self.snap_path(meta);
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        f.write_all(data).map_err(|e| io_err(&tmp, e))?;
        f.sync_all().map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        File::open(&self.snap_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(&self.snap_dir, e))
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snapshot
    }

    pub fn first_index(&self) -> u64 {
        self.compacted.0 + 1
    }

    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Whether raft-rs asked for a snapshot newer than the stored one.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// Reads the latest snapshot's data file.
    pub fn snapshot_data(&self) -> Result<SnapshotData> {
        let path = self.snap_path(&self.snapshot);
        let bytes = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
        SnapshotData::decode(&bytes)
    }

    /// Records a commit index learned after the last persist; written with the next batch.
    pub fn set_commit(&mut self, commit: u64) {
        if commit > self.hard_state.commit {
            self.hard_state.commit = commit;
        }
    }

    /// Appends `entries` (replacing any conflicting suffix) and records `hs` with one atomic
    /// batch. With `must_sync` (raft-rs's `Ready::must_sync`: new entries, or a new term or
    /// vote) the batch is made durable before returning; Raft may send the Ready's messages
    /// only after that. A hard state that only moves the commit index is written without a
    /// sync: a lost commit index is recomputed from the log after a restart, so paying an
    /// fsync for it would only add a round of disk latency to every proposal.
    pub fn append(
        &mut self,
        entries: &[Entry],
        hs: Option<&HardState>,
        must_sync: bool,
    ) -> Result<()> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        if let Some(first) = entries.first() {
            if first.index < self.first_index() {
                return Err(RaftError::storage(format!(
                    "append at {} below first index {}",
                    first.index,
                    self.first_index()
                )));
            }
            // Drop the conflicting suffix that these entries replace.
            let new_last = entries.last().unwrap().index;
            for i in new_last + 1..=self.last_index {
                batch.remove(&entry_key(i));
            }
            for e in entries {
                batch.insert(&entry_key(e.index), e.write_to_bytes().map_err(pb_err)?);
            }
        }
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        batch.insert(
            KEY_HARD_STATE,
            self.hard_state.write_to_bytes().map_err(pb_err)?,
        );
        self.tree.apply_batch(batch).map_err(sled_err)?;
        if must_sync || !entries.is_empty() {
            self.sync()?;
        }
        if let Some(last) = entries.last() {
            self.last_index = last.index;
        }
        Ok(())
    }

    /// Installs a snapshot received from the leader: data file first, then one atomic batch
    /// with the metadata, the whole log removed, and a hard state whose commit covers the
    /// snapshot.
    pub fn install_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        let meta = snap.get_metadata().clone();
        if meta.index <= self.snapshot.index {
            return Err(RaftError::storage(format!(
                "snapshot {} is not newer than {}",
                meta.index, self.snapshot.index
            )));
        }
        self.write_snapshot_file(&meta, snap.get_data())?;
        let mut batch = sled::Batch::default();
        for kv in self.tree.scan_prefix([ENTRY_PREFIX]) {
            let (k, _) = kv.map_err(sled_err)?;
            batch.remove(k);
        }
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.commit_snapshot_batch(batch, meta, meta_compacted(snap.get_metadata()))?;
        self.last_index = self.snapshot.index;
        Ok(())
    }

    /// Saves a snapshot the local state machine produced at `meta.index`, then compacts the
    /// log up to `compact_to` (<= `meta.index`), all in one atomic batch after the data file is
    /// durable.
    pub fn save_snapshot(
        &mut self,
        meta: SnapshotMetadata,
        data: &[u8],
        compact_to: u64,
    ) -> Result<()> {
        debug_assert!(compact_to <= meta.index);
        self.write_snapshot_file(&meta, data)?;
        let mut batch = sled::Batch::default();
        let mut compacted = self.compacted;
        if compact_to > self.compacted.0 {
            let term = if compact_to == meta.index {
                meta.term
            } else {
                self.entry(compact_to)?.term
            };
            for i in self.first_index()..=compact_to {
                batch.remove(&entry_key(i));
            }
            compacted = (compact_to, term);
        }
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.commit_snapshot_batch(batch, meta, compacted)
    }

    fn commit_snapshot_batch(
        &mut self,
        mut batch: sled::Batch,
        meta: SnapshotMetadata,
        compacted: (u64, u64),
    ) -> Result<()> {
        batch.insert(KEY_SNAPSHOT, meta.write_to_bytes().map_err(pb_err)?);
        batch.insert(
            KEY_HARD_STATE,
            self.hard_state.write_to_bytes().map_err(pb_err)?,
        );
        let mut c = [0u8; 16];
        c[..8].copy_from_slice(&compacted.0.to_be_bytes());
        c[8..].copy_from_slice(&compacted.1.to_be_bytes());
        batch.insert(KEY_COMPACTED, &c[..]);
        self.tree.apply_batch(batch).map_err(sled_err)?;
        self.sync()?;
        self.snapshot = meta;
        self.compacted = compacted;
        self.remove_stale_snapshot_files();
        Ok(())
    }

    fn entry(&self, index: u64) -> Result<Entry> {
        let v = self
            .tree
            .get(entry_key(index))
            .map_err(sled_err)?
            .ok_or_else(|| RaftError::storage(format!("log entry {index} missing")))?;
        Entry::parse_from_bytes(&v).map_err(pb_err)
    }

    /// Bytes of log entries after `index` (used to decide when to snapshot after a restart).
    pub fn log_bytes_after(&self, index: u64) -> u64 {
        self.tree
            .range(entry_key(index + 1)..=entry_key(u64::MAX))
            .filter_map(|kv| kv.ok())
            .map(|(_, v)| v.len() as u64)
            .sum()
    }
}

fn meta_compacted(meta: &SnapshotMetadata) -> (u64, u64) {
    (meta.index, meta.term)
}

fn to_raft(e: RaftError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl raft::Storage for SledStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.snapshot.get_conf_state().clone(),
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
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        let mut limited = false;
        for kv in self.tree.range(entry_key(low)..entry_key(high)) {
            let (_, v) = kv.map_err(|e| to_raft(sled_err(e)))?;
            size += v.len() as u64;
            // Always return at least one entry, like raft-rs's MemStorage.
            if !out.is_empty() && size > max_size {
                limited = true;
                break;
            }
            out.push(Entry::parse_from_bytes(&v).map_err(|e| to_raft(pb_err(e)))?);
        }
        if !limited && out.len() as u64 != high - low {
            // A hole in the log: never hand raft-rs a shorter range than it asked for.
            return Err(to_raft(RaftError::storage(format!(
                "log entries {low}..{high} incomplete"
            ))));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.compacted.0 {
            return Ok(self.compacted.1);
        }
        if idx == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if idx < self.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.entry(idx).map(|e| e.term).map_err(to_raft)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(SledStorage::first_index(self))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // Have the driver take a fresh snapshot when the stored one is too old for the
        // request, holds no state machine data (bootstrap), or predates the recipient's
        // membership: a member silently ignores a snapshot whose ConfState lacks it.
        let cs = self.snapshot.get_conf_state();
        let includes_to = [
            &cs.voters,
            &cs.learners,
            &cs.voters_outgoing,
            &cs.learners_next,
        ]
        .iter()
        .any(|ids| ids.contains(&to));
        if request_index > self.snapshot.index
            || self.snapshot.index <= BOOTSTRAP_INDEX
            || !includes_to
        {
            self.snapshot_wanted.set(true);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let path = self.snap_path(&self.snapshot);
        let data = std::fs::read(&path).map_err(|e| to_raft(io_err(&path, e)))?;
        let mut snap = Snapshot::default();
        snap.set_metadata(self.snapshot.clone());
        snap.set_data(data.into());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 10].into(),
            ..Default::default()
        }
    }

    fn members() -> BTreeMap<u64, String> {
        [(1, "a:1".to_string())].into_iter().collect()
    }

    #[test]
    fn survives_reopen_with_truncation_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = SledStorage::open(dir.path(), Some(vec![1]), &members()).unwrap();
            let b = BOOTSTRAP_INDEX;
            assert_eq!((s.first_index(), s.last_index()), (b + 1, b));
            assert_eq!(Storage::term(&s, b).unwrap(), b);
            let mut hs = HardState {
                term: 7,
                commit: 8,
                ..Default::default()
            };
            let entries: Vec<_> = (6..=10).map(|i| entry(i, 6)).collect();
            s.append(&entries, Some(&hs), true).unwrap();
            // A commit-only hard state is recorded without a sync.
            hs.commit = 9;
            s.append(&[], Some(&hs), false).unwrap();
            // A conflicting suffix from index 9 replaces 9..=10.
            s.append(&[entry(9, 7)], None, true).unwrap();
            assert_eq!(s.last_index(), 9);
            assert_eq!(Storage::term(&s, 9).unwrap(), 7);
            let mut meta = SnapshotMetadata {
                index: 8,
                term: 6,
                ..Default::default()
            };
            meta.mut_conf_state().voters = vec![1];
            let data = SnapshotData {
                members: members(),
                state: b"state".to_vec(),
            };
            s.save_snapshot(meta, &data.encode(), 7).unwrap();
        }
        let s = SledStorage::open(dir.path(), None, &BTreeMap::new()).unwrap();
        assert_eq!((s.first_index(), s.last_index()), (8, 9));
        assert_eq!(
            Storage::term(&s, 7).unwrap(),
            6,
            "term of the compacted boundary"
        );
        assert!(matches!(
            Storage::term(&s, 6),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        let got = s
            .entries(8, 10, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), vec![8, 9]);
        assert_eq!(s.hard_state().term, 7);
        assert_eq!(s.snapshot_data().unwrap().state, b"state");
        let snap = Storage::snapshot(&s, 0, 1).unwrap();
        assert_eq!(snap.get_metadata().index, 8);
        assert!(Storage::snapshot(&s, 9, 1).is_err(), "older than requested");
        assert!(s.take_snapshot_wanted());
        assert!(
            Storage::snapshot(&s, 0, 2).is_err(),
            "2 is not in its ConfState"
        );
        assert!(s.take_snapshot_wanted());
    }

    #[test]
    fn install_snapshot_replaces_the_log_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SledStorage::open(dir.path(), None, &members()).unwrap();
        s.append(
            &(1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>(),
            None,
            true,
        )
        .unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 10;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2];
        snap.set_data(SnapshotData::default().encode().into());
        s.install_snapshot(&snap).unwrap();
        drop(s);
        let s = SledStorage::open(dir.path(), None, &BTreeMap::new()).unwrap();
        assert_eq!((s.first_index(), s.last_index()), (11, 10));
        assert_eq!(s.hard_state().commit, 10);
        assert_eq!(Storage::term(&s, 10).unwrap(), 3);
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2]);
    }
}
