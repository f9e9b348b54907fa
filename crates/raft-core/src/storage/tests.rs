//! The log storage against raft-rs's storage conformance cases (ported from raft-rs 0.7's
//! `MemStorage` tests), plus restarts, snapshot installation and the format-1 upgrade.

use std::collections::BTreeMap;
use std::path::Path;

use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use raft::{GetEntriesContext, Storage, StorageError};

use super::snapshot::{SnapshotFileReader, SnapshotFileWriter, SnapshotHeader};
use super::*;

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

fn conf(voters: &[u64]) -> ConfState {
    ConfState {
        voters: voters.to_vec(),
        ..Default::default()
    }
}

fn base(index: u64, term: u64) -> Base {
    Base {
        index,
        term,
        conf_state: conf(&[1]),
        members: members(),
        snapshot_file: None,
    }
}

/// A joining member's log (empty at 0) holding `3..=5` (terms = indexes) after a compaction
/// to 2: the shape of raft-rs's `MemStorage` test fixtures, whose first entry is 3.
fn fixture(dir: &Path, last: u64) -> LogStore {
    let mut s = LogStore::open(dir, None, &members()).unwrap();
    let ents: Vec<_> = (1..=last).map(|i| entry(i, i)).collect();
    s.append(&ents, None, true).unwrap();
    s.compact(base(2, 2), 2).unwrap();
    s
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

/// raft-engine caches the last block it decoded per thread, keyed by file and offset only:
/// two engines with the same file layout read on one thread would see each other's entries.
/// A member reads its log on its own driver thread; tests that open several logs with the
/// same layout give each its own thread too.
fn on_own_thread(f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::spawn(f).join() {
        std::panic::resume_unwind(e);
    }
}

fn raft_err(e: StorageError) -> raft::Error {
    raft::Error::Store(e)
}

#[test]
fn conformance_term() {
    let dir = tempfile::tempdir().unwrap();
    let s = fixture(dir.path(), 5);
    assert_eq!(s.term(1), Err(raft_err(StorageError::Compacted)));
    // The compaction point's term stays answerable (raft-rs checks it when appending).
    assert_eq!(s.term(2), Ok(2));
    for i in 3..=5 {
        assert_eq!(s.term(i), Ok(i));
    }
    assert_eq!(s.term(6), Err(raft_err(StorageError::Unavailable)));
}

#[test]
fn conformance_entries() {
    let dir = tempfile::tempdir().unwrap();
    let s = fixture(dir.path(), 6);
    let size = |i: u64| u64::from(protobuf::Message::compute_size(&entry(i, i)));
    let get = |lo, hi, max: u64| s.entries(lo, hi, max, GetEntriesContext::empty(false));
    let want = |r: std::ops::RangeInclusive<u64>| Ok(r.map(|i| entry(i, i)).collect::<Vec<_>>());
    assert_eq!(get(2, 6, u64::MAX), Err(raft_err(StorageError::Compacted)));
    assert_eq!(get(3, 4, u64::MAX), want(3..=3));
    assert_eq!(get(4, 5, u64::MAX), want(4..=4));
    assert_eq!(get(4, 6, u64::MAX), want(4..=5));
    assert_eq!(get(4, 7, u64::MAX), want(4..=6));
    // Even with a zero limit the first entry comes back.
    assert_eq!(get(4, 7, 0), want(4..=4));
    assert_eq!(get(4, 7, size(4) + size(5)), want(4..=5));
    assert_eq!(get(4, 7, size(4) + size(5) + size(6) / 2), want(4..=5));
    assert_eq!(get(4, 7, size(4) + size(5) + size(6) - 1), want(4..=5));
    assert_eq!(get(4, 7, size(4) + size(5) + size(6)), want(4..=6));
    assert_eq!(
        get(4, 8, u64::MAX),
        Err(raft_err(StorageError::Unavailable))
    );
}

#[test]
fn conformance_first_and_last_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fixture(dir.path(), 5);
    assert_eq!(
        (Storage::first_index(&s), Storage::last_index(&s)),
        (Ok(3), Ok(5))
    );
    s.append(&[entry(6, 5)], None, true).unwrap();
    assert_eq!(Storage::last_index(&s), Ok(6));
    s.compact(base(4, 4), 3).unwrap();
    assert_eq!(Storage::first_index(&s), Ok(4));
}

