//! The previous layout (format 1: the log in sled, `DATA_DIR/sled`), read once to upgrade a
//! data directory in place.
//!
//! Format 1 kept one sled tree, `raft`, with `hs` (HardState), `snap` (the snapshot's
//! SnapshotMetadata), `cmp` (index and term of the last compacted entry, 16 bytes) and
//! `e` + big-endian index (one entry each), and the snapshot's data in
//! `snapshots/snap-<index>-<term>.bin` (`QKS1`, the address book, then the state machine's
//! bytes). The upgrade writes the same log, hard state and snapshot into a new engine under a
//! temporary name, syncs it, renames it to `raft-log`, and only then deletes `sled/`: a crash at
//! any point leaves either the old layout (upgraded again on the next start) or the new one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, SnapshotMetadata};
use raft_engine::LogBatch;

use super::log::{open_engine, BOOTSTRAP_INDEX, FORMAT_VERSION, SNAPSHOT_DIR};
use super::snapshot::{sync_dir, SnapshotFileWriter, SnapshotHeader, CHUNK_BYTES};
use crate::error::{RaftError, Result};

const SLED_DIR: &str = "sled";

fn sled_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(SLED_DIR)
}

/// Whether `data_dir` holds a format-1 log.
pub fn exists(data_dir: &Path) -> bool {
    sled_dir(data_dir).join("db").exists()
}

/// Removes the format-1 directory left behind by an upgrade that was cut short after its
/// new log became durable.
pub fn remove_leftover(data_dir: &Path) {
    let dir = sled_dir(data_dir);
    if dir.exists() {
        tracing::info!(dir = %dir.display(), "removing the upgraded format-1 log");
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the format-1 log");
        }
    }
}

fn sled_err(e: sled::Error) -> RaftError {
    RaftError::storage("format-1 log (sled)", e)
}

fn u64_be(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

/// What a format-1 directory holds.
struct Legacy {
    hard_state: HardState,
    snapshot: SnapshotMetadata,
    compacted: (u64, u64),
    entries: Vec<Entry>,
    members: BTreeMap<u64, String>,
    state: Vec<u8>,
}

fn read(data_dir: &Path) -> Result<Legacy> {
    let db = sled::Config::new()
        .path(sled_dir(data_dir))
        .segment_size(16 << 20)
        .open()
        .map_err(sled_err)?;
    let tree = db.open_tree("raft").map_err(sled_err)?;
    let get = |k: &[u8]| tree.get(k).map_err(sled_err);
    let bad = |what: &str| RaftError::corrupt("the format-1 log", what);
    let snapshot = match get(b"snap")? {
        Some(v) => SnapshotMetadata::parse_from_bytes(&v).map_err(|e| bad(&e.to_string()))?,
        None => return Err(bad("it has no snapshot record")),
    };
    let hard_state = match get(b"hs")? {
        Some(v) => HardState::parse_from_bytes(&v).map_err(|e| bad(&e.to_string()))?,
        None => HardState::default(),
    };
    let compacted = match get(b"cmp")? {
        Some(v) if v.len() == 16 => (u64_be(&v).unwrap_or(0), u64_be(&v[8..]).unwrap_or(0)),
        Some(_) => return Err(bad("its compaction record is malformed")),
        None => (snapshot.index, snapshot.term),
    };
    let mut entries = Vec::new();
    for kv in tree.scan_prefix([b'e']) {
        let (k, v) = kv.map_err(sled_err)?;
        let e = Entry::parse_from_bytes(&v).map_err(|e| bad(&e.to_string()))?;
        if u64_be(&k[1..]) != Some(e.index) {
            return Err(bad("an entry is stored under another index"));
        }
        entries.push(e);
    }
    let path = data_dir.join(SNAPSHOT_DIR).join(format!(
        "snap-{:020}-{:020}.bin",
        snapshot.index, snapshot.term
    ));
    let bytes = std::fs::read(&path).map_err(|e| RaftError::storage_io(&path, e))?;
    let (members, state) = decode_snapshot_data(&bytes).ok_or_else(|| bad("its snapshot file"))?;
    Ok(Legacy {
        hard_state,
        snapshot,
        compacted,
        entries,
        members,
        state,
    })
}

/// `QKS1`, the number of members, each as id, address length and address, then the state.
fn decode_snapshot_data(mut b: &[u8]) -> Option<(BTreeMap<u64, String>, Vec<u8>)> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }
    if take(&mut b, 4)? != b"QKS1" {
        return None;
    }
    let n = u32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
    let mut members = BTreeMap::new();
    for _ in 0..n {
        let id = u64::from_be_bytes(take(&mut b, 8)?.try_into().ok()?);
        let len = u32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?) as usize;
        let addr = std::str::from_utf8(take(&mut b, len)?).ok()?;
        members.insert(id, addr.to_string());
    }
    Some((members, b.to_vec()))
}

