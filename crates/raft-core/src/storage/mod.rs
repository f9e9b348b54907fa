//! Durable Raft storage: the log on tikv's `raft-engine`, snapshots as record files.
//!
//! # Layout of a data directory
//!
//! ```text
//!   DATA_DIR/raft-log/     raft-engine: the entries, and under keys of region 1:
//!                            format    StorageFormat (version 2)
//!                            hs        raft-rs HardState (term, vote, commit)
//!                            base      LogBase: index/term, ConfState, address book, snapshot file
//!                            compacted Compacted: index/term of the last removed entry
//!   DATA_DIR/snapshots/    snapshot files (see `snapshot`), named snap-<index>-<term>.qks
//!   DATA_DIR/...           whatever the state machine keeps (the replica groups: `kv/`)
//! ```
//!
//! Every change to the log and its keys is one `raft-engine` write: one `pwrite` of a
//! checksummed record and, when it must be durable, one `fdatasync` (raft-engine preallocates
//! and recycles its files, and syncs its directory when it creates or renames one; the first
//! file, which it creates without that, is covered by a directory sync right after the engine
//! opens). Formats are prost messages (`proto/storage.proto`) under versioned keys.
//!
//! # What is durable when (the rule)
//!
//! An acknowledgement may depend only on what is fsynced: entries and the hard state are synced
//! before any vote or append response of the same Ready leaves (the driver's step 3), and the
//! leader counts itself in a quorum only after its own sync. A snapshot file is fsynced, and
//! its directory too, before any record names it.
//!
//! The log is compacted only behind a point the member can restart from: the base. The base
//! names the index up to which the log may go, the membership there, and, unless the state
//! machine's own store has been synced past it, the snapshot file that holds the state there:
//!
//! - a state machine kept in memory gets a snapshot file at every compaction, and the base
//!   names it;
//! - a state machine with its own store ([`crate::Durability::OwnStore`]) is synced (every file
//!   of its store, and the directories holding new files) before the log is compacted up to the
//!   index that sync covered; the base then names no file. After a crash the store may have
//!   lost writes after its last sync, but the log still holds every entry after that sync.
//!
//! So every acknowledged write is, at any moment, either in the synced log or in synced
//! snapshot/store files, and a restart finds it. `tests::durability` records the file
//! operations of a storage under test and fails on any file written and not synced before the
//! write returned.
//!
//! # Invariants
//! - `first_index = compacted.index + 1 <= base.index + 1`; entries between them stay readable
//!   for followers that lag a little.
//! - `term(first_index - 1)` is always answerable (`compacted`), as raft-rs checks it when it
//!   appends after a compaction.
//! - The persisted hard state's commit is never below the base index.
//! - Installing a snapshot from the leader is one write (log cleared, base naming the received
//!   file, hard state); the state machine is restored from the file afterwards, and if the
//!   member crashes in between, it restores the file again on restart.

mod legacy_sled;
mod log;
pub mod snapshot;

pub use log::{
    Base, LogOptions, LogStore, SendableSnapshot, BOOTSTRAP_INDEX, LOG_DIR, SNAPSHOT_DIR,
};
pub use snapshot::{SnapshotFileReader, SnapshotFileWriter};

#[cfg(test)]
mod tests;
