//! Backups: copying every shard out of a live cluster ([`KvClient::export_shard`]) and the
//! file that holds the copy ([`BackupWriter`], [`BackupReader`]).
//!
//! # What a backup is
//! For every shard, the copy its owning group's leader takes at one log index after a
//! ReadIndex (`ExportShard`, see `proto/shardkv.proto`): every write acknowledged before the
//! shard's copy began is in it, and nothing applied after. Shards are copied one after the
//! other, each at its own index (and groups have their own logs), so the backup as a whole is
//! not one instant of the cluster: a write acknowledged after the backup began may be in one
//! shard's copy and a later one missing from another's. The header records the controller's
//! configuration and the shard count when the backup began.
//!
//! # The file
//! A sequence of records framed as `length (u32 BE) | crc32 (u32 BE) | BackupRecord` (prost,
//! `proto/backup.proto`; the framing of the raft core's snapshot files): a header with the
//! format version, then each shard's begin, entries and end records in shard order, then an
//! end record with the totals. [`BackupWriter`] writes to a temporary file in the target's
//! directory, fsyncs it, renames it into place and fsyncs the directory, so a file under the
//! target name is always complete. [`BackupReader`] checks every frame's checksum, the
//! version, the order of the records and every count, and refuses a file that ends before
//! its end record or goes on after it: a damaged file is refused, never half-read silently.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message as _;
use quorumkv_common::rpc::ErrorKind;
use quorumkv_proto::backup as pb;
use quorumkv_proto::shardkv as kv;
use quorumkv_shardctrler_client::Config;

use crate::{KvClient, KvError};

/// The file layout this version writes and reads.
pub const FORMAT: u32 = 1;
/// Largest frame a reader accepts: one export chunk (at most 1 MiB, plus one entry of at
/// most a 4 KiB key and a 1 MiB value) with room to spare.
const MAX_FRAME: usize = 16 << 20;
/// What a backup asks of each `ExportShard` chunk.
pub const EXPORT_CHUNK_BYTES: u64 = 1 << 20;

/// Why a backup could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing the file failed.
    #[error("{0}")]
    Io(String),
    /// The file is not a complete, intact backup (checksum, truncation, structure): do not
    /// use it.
    #[error("damaged backup: {0}")]
    Damaged(String),
    /// A backup in a layout this version does not read.
    #[error("backup format version {found}, but this shardkv-client reads version {FORMAT}")]
    UnsupportedFormat { found: u32 },
}

fn io(what: &str, path: &Path, e: std::io::Error) -> BackupError {
    BackupError::Io(format!("{what} {}: {e}", path.display()))
}

/// The controller's configuration as the backup header records it.
pub fn config_to_pb(c: &Config) -> kv::Config {
    kv::Config {
        num: c.num,
        shards: c.shards.clone(),
        groups: c
            .groups
            .iter()
            .map(|(gid, servers)| kv::Group {
                gid: *gid,
                servers: servers.clone(),
            })
            .collect(),
    }
}

/// Writes a backup file (see the module docs). Dropping it before [`BackupWriter::finish`]
/// removes the temporary file: the target is never left half-written.
pub struct BackupWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    /// Bytes written so far (the offset of the next record).
    pos: u64,
    /// The shard being written: its begin record's offset, keys and bytes so far.
    open: Option<(u64, u64, u64, u64)>,
    num_shards: u64,
    next_shard: u64,
    totals: pb::BackupEnd,
}

