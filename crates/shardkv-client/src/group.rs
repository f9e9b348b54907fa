//! Calling a replica group: lazily connected channels per address, the last known leader of
//! each group, and the retry loop that follows leader hints within a deadline.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use quorumkv_common::rpc::{ErrorKind, RpcError};
use quorumkv_common::{HostPort, TlsMaterial};
use quorumkv_proto::raft::raft_admin_client::RaftAdminClient;
use quorumkv_proto::shardkv::shard_kv_client::ShardKvClient;
use tonic::transport::{Channel, Endpoint};

/// Longest wait for one attempt on one server.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(200);
/// Largest message a client sends or accepts (values are at most 1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Channels to shardkv servers, shared by every client of a process.
pub struct GroupCaller {
    tls: TlsMaterial,
    channels: Mutex<HashMap<String, Channel>>,
    /// gid -> address of the member that last answered as leader.
    leaders: Mutex<HashMap<u64, String>>,
}

impl GroupCaller {
    pub fn new(tls: TlsMaterial) -> Self {
        GroupCaller {
            tls,
            channels: Mutex::new(HashMap::new()),
            leaders: Mutex::new(HashMap::new()),
        }
    }

    /// A client for one server (lazily connected, shared channel).
    pub fn client(&self, addr: &str) -> Result<ShardKvClient<Channel>, RpcError> {
        Ok(ShardKvClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// The shared, lazily connected channel to one server.
    fn channel(&self, addr: &str) -> Result<Channel, RpcError> {
        let mut channels = self.channels.lock();
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let hp = HostPort::parse(addr)
                    .map_err(|e| RpcError::new(ErrorKind::InvalidArgument, e.to_string()))?;
                let endpoint = Endpoint::from_shared(format!("https://{addr}"))
                    .and_then(|e| e.tls_config(self.tls.client_config(hp.tls_name())))
                    .map_err(|e| RpcError::new(ErrorKind::InvalidArgument, e.to_string()))?
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true);
                // Connects on first use and reconnects (resolving DNS again) after failures.
                let c = endpoint.connect_lazy();
                channels.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(channel)
    }

    /// Calls `f` on the leader of group `gid` (servers `servers`), following `NotLeader`
    /// hints, trying the other members on transport errors and backing off on `RetryLater`,
    /// until it succeeds, a non-retryable error or `WrongGroup` comes back, or `deadline`
    /// passes (then the last error, or `Timeout`).
    pub async fn call<T, F, Fut>(
        &self,
        gid: u64,
        servers: &[String],
        deadline: Instant,
        mut f: F,
    ) -> Result<T, RpcError>
    where
        F: FnMut(ShardKvClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(gid, servers, deadline, ATTEMPT_TIMEOUT, |channel| {
            f(ShardKvClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES))
        })
        .await
    }

    /// [`GroupCaller::call`] for the group's `RaftAdmin` service (membership administration),
    /// with the same leader memory, hints and retries. One attempt may last until `deadline`,
    /// because adding a member waits until it caught up; the calls are safe to repeat (see
    /// `proto/raft.proto`).
    pub async fn call_admin<T, F, Fut>(
        &self,
        gid: u64,
        servers: &[String],
        deadline: Instant,
        mut f: F,
    ) -> Result<T, RpcError>
    where
        F: FnMut(RaftAdminClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let attempt = deadline.saturating_duration_since(Instant::now());
        self.call_with(gid, servers, deadline, attempt, |channel| {
            f(RaftAdminClient::new(channel))
        })
        .await
    }

    /// The retry loop behind [`GroupCaller::call`] and [`GroupCaller::call_admin`], for any
    /// service of the group's servers; each attempt bounded by `attempt_timeout`.
    async fn call_with<T, F, Fut>(
        &self,
        gid: u64,
        servers: &[String],
        deadline: Instant,
        attempt_timeout: Duration,
        mut f: F,
    ) -> Result<T, RpcError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        if servers.is_empty() {
            return Err(RpcError::new(
                ErrorKind::Unavailable,
                format!("group {gid} has no servers"),
            ));
        }
        let mut target = self
            .leaders
            .lock()
            .get(&gid)
            // Only among the servers asked for (a probe of one member must reach that one).
            .filter(|a| servers.contains(a))
            .cloned()
            .unwrap_or_else(|| servers[0].clone());
        let mut backoff = BACKOFF_MIN;
        let mut moves = 0usize;
        let mut last: Option<RpcError> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(
                    last.unwrap_or_else(|| RpcError::new(ErrorKind::Timeout, "deadline passed"))
                );
            }
            let per_attempt = left.min(attempt_timeout);
            let result = match self.channel(&target) {
                Ok(channel) => match tokio::time::timeout(per_attempt, f(channel)).await {
                    Ok(Ok(resp)) => Ok(resp.into_inner()),
                    Ok(Err(status)) => Err(RpcError::from_status(&status)),
                    Err(_) => Err(RpcError::new(
                        ErrorKind::Timeout,
                        format!("{target} did not answer within {per_attempt:?}"),
                    )),
                },
                Err(e) => Err(e),
            };
            let err = match result {
                Ok(v) => {
                    self.leaders.lock().insert(gid, target);
                    return Ok(v);
                }
                Err(e) => e,
            };
            // After an address not in the list (a hint), start again at the list's head.
            let next_member = |t: &str| match servers.iter().position(|s| s == t) {
                Some(i) => servers[(i + 1) % servers.len()].clone(),
                None => servers[0].clone(),
            };
            match &err.kind {
                // Followed even when the address is not in the list: the list may predate a
                // membership change (a member replaced), and the leader knows its group.
                ErrorKind::NotLeader { leader: Some(l) } if *l != target => {
                    target = l.clone();
                    moves += 1;
                    if moves.is_multiple_of(servers.len() + 1) {
                        // Hints going round in circles: a leadership change is under way.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
                ErrorKind::NotLeader { .. }
                | ErrorKind::ShuttingDown
                | ErrorKind::Unavailable
                | ErrorKind::Timeout => {
                    target = next_member(&target);
                    moves += 1;
                    if moves.is_multiple_of(servers.len()) {
                        // A full round without an answer: an election is probably running,
                        // or the group is down. Back off instead of spinning.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
                ErrorKind::RetryLater => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                ErrorKind::WrongGroup => {
                    // The remembered leader may have been a member that now serves another
                    // group: forget it.
                    self.leaders.lock().remove(&gid);
                    return Err(err);
                }
                ErrorKind::InvalidArgument
                | ErrorKind::NotFound
                | ErrorKind::PermissionDenied
                | ErrorKind::Tls
                | ErrorKind::Internal => return Err(err),
            }
            last = Some(err);
        }
    }
}
