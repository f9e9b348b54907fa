//! `shardkv-client backup` and `restore`: every shard of a live cluster to one checksummed
//! file, and that file back into a cluster with the same shard count. The file format and the
//! shard copy are the library's (`quorumkv_shardkv_client::backup`); this is the command line
//! around them: flags, progress on stderr, the summary on stdout.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use quorumkv_proto::backup as pb;
use quorumkv_shardkv_client::backup::{
    config_to_pb, BackupItem, BackupReader, BackupWriter, ExportError, ExportEvent, FORMAT,
};
use quorumkv_shardkv_client::{KvClient, KvError};

use super::check::thousands;

/// `backup --out FILE`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Where to write the backup. It is written to a temporary file beside it, fsynced and
    /// renamed: FILE appears only when complete (an existing FILE is replaced then).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `restore FILE`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup to restore (written by `shardkv-client backup`).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Puts in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub parallel: u16,
}

/// What a command printed for the user, or why it failed (one line).
pub type Outcome = Result<String, String>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Copies every shard into `args.out`; the summary (text or JSON) to print on stdout.
pub async fn backup(client: &KvClient, args: &BackupArgs, json: bool) -> Outcome {
    let out = &args.out;
    let shown = out.display().to_string();
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(format!(
                "--out {shown}: the directory {} does not exist",
                dir.display()
            ));
        }
    }
    if out.is_dir() {
        return Err(format!("--out {shown} is a directory; name a file in it"));
    }
    let config = client
        .ctrler()
        .query(None)
        .await
        .map_err(|e| e.to_string())?;
    let num_shards = config.shards.len() as u64;
    if config.groups.is_empty() || config.shards.contains(&0) {
        return Err(format!(
            "configuration {} leaves shards without a replica group (no group joined?): \
             nothing to back up",
            config.num
        ));
    }
    let header = pb::BackupHeader {
        format: FORMAT,
        num_shards,
        config: Some(config_to_pb(&config)),
        created_ms: now_ms(),
    };
    let mut writer = BackupWriter::create(out, header).map_err(|e| e.to_string())?;
    // Announced once the first copy begins, so that a refusal (a certificate without the
    // admin role) stays a one-line error.
    let mut announced = false;
    for shard in 0..num_shards {
        let mut failure = None;
        let mut point = None;
        let copied = client
            .export_shard(shard, |event| match event {
                ExportEvent::Begin {
                    gid,
                    config_num,
                    log_index,
                } => {
                    if !announced {
                        eprintln!(
                            "backup: {num_shards} shards of configuration {} to {shown}",
                            config.num
                        );
                        announced = true;
                    }
                    writer.abandon_shard()?;
                    point = Some((gid, log_index));
                    writer.begin_shard(pb::ShardBegin {
                        shard,
                        gid,
                        config_num,
                        log_index,
                    })
                }
                ExportEvent::Entries(entries) => writer.entries(entries),
            })
            .await;
        match copied {
            Ok(_) => {}
            Err(ExportError::Kv(e)) => failure = Some(format!("shard {shard}: {e}")),
            Err(ExportError::Sink(e)) => failure = Some(format!("{shown}: {e}")),
        }
        if let Some(f) = failure {
            // The writer removes its temporary file when dropped: no partial backup remains.
            return Err(format!("backup failed, no file written: {f}"));
        }
        let end = writer
            .end_shard()
            .map_err(|e| format!("backup failed: {e}"))?;
        let (gid, index) = point.unwrap_or_default();
        eprintln!(
            "shard {}/{num_shards}: {} keys, {} bytes (group {gid}, log index {index})",
            shard + 1,
            thousands(end.keys as usize),
            thousands(end.bytes as usize),
        );
    }
    let end = writer.finish().map_err(|e| format!("backup failed: {e}"))?;
    Ok(if json {
        format!(
            "{}\n",
            serde_json::json!({
                "file": shown,
                "format": FORMAT,
                "shards": end.shards,
                "keys": end.keys,
                "bytes": end.bytes,
                "config": config.num,
            })
        )
    } else {
        format!(
            "backup: {} shards, {} keys, {} bytes of configuration {} written to {shown}\n",
            end.shards,
            thousands(end.keys as usize),
            thousands(end.bytes as usize),
            config.num
        )
    })
}

