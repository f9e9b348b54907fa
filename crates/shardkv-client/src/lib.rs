//! # QuorumKV client library
//!
//! [`KvClient`] reads and writes keys of a QuorumKV cluster. It asks the shard controller
//! (through `quorumkv-shardctrler-client`) for the current configuration and caches it; routes
//! each key to the group owning its shard (`quorumkv_common::shard_of`, FNV-1a over the whole
//! key); remembers each group's leader; follows `NotLeader` hints; refreshes the configuration on
//! `WrongGroup`; backs off on `RetryLater` (a shard in migration) and on unreachable servers;
//! and bounds every call by a deadline.
//!
//! Writes are exactly-once: each client has a random id and numbers its writes; a retried
//! write reuses its number, and the group applies it once. Because the group remembers only
//! the highest number per client and shard, one `KvClient` issues one write at a time
//! (`&mut self`); concurrent writers each use their own client ([`KvClient::fork`] shares the
//! connections and configuration cache).
//!
//! [`GroupCaller`] is the lower layer (channels, leader memory, retry loop) that servers also
//! use to call other groups. [`backup`] copies shards out of a live cluster (an operator's
//! call) and reads and writes the backup file.

pub mod backup;
mod group;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::RwLock;
use quorumkv_common::rpc::{ErrorKind, RpcError};
use quorumkv_common::{shard_of, TlsMaterial};
use quorumkv_proto::shardkv as pb;
use quorumkv_shardctrler_client::{Config, CtrlerClient};

pub use group::{GroupCaller, MAX_MESSAGE_BYTES};

/// Largest key the servers accept, in bytes (and the smallest is one byte: empty keys are
/// refused).
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// Largest value the servers accept, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Why a call failed, named by what the caller should do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The request can never succeed as it is (too large, malformed). Nothing changed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The cluster refused this client's certificate for the call: it lacks the role the
    /// call needs (reads and writes need a client or admin certificate). Use another one.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Mutual TLS with a server failed on a certificate (this client's was refused, or the
    /// server's is not trusted); the message says which. Fix the TLS files.
    #[error("TLS: {0}")]
    Tls(String),
    /// No answer within the deadline. For a write the outcome is unknown: retry it on the same
    /// client, before any other write, with the same call and arguments (or
    /// [`KvClient::retry_unfinished`]); it is sent with its original number and applied at
    /// most once. Another write first abandons it (see [`KvClient::unfinished`]).
    #[error("timed out after {after:?}{}", .last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    Timeout {
        after: Duration,
        last_error: Option<String>,
    },
    /// A failure retrying cannot fix; report it.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<quorumkv_shardctrler_client::ClientError> for KvError {
    fn from(e: quorumkv_shardctrler_client::ClientError) -> Self {
        use quorumkv_shardctrler_client::ClientError as C;
        match e {
            C::InvalidArgument(m) => KvError::InvalidArgument(m),
            C::PermissionDenied(m) => KvError::PermissionDenied(m),
            C::Tls(m) => KvError::Tls(m),
            C::Timeout { after, last_error } => KvError::Timeout { after, last_error },
            C::Internal(m) => KvError::Internal(m),
        }
    }
}