/// Upgrades `data_dir` from format 1 into a new log at `log_dir` (see the module docs).
pub fn upgrade(data_dir: &Path, log_dir: &Path, opts: super::log::LogOptions) -> Result<()> {
    tracing::info!(dir = %data_dir.display(), "upgrading the Raft log from format 1 (sled) to format {FORMAT_VERSION} (raft-engine)");
    let old = read(data_dir)?;
    let snap_dir = data_dir.join(SNAPSHOT_DIR);
    let header = SnapshotHeader {
        index: old.snapshot.index,
        term: old.snapshot.term,
        conf_state: old.snapshot.get_conf_state().clone(),
        members: old.members.clone(),
    };
    let snapshot_file = if old.snapshot.index > BOOTSTRAP_INDEX {
        let mut w = SnapshotFileWriter::create(&snap_dir, &header)?;
        for chunk in old.state.chunks(CHUNK_BYTES) {
            w.push_chunk(chunk.to_vec())?;
        }
        Some(w.finish()?.0)
    } else {
        None
    };
    let tmp = data_dir.join(format!("{}.upgrading", super::log::LOG_DIR));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| RaftError::storage_io(&tmp, e))?;
    }
    {
        let engine = open_engine(&tmp, opts)?;
        let mut batch = LogBatch::default();
        super::log::write_upgraded(
            &mut batch,
            &old.hard_state,
            super::log::Base {
                index: header.index,
                term: header.term,
                conf_state: header.conf_state.clone(),
                members: old.members,
                snapshot_file,
            },
            old.compacted,
            &old.entries,
        )?;
        engine
            .write(&mut batch, true)
            .map_err(|e| RaftError::storage("writing the upgraded log", e))?;
    }
    std::fs::rename(&tmp, log_dir).map_err(|e| RaftError::storage_io(log_dir, e))?;
    sync_dir(data_dir)?;
    remove_leftover(data_dir);
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a format-1 data directory the way the previous version did.
    pub(crate) fn write_format_1(
        data_dir: &Path,
        hs: &HardState,
        snapshot: &SnapshotMetadata,
        compacted: (u64, u64),
        entries: &[Entry],
        members: &BTreeMap<u64, String>,
        state: &[u8],
    ) {
        let db = sled::Config::new()
            .path(sled_dir(data_dir))
            .segment_size(16 << 20)
            .open()
            .unwrap();
        let tree = db.open_tree("raft").unwrap();
        tree.insert(b"hs", hs.write_to_bytes().unwrap()).unwrap();
        tree.insert(b"snap", snapshot.write_to_bytes().unwrap())
            .unwrap();
        let mut c = compacted.0.to_be_bytes().to_vec();
        c.extend_from_slice(&compacted.1.to_be_bytes());
        tree.insert(b"cmp", c).unwrap();
        for e in entries {
            let mut k = vec![b'e'];
            k.extend_from_slice(&e.index.to_be_bytes());
            tree.insert(k, e.write_to_bytes().unwrap()).unwrap();
        }
        db.flush().unwrap();
        let mut data = b"QKS1".to_vec();
        data.extend_from_slice(&(members.len() as u32).to_be_bytes());
        for (id, addr) in members {
            data.extend_from_slice(&id.to_be_bytes());
            data.extend_from_slice(&(addr.len() as u32).to_be_bytes());
            data.extend_from_slice(addr.as_bytes());
        }
        data.extend_from_slice(state);
        let snaps = data_dir.join(SNAPSHOT_DIR);
        std::fs::create_dir_all(&snaps).unwrap();
        std::fs::write(
            snaps.join(format!(
                "snap-{:020}-{:020}.bin",
                snapshot.index, snapshot.term
            )),
            data,
        )
        .unwrap();
    }
}
