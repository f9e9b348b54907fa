//! Snapshot files: a header, the state machine's data in chunks, an end record.
//!
//! Each record is framed as `length (u32 BE) | crc32 (u32 BE) | SnapshotRecord` (prost, see
//! `proto/storage.proto`). Files are written to a temporary name, fsynced, renamed into place
//! and their directory fsynced, so a name that exists always denotes a complete file; a reader
//! still checks every frame and refuses a file without its end record. A file is read and
//! written a record at a time: memory stays bounded by the chunk size, whatever the state's
//! size.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message as _;
use protobuf::Message as _;
use quorumkv_proto::storage as pb;
use raft::eraftpb::{ConfState, SnapshotMetadata};

use crate::error::{RaftError, Result};
use crate::state_machine::{SmError, SnapshotChunks, SnapshotSource};

/// Largest piece of state machine data in one record.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Largest frame a reader accepts (a chunk plus its framing, or a header with a large
/// address book).
const MAX_FRAME: usize = 16 << 20;
const FORMAT: u32 = 1;
/// Suffix of complete snapshot files.
pub const SUFFIX: &str = ".qks";
/// Prefix of the files a member receives from its leader (being received, or received and
/// waiting to be installed).
pub const INCOMING_PREFIX: &str = "incoming-";

/// The name of the snapshot file at `index` and `term`.
pub fn file_name(index: u64, term: u64) -> String {
    format!("snap-{index:020}-{term:020}{SUFFIX}")
}

fn io(path: &Path, e: std::io::Error) -> RaftError {
    RaftError::storage_io(path, e)
}

/// fsyncs a directory, so that the names created or renamed in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// What a snapshot file says it is of.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotHeader {
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfState,
    /// The group's address book at `index`.
    pub members: std::collections::BTreeMap<u64, String>,
}

impl SnapshotHeader {
    /// raft-rs's metadata of this snapshot.
    pub fn metadata(&self) -> SnapshotMetadata {
        let mut m = SnapshotMetadata {
            index: self.index,
            term: self.term,
            ..Default::default()
        };
        m.set_conf_state(self.conf_state.clone());
        m
    }

    fn to_pb(&self) -> Result<pb::SnapshotHeader> {
        Ok(pb::SnapshotHeader {
            format: FORMAT,
            index: self.index,
            term: self.term,
            conf_state: self
                .conf_state
                .write_to_bytes()
                .map_err(|e| RaftError::corrupt("conf state", e))?
                .into(),
            members: members_to_pb(&self.members),
        })
    }

    fn from_pb(h: pb::SnapshotHeader) -> Result<Self> {
        if h.format != FORMAT {
            return Err(RaftError::corrupt(
                "snapshot file",
                format!("format {} is not known to this version", h.format),
            ));
        }
        Ok(SnapshotHeader {
            index: h.index,
            term: h.term,
            conf_state: ConfState::parse_from_bytes(&h.conf_state)
                .map_err(|e| RaftError::corrupt("snapshot conf state", e))?,
            members: members_from_pb(h.members),
        })
    }
}

pub(crate) fn members_to_pb(m: &std::collections::BTreeMap<u64, String>) -> Vec<pb::MemberAddr> {
    m.iter()
        .map(|(id, addr)| pb::MemberAddr {
            id: *id,
            addr: addr.clone(),
        })
        .collect()
}

pub(crate) fn members_from_pb(m: Vec<pb::MemberAddr>) -> std::collections::BTreeMap<u64, String> {
    m.into_iter().map(|m| (m.id, m.addr)).collect()
}

/// Writes a snapshot file record by record.
pub struct SnapshotFileWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    dir: PathBuf,
    name: String,
    chunks: u64,
    bytes: u64,
    size: u64,
}

impl SnapshotFileWriter {
    /// Starts `dir/<file_name(index, term)>` (under a temporary name until [`Self::finish`]).
    pub fn create(dir: &Path, header: &SnapshotHeader) -> Result<Self> {
        let name = file_name(header.index, header.term);
        let tmp = dir.join(format!("{name}.{:016x}.tmp", rand::random::<u64>()));
        let file = File::create(&tmp).map_err(|e| io(&tmp, e))?;
        let mut w = SnapshotFileWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            tmp,
            dir: dir.to_path_buf(),
            name,
            chunks: 0,
            bytes: 0,
            size: 0,
        };
        w.record(pb::snapshot_record::Record::Header(header.to_pb()?))?;
        Ok(w)
    }

    fn record(&mut self, r: pb::snapshot_record::Record) -> Result<()> {
        let body = pb::SnapshotRecord { record: Some(r) }.encode_to_vec();
        let mut frame = [0u8; 8];
        frame[..4].copy_from_slice(&(body.len() as u32).to_be_bytes());
        frame[4..].copy_from_slice(&crc32fast::hash(&body).to_be_bytes());
        self.out
            .write_all(&frame)
            .and_then(|_| self.out.write_all(&body))
            .map_err(|e| io(&self.tmp, e))?;
        self.size += 8 + body.len() as u64;
        Ok(())
    }

    /// Appends one piece of state machine data.
    pub fn push_chunk(&mut self, chunk: Vec<u8>) -> Result<()> {
        self.chunks += 1;
        self.bytes += chunk.len() as u64;
        self.record(pb::snapshot_record::Record::Chunk(chunk.into()))
    }

    /// Writes the end record, fsyncs the file, renames it into place and fsyncs the directory.
    /// Returns the file's name and size.
    pub fn finish(mut self) -> Result<(String, u64)> {
        self.record(pb::snapshot_record::Record::End(pb::SnapshotEnd {
            chunks: self.chunks,
            bytes: self.bytes,
        }))?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| io(&self.tmp, e))?;
        let path = self.dir.join(&self.name);
        std::fs::rename(&self.tmp, &path).map_err(|e| io(&path, e))?;
        sync_dir(&self.dir)?;
        Ok((self.name, self.size))
    }
}