#[test]
fn conformance_compact() {
    // (compact to, first index, its term, entries left) from a log of 3..=5.
    for (to, first, term, len) in [(2, 3, 3, 3), (3, 4, 4, 2), (4, 5, 5, 1), (5, 6, 0, 0)] {
        on_own_thread(move || {
            let dir = tempfile::tempdir().unwrap();
            let mut s = fixture(dir.path(), 5);
            s.compact(base(to.max(2), to.max(2)), to).unwrap();
            assert_eq!(Storage::first_index(&s), Ok(first), "compact to {to}");
            let got_term = s
                .entries(first, first + 1, 1, GetEntriesContext::empty(false))
                .map(|v| v[0].term)
                .unwrap_or(0);
            assert_eq!(got_term, term, "compact to {to}");
            let last = Storage::last_index(&s).unwrap();
            let n = s
                .entries(first, last + 1, 100, GetEntriesContext::empty(false))
                .unwrap()
                .len();
            assert_eq!(n, len, "compact to {to}");
        });
    }
}

#[test]
fn conformance_append() {
    let log = |dir: &Path| -> Vec<Entry> {
        let s = LogStore::open(dir, None, &BTreeMap::new()).unwrap();
        let (f, l) = (s.first_index(), s.last_index());
        s.entries(f, l + 1, u64::MAX, GetEntriesContext::empty(false))
            .unwrap()
    };
    let e = |pairs: &[(u64, u64)]| pairs.iter().map(|(i, t)| entry(*i, *t)).collect::<Vec<_>>();
    let cases: Vec<(Vec<Entry>, Option<Vec<Entry>>)> = vec![
        (
            e(&[(3, 3), (4, 4), (5, 5)]),
            Some(e(&[(3, 3), (4, 4), (5, 5)])),
        ),
        (
            e(&[(3, 3), (4, 6), (5, 6)]),
            Some(e(&[(3, 3), (4, 6), (5, 6)])),
        ),
        (
            e(&[(3, 3), (4, 4), (5, 5), (6, 5)]),
            Some(e(&[(3, 3), (4, 4), (5, 5), (6, 5)])),
        ),
        // Overwriting compacted entries is refused (and changes nothing).
        (e(&[(2, 3), (3, 3), (4, 5)]), None),
        // A conflicting suffix is replaced.
        (e(&[(4, 5)]), Some(e(&[(3, 3), (4, 5)]))),
        (e(&[(6, 6)]), Some(e(&[(3, 3), (4, 4), (5, 5), (6, 6)]))),
        // A hole is refused.
        (e(&[(8, 6)]), None),
    ];
    for (i, (ents, want)) in cases.into_iter().enumerate() {
        on_own_thread(move || {
            let dir = tempfile::tempdir().unwrap();
            let mut s = fixture(dir.path(), 5);
            let r = s.append(&ents, None, true);
            drop(s);
            // Read back after a reopen: what was written is what survives.
            match want {
                Some(w) => {
                    r.unwrap_or_else(|e| panic!("#{i}: {e}"));
                    assert_eq!(log(dir.path()), w, "#{i}");
                }
                None => {
                    assert!(r.is_err(), "#{i}: accepted");
                    assert_eq!(log(dir.path()), e(&[(3, 3), (4, 4), (5, 5)]), "#{i}");
                }
            }
        });
    }
}