/// Refuses a key the servers would refuse: empty (a key names something, as in etcd) or over
/// [`MAX_KEY_BYTES`].
pub fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::InvalidArgument("the key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::InvalidArgument(format!(
            "key of {} bytes exceeds the limit of {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

/// Refuses a value over [`MAX_VALUE_BYTES`] (an empty value is a value).
pub fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(KvError::InvalidArgument(format!(
            "value of {} bytes exceeds the limit of {MAX_VALUE_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

/// The kind of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    Put,
    Append,
    Delete,
}

/// A write whose outcome is unknown: it timed out, and may or may not have been applied (see
/// [`KvClient::unfinished`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnfinishedWrite {
    pub kind: WriteKind,
    pub key: Bytes,
    pub value: Bytes,
    /// The number it was sent with; a retry reuses it, so the group applies it at most once.
    seq: u64,
}

/// How long a call tries a group's servers before it asks the controller for the group's
/// servers again.
const GROUP_ROUND: Duration = Duration::from_secs(2);

/// A client of a QuorumKV cluster.
pub struct KvClient {
    ctrler: Arc<CtrlerClient>,
    groups: Arc<GroupCaller>,
    config: Arc<RwLock<Config>>,
    client_id: u64,
    seq: u64,
    timeout: Duration,
    /// The last write, if it timed out: retried with its own number.
    unfinished: Option<UnfinishedWrite>,
}

impl KvClient {
    /// A client of the cluster whose controller members are `ctrlers` (`host:port`).
    /// Connections are made lazily.
    pub fn connect(ctrlers: Vec<String>, tls: TlsMaterial) -> Result<Self, KvError> {
        let ctrler = CtrlerClient::connect(ctrlers, tls.clone()).map_err(KvError::from)?;
        Ok(KvClient {
            ctrler: Arc::new(ctrler),
            groups: Arc::new(GroupCaller::new(tls)),
            config: Arc::new(RwLock::new(Config {
                num: 0,
                shards: Vec::new(),
                groups: Default::default(),
            })),
            client_id: rand::random(),
            seq: 0,
            timeout: Duration::from_secs(10),
            unfinished: None,
        })
    }

    /// Deadline of every call (default 10 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Changes the deadline of the calls made from now on.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The write that last timed out, if no write was made since: its outcome is unknown.
    /// Retrying it ([`KvClient::retry_unfinished`], or the same call with the same arguments)
    /// sends it again with its original number, so the group applies it at most once, and a
    /// success then means it is applied. Making any other write first abandons it: it may or
    /// may not have been applied, and that stays unknown.
    pub fn unfinished(&self) -> Option<&UnfinishedWrite> {
        self.unfinished.as_ref()
    }

    /// Sends the unfinished write again with its original number (`Ok` when there is none).
    pub async fn retry_unfinished(&mut self) -> Result<(), KvError> {
        match self.unfinished.clone() {
            Some(u) => self.write(u.kind, &u.key, &u.value).await,
            None => Ok(()),
        }
    }

    /// A new client (own id and write numbering) sharing this one's connections and
    /// configuration cache.
    pub fn fork(&self) -> Self {
        KvClient {
            ctrler: self.ctrler.clone(),
            groups: self.groups.clone(),
            config: self.config.clone(),
            client_id: rand::random(),
            seq: 0,
            timeout: self.timeout,
            unfinished: None,
        }
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The cached configuration (refreshed on demand).
    pub fn cached_config(&self) -> Config {
        self.config.read().clone()
    }

    /// Fetches the latest configuration from the controller, within this client's deadline.
    pub async fn refresh_config(&self) -> Result<Config, KvError> {
        let c = self.ctrler.query_within(None, self.timeout).await?;
        let mut cached = self.config.write();
        if c.num > cached.num {
            *cached = c.clone();
        }
        Ok(cached.clone())
    }

    /// Runs `f` against the group owning `key`, refreshing the configuration as needed.
    async fn route<T, F, Fut>(&self, key: &[u8], mut f: F) -> Result<T, KvError>
    where
        F: FnMut(pb::shard_kv_client::ShardKvClient<tonic::transport::Channel>, u64) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut last: Option<String> = None;
        let mut backoff = Duration::from_millis(10);
        loop {
            if Instant::now() >= deadline {
                return Err(KvError::Timeout {
                    after: self.timeout,
                    last_error: last,
                });
            }
            let mut config = self.cached_config();
            if config.num == 0 {
                config = self.refresh_config().await?;
            }
            let gid = if config.shards.is_empty() {
                0
            } else {
                config.shards[shard_of(key, config.shards.len())]
            };
            let servers = config.groups.get(&gid).cloned().unwrap_or_default();
            if gid == 0 || servers.is_empty() {
                last = Some(format!(
                    "no group serves this key's shard in configuration {}",
                    config.num
                ));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                let _ = self.refresh_config().await;
                continue;
            }
            let num = config.num;
            // One round of the group's servers at most before the configuration is asked for
            // again: the servers listed may have changed (a member replaced).
            let round = deadline.min(Instant::now() + GROUP_ROUND);
            match self.groups.call(gid, &servers, round, |c| f(c, num)).await {
                Ok(v) => return Ok(v),
                Err(RpcError {
                    kind: ErrorKind::WrongGroup,
                    message,
                }) => {
                    last = Some(message);
                    let fresh = self.refresh_config().await?;
                    if fresh.num == num {
                        // The group is ahead of the controller's answer we got, or behind:
                        // wait for the configuration to settle.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(500));
                    }
                }
                Err(RpcError {
                    kind: ErrorKind::InvalidArgument,
                    message,
                }) => return Err(KvError::InvalidArgument(message)),
                Err(RpcError {
                    kind: ErrorKind::PermissionDenied,
                    message,
                }) => return Err(KvError::PermissionDenied(message)),
                Err(RpcError {
                    kind: ErrorKind::Tls,
                    message,
                }) => return Err(KvError::Tls(message)),
                Err(e) if e.kind.is_retryable() => {
                    last = Some(e.message);
                    let left = deadline.saturating_duration_since(Instant::now());
                    let _ = tokio::time::timeout(left, self.refresh_config()).await;
                }
                Err(e) => return Err(KvError::Internal(e.message)),
            }
        }
    }

    /// Reads `key` (linearizable). `None` when the key does not exist.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Bytes>, KvError> {
        check_key(key)?;
        let key = Bytes::copy_from_slice(key);
        let reply = self
            .route(&key.clone(), |mut c, num| {
                let req = pb::GetRequest {
                    key: key.clone(),
                    config_num: num,
                };
                async move { c.get(req).await }
            })
            .await?;
        Ok(reply.found.then_some(reply.value))
    }

    /// One write. The same write as the unfinished one is its retry: same number. Any other
    /// gets the next number (abandoning an unfinished one).
    async fn write(&mut self, kind: WriteKind, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        check_key(key)?;
        check_value(value)?;
        let seq = match self.unfinished.take() {
            Some(u) if u.kind == kind && u.key == key && u.value == value => u.seq,
            _ => {
                self.seq += 1;
                self.seq
            }
        };
        let id = pb::RequestId {
            client_id: self.client_id,
            seq,
        };
        let key = Bytes::copy_from_slice(key);
        let value = Bytes::copy_from_slice(value);
        let result = self
            .route(&key.clone(), |mut c, num| {
                let (key, value) = (key.clone(), value.clone());
                async move {
                    match kind {
                        WriteKind::Put | WriteKind::Append => {
                            let req = pb::PutRequest {
                                key,
                                value,
                                id: Some(id),
                                config_num: num,
                            };
                            if matches!(kind, WriteKind::Put) {
                                c.put(req).await
                            } else {
                                c.append(req).await
                            }
                        }
                        WriteKind::Delete => {
                            c.delete(pb::DeleteRequest {
                                key,
                                id: Some(id),
                                config_num: num,
                            })
                            .await
                        }
                    }
                }
            })
            .await
            .map(|_| ());
        if let Err(KvError::Timeout { .. }) = &result {
            self.unfinished = Some(UnfinishedWrite {
                kind,
                key,
                value,
                seq,
            });
        }
        result
    }

    /// Sets `key` to `value`.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.write(WriteKind::Put, key, value).await
    }

    /// Appends `value` to `key`'s value (an absent key counts as empty).
    pub async fn append(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.write(WriteKind::Append, key, value).await
    }

    /// Removes `key` (removing an absent key succeeds).
    pub async fn delete(&mut self, key: &[u8]) -> Result<(), KvError> {
        self.write(WriteKind::Delete, key, &[]).await
    }

    /// The status of every member of every group in the latest configuration: for each gid,
    /// each server's address and its status or the error it gave.
    pub async fn status(
        &self,
    ) -> Result<Vec<(u64, Vec<(String, Result<pb::StatusReply, String>)>)>, KvError> {
        let config = self.refresh_config().await?;
        let mut out = Vec::new();
        for (gid, servers) in &config.groups {
            let mut members = Vec::new();
            for addr in servers {
                // Ask this very member, whatever its role.
                let r = match self.groups.client(addr) {
                    Ok(mut c) => {
                        match tokio::time::timeout(
                            Duration::from_secs(2),
                            c.status(pb::StatusRequest {}),
                        )
                        .await
                        {
                            Ok(Ok(reply)) => Ok(reply.into_inner()),
                            Ok(Err(status)) => Err(RpcError::from_status(&status).message),
                            Err(_) => Err("no answer within 2s".to_string()),
                        }
                    }
                    Err(e) => Err(e.message),
                };
                members.push((addr.clone(), r));
            }
            out.push((*gid, members));
        }
        Ok(out)
    }

    /// The controller client this client uses.
    pub fn ctrler(&self) -> &CtrlerClient {
        &self.ctrler
    }
}