impl BackupWriter {
    /// Starts a backup to `path` (replaced when complete) described by `header`.
    pub fn create(path: &Path, header: pb::BackupHeader) -> Result<Self, BackupError> {
        let name = path
            .file_name()
            .ok_or_else(|| BackupError::Io(format!("{} is not a file name", path.display())))?;
        let tmp = path.with_file_name(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = File::create(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
        let mut w = BackupWriter {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::new(file)),
            pos: 0,
            open: None,
            num_shards: header.num_shards,
            next_shard: 0,
            totals: pb::BackupEnd::default(),
        };
        w.record(pb::backup_record::Record::Header(header))?;
        Ok(w)
    }

    fn record(&mut self, r: pb::backup_record::Record) -> Result<(), BackupError> {
        let body = pb::BackupRecord { record: Some(r) }.encode_to_vec();
        let mut frame = Vec::with_capacity(8 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        frame.extend_from_slice(&body);
        let out = self.out.as_mut().expect("open until finished");
        out.write_all(&frame)
            .map_err(|e| io("cannot write", &self.tmp, e))?;
        self.pos += frame.len() as u64;
        Ok(())
    }

    /// Opens the copy of the next shard (shards go in order, each once).
    pub fn begin_shard(&mut self, begin: pb::ShardBegin) -> Result<(), BackupError> {
        assert!(self.open.is_none(), "the previous shard is not closed");
        assert_eq!(begin.shard, self.next_shard, "shards are written in order");
        self.open = Some((begin.shard, self.pos, 0, 0));
        self.record(pb::backup_record::Record::ShardBegin(begin))
    }

    /// Forgets everything written of the open shard, its begin record included (its copy was
    /// cut off; the caller copies it again from the start).
    pub fn abandon_shard(&mut self) -> Result<(), BackupError> {
        let Some((_, at, _, _)) = self.open.take() else {
            return Ok(());
        };
        let out = self.out.as_mut().expect("open until finished");
        out.flush()
            .and_then(|()| out.get_mut().set_len(at))
            .and_then(|()| out.seek(SeekFrom::Start(at)).map(|_| ()))
            .map_err(|e| io("cannot rewind", &self.tmp, e))?;
        self.pos = at;
        Ok(())
    }

    /// Adds keys and values to the open shard, in key order.
    pub fn entries(&mut self, entries: Vec<kv::KeyValue>) -> Result<(), BackupError> {
        let (shard, at, keys, bytes) = self.open.expect("a shard is open");
        let size: usize = entries.iter().map(|e| e.key.len() + e.value.len()).sum();
        self.open = Some((shard, at, keys + entries.len() as u64, bytes + size as u64));
        if entries.is_empty() {
            return Ok(());
        }
        self.record(pb::backup_record::Record::Entries(pb::ShardEntries {
            shard,
            entries,
        }))
    }

    /// Closes the open shard; returns its end record (its key and byte counts).
    pub fn end_shard(&mut self) -> Result<pb::ShardEnd, BackupError> {
        let (shard, _, keys, bytes) = self.open.take().expect("a shard is open");
        let end = pb::ShardEnd { shard, keys, bytes };
        self.record(pb::backup_record::Record::ShardEnd(end))?;
        self.next_shard += 1;
        self.totals.shards += 1;
        self.totals.keys += keys;
        self.totals.bytes += bytes;
        Ok(end)
    }

    /// Writes the end record, makes the file durable and moves it to its name: when this
    /// returns, the backup is on disk. Returns the totals.
    pub fn finish(mut self) -> Result<pb::BackupEnd, BackupError> {
        assert!(self.open.is_none(), "a shard is still open");
        assert_eq!(self.next_shard, self.num_shards, "every shard is written");
        let end = self.totals;
        self.record(pb::backup_record::Record::End(end))?;
        let out = self.out.take().expect("open until finished");
        let file = out
            .into_inner()
            .map_err(|e| io("cannot write", &self.tmp, e.into_error()))?;
        file.sync_all()
            .map_err(|e| io("cannot fsync", &self.tmp, e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| io("cannot rename the finished backup to", &self.path, e))?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("cannot fsync the directory", &dir, e))?;
        Ok(end)
    }
}

impl Drop for BackupWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// One record of a backup after the header, as [`BackupReader::next_item`] returns it.
#[derive(Debug, Clone, PartialEq)]
pub enum BackupItem {
    /// A shard's copy begins.
    ShardBegin(pb::ShardBegin),
    /// Keys and values of that shard.
    Entries(pb::ShardEntries),
    /// The shard's copy is complete (its counts checked).
    ShardEnd(pb::ShardEnd),
    /// The file is complete (its totals checked, nothing after it).
    End(pb::BackupEnd),
}

/// Reads a backup file, checking it as it goes (see the module docs). A file is correct only
/// once [`BackupItem::End`] has been returned.
pub struct BackupReader {
    input: BufReader<File>,
    /// Records read, the header included (for messages).
    records: u64,
    offset: u64,
    header: pb::BackupHeader,
    /// The shard open, with its keys and bytes so far.
    open: Option<(u64, u64, u64)>,
    next_shard: u64,
    totals: pb::BackupEnd,
    ended: bool,
}

impl BackupReader {
    /// Opens `path` and reads its header (refusing another format version).
    pub fn open(path: &Path) -> Result<Self, BackupError> {
        let file = File::open(path).map_err(|e| io("cannot open", path, e))?;
        let mut r = BackupReader {
            input: BufReader::new(file),
            records: 0,
            offset: 0,
            header: pb::BackupHeader::default(),
            open: None,
            next_shard: 0,
            totals: pb::BackupEnd::default(),
            ended: false,
        };
        let not_a_backup = |why: &dyn std::fmt::Display| {
            damaged(format!(
                "not a QuorumKV backup, or its first record is damaged ({why})"
            ))
        };
        let header = match r.record() {
            Ok(Some(pb::backup_record::Record::Header(h))) => h,
            Ok(Some(_)) => return Err(not_a_backup(&"it does not begin with a backup header")),
            Ok(None) => return Err(damaged("the file is empty")),
            Err(BackupError::Damaged(why)) => return Err(not_a_backup(&why)),
            Err(e) => return Err(e),
        };
        if header.format != FORMAT {
            return Err(BackupError::UnsupportedFormat {
                found: header.format,
            });
        }
        if header.num_shards == 0 {
            return Err(damaged("the header names no shards"));
        }
        r.header = header;
        Ok(r)
    }

    /// The header: the shard count, the configuration, when it was taken.
    pub fn header(&self) -> &pb::BackupHeader {
        &self.header
    }

    /// The next frame's record; `None` at a clean end of the file.
    fn record(&mut self) -> Result<Option<pb::backup_record::Record>, BackupError> {
        let n = self.records;
        let at = self.offset;
        let mut head = [0u8; 8];
        let got = read_full(&mut self.input, &mut head)
            .map_err(|e| BackupError::Io(format!("cannot read record {n}: {e}")))?;
        if got == 0 {
            return Ok(None);
        }
        if got < head.len() {
            return Err(damaged(format!(
                "truncated: record {n} (at byte {at}) is cut off in its frame header"
            )));
        }
        let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(head[4..].try_into().expect("4 bytes"));
        if len > MAX_FRAME {
            return Err(damaged(format!(
                "record {n} (at byte {at}) claims {len} bytes, more than a backup record holds"
            )));
        }
        let mut body = vec![0u8; len];
        let got = read_full(&mut self.input, &mut body)
            .map_err(|e| BackupError::Io(format!("cannot read record {n}: {e}")))?;
        if got < len {
            return Err(damaged(format!(
                "truncated: record {n} (at byte {at}) has {got} of its {len} bytes"
            )));
        }
        if crc32fast::hash(&body) != crc {
            return Err(damaged(format!(
                "record {n} (at byte {at}) fails its checksum"
            )));
        }
        let record = pb::BackupRecord::decode(&body[..])
            .ok()
            .and_then(|r| r.record)
            .ok_or_else(|| damaged(format!("record {n} (at byte {at}) does not decode")))?;
        self.records += 1;
        self.offset += 8 + len as u64;
        Ok(Some(record))
    }

    /// The next record after the header, checked against what came before; `None` only
    /// after [`BackupItem::End`].
    pub fn next_item(&mut self) -> Result<Option<BackupItem>, BackupError> {
        use pb::backup_record::Record;
        if self.ended {
            return Ok(None);
        }
        let n = self.records;
        let Some(record) = self.record()? else {
            return Err(damaged(format!(
                "truncated: the file ends after {n} records, {} of {} shards, without its end \
                 record",
                self.next_shard, self.header.num_shards
            )));
        };
        let out_of_order = |what: &str| damaged(format!("record {n}: {what}"));
        Ok(Some(match (record, self.open) {
            (Record::ShardBegin(b), None) => {
                if b.shard != self.next_shard || b.shard >= self.header.num_shards {
                    return Err(out_of_order(&format!(
                        "shard {} where shard {} was expected",
                        b.shard, self.next_shard
                    )));
                }
                self.open = Some((b.shard, 0, 0));
                BackupItem::ShardBegin(b)
            }
            (Record::Entries(e), Some((shard, keys, bytes))) if e.shard == shard => {
                let size: u64 = e
                    .entries
                    .iter()
                    .map(|kv| (kv.key.len() + kv.value.len()) as u64)
                    .sum();
                self.open = Some((shard, keys + e.entries.len() as u64, bytes + size));
                BackupItem::Entries(e)
            }
            (Record::ShardEnd(end), Some((shard, keys, bytes))) if end.shard == shard => {
                if (end.keys, end.bytes) != (keys, bytes) {
                    return Err(out_of_order(&format!(
                        "shard {shard} should hold {} keys ({} bytes) but holds {keys} \
                         ({bytes} bytes)",
                        end.keys, end.bytes
                    )));
                }
                self.open = None;
                self.next_shard += 1;
                self.totals.shards += 1;
                self.totals.keys += keys;
                self.totals.bytes += bytes;
                BackupItem::ShardEnd(end)
            }
            (Record::End(end), None) => {
                if self.next_shard != self.header.num_shards || end != self.totals {
                    return Err(out_of_order(&format!(
                        "the end record counts {} shards, {} keys, but the file holds {} of \
                         {} shards, {} keys",
                        end.shards,
                        end.keys,
                        self.totals.shards,
                        self.header.num_shards,
                        self.totals.keys
                    )));
                }
                let mut rest = [0u8; 1];
                if read_full(&mut self.input, &mut rest)
                    .map_err(|e| BackupError::Io(format!("cannot read: {e}")))?
                    > 0
                {
                    return Err(damaged(format!(
                        "bytes follow the end record (at byte {})",
                        self.offset
                    )));
                }
                self.ended = true;
                BackupItem::End(end)
            }
            (Record::Header(_), _) => return Err(out_of_order("a second header")),
            (other, _) => {
                return Err(out_of_order(&format!(
                    "{} out of order",
                    match other {
                        Record::ShardBegin(_) => "a shard begins",
                        Record::Entries(_) => "keys of another shard",
                        Record::ShardEnd(_) => "a shard ends",
                        _ => "the end record",
                    }
                )))
            }
        }))
    }

    /// Reads to the end, checking everything: the header and the totals of an intact file.
    pub fn verify(path: &Path) -> Result<(pb::BackupHeader, pb::BackupEnd), BackupError> {
        let mut r = BackupReader::open(path)?;
        loop {
            if let Some(BackupItem::End(end)) = r.next_item()? {
                return Ok((r.header, end));
            }
        }
    }
}

fn damaged(why: impl Into<String>) -> BackupError {
    BackupError::Damaged(why.into())
}

/// Reads until `buf` is full or the input ends; the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// What [`KvClient::export_shard`] hands its sink.
#[derive(Debug)]
pub enum ExportEvent {
    /// A copy of the shard begins: from the group `gid` at `log_index` (configuration
    /// `config_num`). A second `Begin` means the previous attempt was cut off: discard what it
    /// delivered.
    Begin {
        gid: u64,
        config_num: u64,
        log_index: u64,
    },
    /// The next keys and values, in key order.
    Entries(Vec<kv::KeyValue>),
}

impl KvClient {
    /// Copies `shard` from the leader of its owning group (`ExportShard`, admin certificate):
    /// the shard at one log index of that group, taken after a ReadIndex. Chunks go to `sink`
    /// as they arrive; a copy cut off (a leader change, a broken connection, the shard moved)
    /// is started again with a new [`ExportEvent::Begin`]. Gives up after this client's
    /// deadline passes without progress. Returns the number of keys copied.
    pub async fn export_shard(
        &self,
        shard: u64,
        mut sink: impl FnMut(ExportEvent) -> Result<(), BackupError>,
    ) -> Result<u64, ExportError> {
        let mut last_progress = Instant::now();
        let mut last: Option<String> = None;
        let mut backoff = Duration::from_millis(20);
        loop {
            if last_progress.elapsed() >= self.timeout {
                return Err(ExportError::Kv(KvError::Timeout {
                    after: self.timeout,
                    last_error: last,
                }));
            }
            let mut config = self.cached_config();
            if config.num == 0 {
                config = self.refresh_config().await?;
            }
            let gid = config.shards.get(shard as usize).copied().unwrap_or(0);
            let servers = config.groups.get(&gid).cloned().unwrap_or_default();
            if gid == 0 || servers.is_empty() {
                last = Some(format!(
                    "no group serves shard {shard} in configuration {}",
                    config.num
                ));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                let _ = self.refresh_config().await;
                continue;
            }
            let deadline = last_progress + self.timeout;
            let req = kv::ExportShardRequest {
                shard,
                max_bytes: EXPORT_CHUNK_BYTES,
            };
            let stream = self
                .groups
                .call(gid, &servers, deadline, |mut c| async move {
                    c.export_shard(req).await
                })
                .await;
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => match e.kind {
                    ErrorKind::WrongGroup => {
                        // The shard moved: ask the controller where it is now.
                        last = Some(e.message);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(500));
                        let _ = self.refresh_config().await;
                        continue;
                    }
                    ErrorKind::InvalidArgument => {
                        return Err(ExportError::Kv(KvError::InvalidArgument(e.message)))
                    }
                    ErrorKind::PermissionDenied => {
                        return Err(ExportError::Kv(KvError::PermissionDenied(e.message)))
                    }
                    ErrorKind::Tls => return Err(ExportError::Kv(KvError::Tls(e.message))),
                    kind if kind.is_retryable() => {
                        last = Some(e.message);
                        continue;
                    }
                    _ => return Err(ExportError::Kv(KvError::Internal(e.message))),
                },
            };
            let mut begun = false;
            let mut keys = 0u64;
            let outcome = loop {
                let left = (last_progress + self.timeout).saturating_duration_since(Instant::now());
                let chunk = match tokio::time::timeout(left, stream.message()).await {
                    Ok(Ok(Some(c))) => c,
                    Ok(Ok(None)) => break Err("the copy ended without its last chunk".into()),
                    Ok(Err(status)) => {
                        break Err(quorumkv_common::rpc::RpcError::from_status(&status).message)
                    }
                    Err(_) => break Err(format!("no chunk within {:?}", self.timeout)),
                };
                if !begun {
                    sink(ExportEvent::Begin {
                        gid: chunk.gid,
                        config_num: chunk.config_num,
                        log_index: chunk.log_index,
                    })
                    .map_err(ExportError::Sink)?;
                    begun = true;
                }
                keys += chunk.entries.len() as u64;
                last_progress = Instant::now();
                sink(ExportEvent::Entries(chunk.entries)).map_err(ExportError::Sink)?;
                if chunk.done {
                    if chunk.keys != keys {
                        break Err(format!(
                            "the group sent {keys} keys but counted {}",
                            chunk.keys
                        ));
                    }
                    break Ok(keys);
                }
            };
            match outcome {
                Ok(keys) => return Ok(keys),
                Err(why) => {
                    tracing::warn!(shard, gid, error = %why, "a shard's copy was cut off; starting it again");
                    last = Some(why);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }
}

/// Why [`KvClient::export_shard`] failed: the cluster, or the sink.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Sink(BackupError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn kv(k: &str, v: &str) -> kv::KeyValue {
        kv::KeyValue {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
        }
    }

    fn header(format: u32, num_shards: u64) -> pb::BackupHeader {
        pb::BackupHeader {
            format,
            num_shards,
            config: Some(kv::Config {
                num: 3,
                shards: vec![1; num_shards as usize],
                groups: vec![kv::Group {
                    gid: 1,
                    servers: vec!["a:1".into()],
                }],
            }),
            created_ms: 1,
        }
    }

    fn begin(shard: u64) -> pb::ShardBegin {
        pb::ShardBegin {
            shard,
            gid: 1,
            config_num: 3,
            log_index: 10 + shard,
        }
    }

    /// A two-shard backup in `dir`; shard 0's first copy is abandoned half-way.
    fn write_backup(dir: &Path) -> PathBuf {
        let path = dir.join("b.qkvb");
        let mut w = BackupWriter::create(&path, header(FORMAT, 2)).unwrap();
        w.begin_shard(begin(0)).unwrap();
        w.entries(vec![kv("stale", "cut off")]).unwrap();
        w.abandon_shard().unwrap();
        w.begin_shard(begin(0)).unwrap();
        w.entries(vec![kv("a", "1"), kv("b", "22")]).unwrap();
        w.entries(vec![kv("c", "")]).unwrap();
        assert_eq!(w.end_shard().unwrap().keys, 3);
        w.begin_shard(begin(1)).unwrap();
        w.entries(vec![]).unwrap();
        w.end_shard().unwrap();
        assert!(
            !path.exists(),
            "nothing under the name before it is complete"
        );
        let end = w.finish().unwrap();
        assert_eq!((end.shards, end.keys, end.bytes), (2, 3, 6));
        path
    }

    fn items(path: &Path) -> Result<Vec<BackupItem>, BackupError> {
        let mut r = BackupReader::open(path)?;
        let mut out = Vec::new();
        while let Some(i) = r.next_item()? {
            out.push(i);
        }
        Ok(out)
    }

    #[test]
    fn a_backup_reads_back_as_written_without_the_abandoned_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_backup(dir.path());
        let (h, end) = BackupReader::verify(&path).unwrap();
        assert_eq!(h, header(FORMAT, 2));
        assert_eq!(end.keys, 3);
        let keys: Vec<Bytes> = items(&path)
            .unwrap()
            .into_iter()
            .filter_map(|i| match i {
                BackupItem::Entries(e) => Some(e.entries),
                _ => None,
            })
            .flatten()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, vec!["a", "b", "c"]);
        // Only the finished file remains in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_backup(dir.path());
        let good = std::fs::read(&path).unwrap();
        let bad = dir.path().join("bad");
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x40;
            std::fs::write(&bad, &b).unwrap();
            let err = BackupReader::verify(&bad).unwrap_err();
            assert!(matches!(err, BackupError::Damaged(_)), "byte {i}: {err}");
        }
        for len in 0..good.len() {
            std::fs::write(&bad, &good[..len]).unwrap();
            let err = BackupReader::verify(&bad).unwrap_err();
            assert!(
                matches!(&err, BackupError::Damaged(m) if m.contains("truncated") || m.contains("empty")),
                "{len} bytes: {err}"
            );
        }
        std::fs::write(&bad, "a text file, not a backup\n").unwrap();
        let err = BackupReader::verify(&bad).unwrap_err().to_string();
        assert!(err.contains("not a QuorumKV backup"), "{err}");
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&bad, &longer).unwrap();
        let err = BackupReader::verify(&bad).unwrap_err().to_string();
        assert!(err.contains("bytes follow the end record"), "{err}");
    }

    #[test]
    fn another_format_version_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("future");
        let mut w = BackupWriter::create(&path, header(FORMAT + 1, 1)).unwrap();
        w.begin_shard(begin(0)).unwrap();
        w.end_shard().unwrap();
        w.finish().unwrap();
        let err = BackupReader::verify(&path).unwrap_err();
        assert!(matches!(err, BackupError::UnsupportedFormat { found: 2 }));
        assert_eq!(
            err.to_string(),
            "backup format version 2, but this shardkv-client reads version 1"
        );
    }

    #[test]
    fn a_writer_dropped_unfinished_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        let mut w = BackupWriter::create(&path, header(FORMAT, 1)).unwrap();
        w.begin_shard(begin(0)).unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