#[test]
fn conformance_snapshot_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fixture(dir.path(), 5);
    // No snapshot yet: unavailable, and the driver is asked to write one.
    assert_eq!(
        s.snapshot(0, 1),
        Err(raft_err(StorageError::SnapshotTemporarilyUnavailable))
    );
    assert!(s.take_snapshot_wanted());
    let mut meta = SnapshotMetadata {
        index: 5,
        term: 5,
        ..Default::default()
    };
    meta.set_conf_state(conf(&[1, 2, 3]));
    s.set_sendable(SendableSnapshot {
        metadata: meta.clone(),
        file: "f".into(),
        size: 9,
    });
    let snap = s.snapshot(4, 2).unwrap();
    assert_eq!(snap.get_metadata(), &meta);
    assert!(!s.take_snapshot_wanted());
    // Older than requested, or not including the recipient: a fresh one is wanted.
    assert!(s.snapshot(6, 2).is_err());
    assert!(s.take_snapshot_wanted());
    assert!(s.snapshot(5, 4).is_err());
    assert!(s.take_snapshot_wanted());
}

#[test]
fn a_new_group_starts_from_the_bootstrap_base_and_everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = LogStore::open(dir.path(), Some(vec![1, 2, 3]), &members()).unwrap();
        let b = BOOTSTRAP_INDEX;
        assert_eq!((s.first_index(), s.last_index()), (b + 1, b));
        assert_eq!(s.term(b), Ok(b));
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
        let mut hs = hard_state(7, 2, 8);
        let entries: Vec<_> = (6..=10).map(|i| entry(i, 6)).collect();
        s.append(&entries, Some(&hs), true).unwrap();
        hs.commit = 9;
        s.append(&[], Some(&hs), false).unwrap();
        s.append(&[entry(9, 7)], None, true).unwrap();
        assert_eq!(s.last_index(), 9);
        let mut b8 = base(8, 6);
        b8.conf_state = conf(&[1, 2, 3]);
        s.compact(b8, 7).unwrap();
    }
    let s = LogStore::open(dir.path(), None, &BTreeMap::new()).unwrap();
    assert_eq!((s.first_index(), s.last_index()), (8, 9));
    assert_eq!(s.term(7), Ok(6), "term of the compaction point");
    assert_eq!(s.term(6), Err(raft_err(StorageError::Compacted)));
    assert_eq!(s.term(9), Ok(7));
    assert_eq!(s.hard_state(), &hard_state(7, 2, 9));
    assert_eq!(s.base().index, 8);
    assert_eq!(s.base().members, members());
    assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
}

fn write_snapshot(dir: &Path, header: &SnapshotHeader, chunks: &[&[u8]]) -> String {
    let mut w = SnapshotFileWriter::create(dir, header).unwrap();
    for c in chunks {
        w.push_chunk(c.to_vec()).unwrap();
    }
    w.finish().unwrap().0
}

#[test]
fn installing_a_snapshot_replaces_the_log_atomically_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fixture(dir.path(), 5);
    s.append(&[entry(6, 5), entry(7, 5)], None, true).unwrap();
    let header = SnapshotHeader {
        index: 10,
        term: 3,
        conf_state: conf(&[1, 2]),
        members: members(),
    };
    let file = write_snapshot(s.snapshot_dir(), &header, &[b"state"]);
    s.install_snapshot(&header, file.clone()).unwrap();
    assert_eq!((s.first_index(), s.last_index()), (11, 10));
    s.append(&[entry(11, 3)], None, true).unwrap();
    drop(s);
    let s = LogStore::open(dir.path(), None, &BTreeMap::new()).unwrap();
    assert_eq!((s.first_index(), s.last_index()), (11, 11));
    assert_eq!(s.hard_state().commit, 10);
    assert_eq!(s.term(10), Ok(3));
    assert_eq!(s.base().snapshot_file.as_deref(), Some(file.as_str()));
    assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2]);
    let mut r = SnapshotFileReader::open(&s.snapshot_dir().join(&file)).unwrap();
    assert_eq!(r.header(), &header);
    assert_eq!(r.read_chunk().unwrap().as_deref(), Some(&b"state"[..]));
    assert_eq!(r.read_chunk().unwrap(), None);
    // An older snapshot is refused.
    let mut s = s;
    assert!(s.install_snapshot(&header, file).is_err());
}