/// Writes the whole of `source` as the snapshot file described by `header` in `dir`.
/// Gives up (with an error, leaving only a temporary file) once `cancel` is set.
pub fn write_from_source(
    dir: &Path,
    header: &SnapshotHeader,
    source: &mut dyn SnapshotSource,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<(String, u64)> {
    let mut w = SnapshotFileWriter::create(dir, header)?;
    loop {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(RaftError::storage_msg(
                "snapshot abandoned: the member stops",
            ));
        }
        let Some(chunk) = source
            .next_chunk(CHUNK_BYTES)
            .map_err(|e| RaftError::state_machine("taking a snapshot", e))?
        else {
            break;
        };
        w.push_chunk(chunk)?;
    }
    w.finish()
}

/// Reads a snapshot file record by record; the chunks are the state machine's data.
pub struct SnapshotFileReader {
    input: BufReader<File>,
    path: PathBuf,
    header: SnapshotHeader,
    chunks: u64,
    bytes: u64,
    ended: bool,
}

impl SnapshotFileReader {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| io(path, e))?;
        let mut input = BufReader::with_capacity(1 << 20, file);
        let header = match read_record(&mut input, path)? {
            Some(pb::snapshot_record::Record::Header(h)) => SnapshotHeader::from_pb(h)?,
            _ => {
                return Err(RaftError::corrupt(
                    "snapshot file",
                    format!("{} does not start with a header", path.display()),
                ))
            }
        };
        Ok(SnapshotFileReader {
            input,
            path: path.to_path_buf(),
            header,
            chunks: 0,
            bytes: 0,
            ended: false,
        })
    }

    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// The next chunk, or `None` after a valid end record.
    pub fn read_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        if self.ended {
            return Ok(None);
        }
        let bad = |what: String| RaftError::corrupt("snapshot file", what);
        match read_record(&mut self.input, &self.path)? {
            Some(pb::snapshot_record::Record::Chunk(c)) => {
                self.chunks += 1;
                self.bytes += c.len() as u64;
                Ok(Some(c.to_vec()))
            }
            Some(pb::snapshot_record::Record::End(end)) => {
                if (end.chunks, end.bytes) != (self.chunks, self.bytes) {
                    return Err(bad(format!(
                        "{} ends after {} chunks / {} bytes but says {} / {}",
                        self.path.display(),
                        self.chunks,
                        self.bytes,
                        end.chunks,
                        end.bytes
                    )));
                }
                self.ended = true;
                Ok(None)
            }
            Some(pb::snapshot_record::Record::Header(_)) => {
                Err(bad(format!("{} has a second header", self.path.display())))
            }
            None => Err(bad(format!(
                "{} ends without its end record (cut off)",
                self.path.display()
            ))),
        }
    }

    /// Reads the rest of the file, checking every frame (a received file is checked before
    /// it is handed to Raft).
    pub fn verify(mut self) -> Result<SnapshotHeader> {
        while self.read_chunk()?.is_some() {}
        Ok(self.header)
    }
}

impl SnapshotChunks for SnapshotFileReader {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, SmError> {
        self.read_chunk().map_err(|e| Box::new(e) as SmError)
    }
}

/// One record, or `None` at a clean end of file.
fn read_record(input: &mut impl Read, path: &Path) -> Result<Option<pb::snapshot_record::Record>> {
    let mut frame = [0u8; 8];
    match input.read_exact(&mut frame[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(io(path, e)),
    }
    input.read_exact(&mut frame[1..]).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            RaftError::corrupt(
                "snapshot file",
                format!("{} ends inside a record (cut off)", path.display()),
            )
        } else {
            io(path, e)
        }
    })?;
    let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_be_bytes(frame[4..].try_into().expect("4 bytes"));
    if len > MAX_FRAME {
        return Err(RaftError::corrupt(
            "snapshot file",
            format!("{}: a record of {len} bytes", path.display()),
        ));
    }
    let mut body = vec![0u8; len];
    input.read_exact(&mut body).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            RaftError::corrupt(
                "snapshot file",
                format!("{} ends inside a record (cut off)", path.display()),
            )
        } else {
            io(path, e)
        }
    })?;
    if crc32fast::hash(&body) != crc {
        return Err(RaftError::corrupt(
            "snapshot file",
            format!("{}: a record fails its checksum", path.display()),
        ));
    }
    let record = pb::SnapshotRecord::decode(&body[..])
        .map_err(|e| RaftError::corrupt("snapshot file", e))?;
    Ok(record.record)
}