/// Checks `args.file` completely, then puts every key it holds into the cluster; the summary
/// to print on stdout.
pub async fn restore(client: &KvClient, args: &RestoreArgs, json: bool) -> Outcome {
    let shown = args.file.display().to_string();
    // The whole file is checked before anything is written: a damaged backup changes nothing.
    let (header, totals) = BackupReader::verify(&args.file)
        .map_err(|e| format!("{shown}: {e}; nothing was restored"))?;
    // Asked of the controller itself: its configuration 0 names the shard count too.
    let config = client
        .ctrler()
        .query(None)
        .await
        .map_err(|e| e.to_string())?;
    if config.shards.len() as u64 != header.num_shards {
        return Err(format!(
            "{shown} holds a cluster of {} shards, but this cluster has {}: a backup restores \
             only into a cluster with the same shard count (shardctrler-server --shards {}); \
             nothing was restored",
            header.num_shards,
            config.shards.len(),
            header.num_shards
        ));
    }
    if config.groups.is_empty() || config.shards.contains(&0) {
        return Err(format!(
            "configuration {} leaves shards without a replica group: join the groups first \
             (shardctrler-client join ...); nothing was restored",
            config.num
        ));
    }
    eprintln!(
        "restore: {} shards, {} keys from {shown} (backup of configuration {})",
        totals.shards,
        thousands(totals.keys as usize),
        header.config.as_ref().map_or(0, |c| c.num)
    );
    let mut reader = BackupReader::open(&args.file).map_err(|e| format!("{shown}: {e}"))?;
    let mut puts = Puts::new(client, args.parallel as usize);
    let mut restored = 0u64;
    loop {
        let item = reader
            .next_item()
            .map_err(|e| format!("{shown}: {e} (changed while being restored?)"))?;
        match item {
            Some(BackupItem::Entries(e)) => {
                for kv in e.entries {
                    puts.put(kv.key, kv.value).await.map_err(|e| {
                        format!(
                            "restore failed after {restored} of {} keys were sent: {e}; the keys \
                             put so far stay; running the restore again is safe (it puts the same \
                             values)",
                            totals.keys
                        )
                    })?;
                    restored += 1;
                }
            }
            Some(BackupItem::ShardEnd(end)) => {
                eprintln!(
                    "shard {}/{}: {} keys",
                    end.shard + 1,
                    header.num_shards,
                    thousands(end.keys as usize)
                );
            }
            Some(BackupItem::ShardBegin(_)) => {}
            Some(BackupItem::End(_)) | None => break,
        }
    }
    puts.finish().await.map_err(|e| {
        format!(
            "restore failed near its end: {e}; the keys put so far stay; running the restore \
             again is safe"
        )
    })?;
    Ok(if json {
        format!(
            "{}\n",
            serde_json::json!({
                "file": shown,
                "shards": totals.shards,
                "keys": totals.keys,
                "bytes": totals.bytes,
                "backup_config": header.config.as_ref().map_or(0, |c| c.num),
                "created_ms": header.created_ms,
            })
        )
    } else {
        format!(
            "restored {} shards, {} keys ({} bytes) from {shown}\n",
            totals.shards,
            thousands(totals.keys as usize),
            thousands(totals.bytes as usize)
        )
    })
}

/// Puts in flight at once, each on its own client (one write at a time per client, see
/// `KvClient`), sharing connections and the configuration.
struct Puts {
    idle: Vec<KvClient>,
    running: tokio::task::JoinSet<(KvClient, Result<(), KvError>)>,
}

impl Puts {
    fn new(client: &KvClient, parallel: usize) -> Self {
        Puts {
            idle: (0..parallel).map(|_| client.fork()).collect(),
            running: tokio::task::JoinSet::new(),
        }
    }

    /// Starts a put once a client is free; the error of a put that finished meanwhile.
    async fn put(&mut self, key: bytes::Bytes, value: bytes::Bytes) -> Result<(), String> {
        let mut client = match self.idle.pop() {
            Some(c) => c,
            None => self.join_one().await?,
        };
        self.running.spawn(async move {
            let r = client.put(&key, &value).await;
            (client, r)
        });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<KvClient, String> {
        match self.running.join_next().await {
            Some(Ok((client, Ok(())))) => Ok(client),
            Some(Ok((_, Err(e)))) => Err(e.to_string()),
            Some(Err(e)) => Err(format!("a put task failed: {e}")),
            None => unreachable!("called only with puts running"),
        }
    }

    /// Waits for every put in flight.
    async fn finish(mut self) -> Result<(), String> {
        while !self.running.is_empty() {
            let client = self.join_one().await?;
            self.idle.push(client);
        }
        Ok(())
    }
}