#[test]
fn snapshot_files_are_checked_record_by_record() {
    let dir = tempfile::tempdir().unwrap();
    let header = SnapshotHeader {
        index: 12,
        term: 2,
        conf_state: conf(&[1]),
        members: members(),
    };
    let name = write_snapshot(dir.path(), &header, &[b"one", b"two"]);
    let path = dir.path().join(&name);
    assert_eq!(
        SnapshotFileReader::open(&path).unwrap().verify().unwrap(),
        header
    );
    let bytes = std::fs::read(&path).unwrap();
    // Cut off before its end record.
    std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
    let err = SnapshotFileReader::open(&path)
        .unwrap()
        .verify()
        .unwrap_err();
    assert!(err.chain().contains("snapshot"), "{}", err.chain());
    // One flipped bit in a chunk.
    let mut flipped = bytes.clone();
    let at = flipped.len() - 20;
    flipped[at] ^= 1;
    std::fs::write(&path, &flipped).unwrap();
    let err = SnapshotFileReader::open(&path)
        .unwrap()
        .verify()
        .unwrap_err();
    assert!(err.chain().contains("checksum"), "{}", err.chain());
}

#[test]
fn a_log_in_an_unknown_format_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    drop(fixture(dir.path(), 5));
    {
        let engine =
            super::log::open_engine(&dir.path().join("raft-log"), Default::default()).unwrap();
        let mut b = raft_engine::LogBatch::default();
        b.put(
            1,
            b"format".to_vec(),
            prost::Message::encode_to_vec(&quorumkv_proto::storage::StorageFormat { version: 9 }),
        )
        .unwrap();
        engine.write(&mut b, true).unwrap();
    }
    let err = LogStore::open(dir.path(), None, &members()).err().unwrap();
    assert!(err.chain().contains("format 9"), "{}", err.chain());
    assert!(
        err.chain().contains("re-add this member"),
        "{}",
        err.chain()
    );
}

#[test]
fn a_format_1_directory_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let hs = hard_state(4, 1, 14);
    let mut snap = SnapshotMetadata {
        index: 12,
        term: 3,
        ..Default::default()
    };
    snap.set_conf_state(conf(&[1, 2, 3]));
    let entries: Vec<_> = (11..=15).map(|i| entry(i, 4)).collect();
    let book: BTreeMap<u64, String> = [(1, "a:1"), (2, "b:2"), (3, "c:3")]
        .into_iter()
        .map(|(i, a)| (i, a.to_string()))
        .collect();
    let state = vec![7u8; 3 << 20];
    super::legacy_sled::tests::write_format_1(
        dir.path(),
        &hs,
        &snap,
        (10, 3),
        &entries,
        &book,
        &state,
    );
    let s = LogStore::open(dir.path(), None, &BTreeMap::new()).unwrap();
    assert!(
        !dir.path().join("sled").exists(),
        "the format-1 log was left behind"
    );
    assert_eq!(s.hard_state(), &hs);
    assert_eq!((s.first_index(), s.last_index()), (11, 15));
    assert_eq!(s.term(10), Ok(3));
    let got = s
        .entries(11, 16, u64::MAX, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(got, entries);
    let b = s.base();
    assert_eq!((b.index, b.term, &b.members), (12, 3, &book));
    assert_eq!(b.conf_state.voters, vec![1, 2, 3]);
    // The snapshot's state moved into a snapshot file of the new format.
    let mut r = SnapshotFileReader::open(&s.snapshot_dir().join(b.snapshot_file.as_ref().unwrap()))
        .unwrap();
    let mut back = Vec::new();
    while let Some(c) = r.read_chunk().unwrap() {
        back.extend_from_slice(&c);
    }
    assert_eq!(back, state);
    // The old snapshot file is gone; a second open is a plain open.
    let names: Vec<_> = std::fs::read_dir(s.snapshot_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    drop(s);
    let s = LogStore::open(dir.path(), None, &BTreeMap::new()).unwrap();
    assert_eq!(s.last_index(), 15);
}
