//! # Shard controller client
//!
//! How every other part of QuorumKV (the KV servers, clients, the `shardctrler-client` CLI)
//! talks to the shard controller. It depends only on the wire types and the shared building
//! blocks, never on the controller's implementation (STYLE rule 11).
//!
//! A [`CtrlerClient`] knows the controller members' addresses and:
//! - connects lazily, one mutual-TLS channel per address, reused by every call (the server
//!   certificate must name the host part of the address);
//! - remembers which member led last and goes there first, follows `NotLeader` hints (which
//!   may name a member not in the initial list), and otherwise tries the members in turn;
//! - retries retryable failures (not leader, unavailable, timeout) with jittered exponential
//!   backoff, and returns a refusal ([`ClientError::InvalidArgument`],
//!   [`ClientError::PermissionDenied`], [`ClientError::Tls`]) at once;
//! - bounds every call by one deadline (default [`DEFAULT_TIMEOUT`]), after which it returns
//!   [`ClientError::Timeout`].
//!
//! The same client reaches the controller group's own membership administration
//! ([`CtrlerClient::raft_admin`], raft-core's `RaftAdmin` service) through the same loop.
//!
//! ## Exactly once
//! The client picks a random non-zero client id and numbers its changes 1, 2, 3, … A change is
//! retried under the same number until it gets an answer, and the controller applies each
//! number once, so a Join retried after a lost reply is not applied twice. Changes from one
//! `CtrlerClient` are therefore sent one at a time (concurrent calls wait their turn); use
//! several clients for concurrent changes. Queries carry no number and run concurrently.
//!
//! After a [`ClientError::Timeout`] the outcome of a change is unknown: it may still be
//! applied. Query to find out.
//!
//! ## Deliberately left out
//! Caching configurations and watching for new ones: callers poll [`CtrlerClient::query`].

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use quorumkv_common::rpc::{ErrorKind, RpcError};
use quorumkv_common::{HostPort, TlsMaterial};
use quorumkv_proto::raft::raft_admin_client::RaftAdminClient;
use quorumkv_proto::shardctrler as pb;
use quorumkv_proto::shardctrler::shard_ctrler_client::ShardCtrlerClient;
use rand::Rng;
use tonic::transport::{Channel, Endpoint};

/// The default deadline of one call, retries included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a single attempt may take before the next member is tried. A leader that is
/// alive answers well within it; a dead one is given up on long before the call's deadline.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest a single attempt of a [`CtrlerClient::raft_admin`] call may take: adding a
/// member waits until it caught up (the server gives up after 30 s).
pub const ADMIN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(40);
/// Connection timeout of a channel.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First and largest pause between attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// The gid recorded for a shard that no group owns.
pub const UNASSIGNED: u64 = 0;

/// One numbered configuration, as the controller returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The configuration number; 0 is the initial configuration with no groups.
    pub num: u64,
    /// `shards[s]` is the gid owning shard `s`, or [`UNASSIGNED`].
    pub shards: Vec<u64>,
    /// gid → the `host:port` addresses of the group's servers.
    pub groups: BTreeMap<u64, Vec<String>>,
}

impl Config {
    /// The shards `gid` owns (pass [`UNASSIGNED`] for the unowned ones), ascending.
    pub fn shards_of(&self, gid: u64) -> Vec<u64> {
        (0u64..)
            .zip(&self.shards)
            .filter(|(_, owner)| **owner == gid)
            .map(|(shard, _)| shard)
            .collect()
    }

    fn from_pb(c: pb::Config) -> Self {
        Config {
            num: c.num,
            shards: c.shards,
            groups: c.groups.into_iter().map(|g| (g.gid, g.servers)).collect(),
        }
    }
}

/// What [`CtrlerClient::ensure_joined`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The configuration that has every group: the one the join created, or the latest when
    /// nothing needed joining.
    pub num: u64,
    /// The gids this call joined.
    pub joined: Vec<u64>,
    /// The gids that were already in with the same servers (left unchanged).
    pub already: Vec<u64>,
}

/// Whether two server lists name the same servers (order and host-name case aside).
fn same_servers(a: &[String], b: &[String]) -> bool {
    let norm = |l: &[String]| {
        let mut v: Vec<String> = l.iter().map(|s| s.trim().to_ascii_lowercase()).collect();
        v.sort();
        v
    };
    norm(a) == norm(b)
}

/// Why a call failed, named by what the caller should do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The request can never succeed as it is (the controller refused it, or an address given
    /// to [`CtrlerClient::connect`] is malformed). Nothing changed; fix the arguments.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No member answered in time. For a change the outcome is unknown: it may still be
    /// applied. `last_error` is the last failure seen, if any.
    #[error("no answer from the controller within {after:?}{}", .last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    Timeout {
        after: Duration,
        last_error: Option<String>,
    },
    /// The controller refused this client's certificate for the call: it lacks the role the
    /// call needs (changes need an admin certificate). Use another certificate.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Mutual TLS with the controller failed on a certificate (this client's was refused, or
    /// the controller's is not trusted); the message says which. Fix the TLS files.
    #[error("TLS: {0}")]
    Tls(String),
    /// The controller failed in a way retrying cannot fix; report it.
    #[error("controller error: {0}")]
    Internal(String),
}

/// A client of the shard controller. `Send + Sync`; share it behind an `Arc`.
pub struct CtrlerClient {
    /// The members as configured, validated.
    addrs: Vec<String>,
    tls: TlsMaterial,
    client_id: u64,
    timeout: Duration,
    /// The newest sequence number used. Held for the whole duration of a change, which makes
    /// changes from this client strictly sequential (see the crate docs).
    seq: tokio::sync::Mutex<u64>,
    /// The member that answered last, tried first.
    leader: std::sync::Mutex<Option<String>>,
    channels: std::sync::Mutex<HashMap<String, Channel>>,
}

impl std::fmt::Debug for CtrlerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtrlerClient")
            .field("addrs", &self.addrs)
            .field("client_id", &self.client_id)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What to do after a failed attempt.
enum Next {
    /// Try this address next, without pausing (a leader hint).
    Go(String),
    /// Try the next member after a pause.
    Rotate,
    /// Pause, then try the same member again.
    Wait,
}

impl CtrlerClient {
    /// A client of the controller whose members are at `addrs` (`host:port` each). Validates
    /// the addresses; connections are made on first use, so this needs no running member (but
    /// must be called inside a tokio runtime before the first call).
    pub fn connect(addrs: Vec<String>, tls: TlsMaterial) -> Result<Self, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::InvalidArgument(
                "no controller addresses given".into(),
            ));
        }
        for a in &addrs {
            HostPort::parse(a).map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        }
        Ok(CtrlerClient {
            addrs,
            tls,
            client_id: rand::thread_rng().gen_range(1..=u64::MAX),
            timeout: DEFAULT_TIMEOUT,
            seq: tokio::sync::Mutex::new(0),
            leader: std::sync::Mutex::new(None),
            channels: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Sets the deadline of each call, retries included.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// This client's random id (part of every change's request id).
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Adds groups (gid → server addresses) and returns the new configuration's number.
    pub async fn join(&self, groups: BTreeMap<u64, Vec<String>>) -> Result<u64, ClientError> {
        let seq = self.next_seq().await;
        let req = pb::JoinRequest {
            client_id: self.client_id,
            seq: *seq,
            groups: groups
                .into_iter()
                .map(|(gid, servers)| pb::Group { gid, servers })
                .collect(),
        };
        let reply = self
            .call(|mut c, t| {
                let req = req.clone();
                async move { c.join(with_timeout(req, t)).await }
            })
            .await;
        Ok(reply?.into_inner().num)
    }

    /// Makes every group of `groups` part of the configuration, idempotently: joins those the
    /// latest configuration lacks (in one `join`), and leaves alone those it already has with
    /// the same servers (compared as sets, host names case-insensitively). A gid already in
    /// with other servers is refused ([`ClientError::InvalidArgument`]) and nothing changes.
    /// Meant for callers that declare their groups and apply the declaration on every start
    /// (Compose, the Kubernetes join Job, the demo): calling it again is a no-op.
    pub async fn ensure_joined(
        &self,
        groups: BTreeMap<u64, Vec<String>>,
    ) -> Result<Joined, ClientError> {
        let mut raced = false;
        loop {
            let config = self.query(None).await?;
            let mut missing = BTreeMap::new();
            let mut already = Vec::new();
            for (gid, servers) in &groups {
                match config.groups.get(gid) {
                    Some(have) if same_servers(have, servers) => already.push(*gid),
                    Some(have) => {
                        return Err(ClientError::InvalidArgument(format!(
                            "group {gid} is already in configuration {} with other servers \
                             ({}); `leave` it first, or record its servers with set-servers",
                            config.num,
                            have.join(",")
                        )))
                    }
                    None => {
                        missing.insert(*gid, servers.clone());
                    }
                }
            }
            if missing.is_empty() {
                return Ok(Joined {
                    num: config.num,
                    joined: Vec::new(),
                    already,
                });
            }
            let joined: Vec<u64> = missing.keys().copied().collect();
            match self.join(missing).await {
                Ok(num) => {
                    return Ok(Joined {
                        num,
                        joined,
                        already,
                    })
                }
                // Someone else joined one of them between our query and our join: look again
                // (once; a refusal that persists is returned).
                Err(ClientError::InvalidArgument(_)) if !raced => raced = true,
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes groups and returns the new configuration's number.
    pub async fn leave(&self, gids: Vec<u64>) -> Result<u64, ClientError> {
        let seq = self.next_seq().await;
        let req = pb::LeaveRequest {
            client_id: self.client_id,
            seq: *seq,
            gids,
        };
        let reply = self
            .call(|mut c, t| {
                let req = req.clone();
                async move { c.leave(with_timeout(req, t)).await }
            })
            .await;
        Ok(reply?.into_inner().num)
    }

    /// Gives `shard` to group `gid` and returns the new configuration's number.
    pub async fn move_shard(&self, shard: u64, gid: u64) -> Result<u64, ClientError> {
        let seq = self.next_seq().await;
        let req = pb::MoveRequest {
            client_id: self.client_id,
            seq: *seq,
            shard,
            gid,
        };
        let reply = self
            .call(|mut c, t| async move { c.r#move(with_timeout(req, t)).await })
            .await;
        Ok(reply?.into_inner().num)
    }

    /// Replaces group `gid`'s server list (after its Raft membership changed), keeping every
    /// shard where it is, and returns the new configuration's number.
    pub async fn set_servers(&self, gid: u64, servers: Vec<String>) -> Result<u64, ClientError> {
        let seq = self.next_seq().await;
        let req = pb::SetServersRequest {
            client_id: self.client_id,
            seq: *seq,
            gid,
            servers,
        };
        let reply = self
            .call(|mut c, t| {
                let req = req.clone();
                async move { c.set_servers(with_timeout(req, t)).await }
            })
            .await;
        Ok(reply?.into_inner().num)
    }

    /// Calls the controller group's `RaftAdmin` service (membership of the controller group
    /// itself) on its leader, with the same leader memory, hints and retries as every other
    /// call. One attempt may last up to [`ADMIN_ATTEMPT_TIMEOUT`] (within the call's
    /// deadline), because adding a member waits for it to catch up; the calls are safe to
    /// repeat (see `proto/raft.proto`).
    pub async fn raft_admin<T, A, F>(&self, attempt: A) -> Result<T, ClientError>
    where
        A: Fn(RaftAdminClient<Channel>, Duration) -> F,
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let reply = self
            .call_with(ADMIN_ATTEMPT_TIMEOUT, |channel, t| {
                attempt(RaftAdminClient::new(channel), t)
            })
            .await?;
        Ok(reply.into_inner())
    }

    /// Takes the next sequence number. The guard is held until the change has its answer, so
    /// changes go one at a time; the number stays used whatever the outcome (after a timeout
    /// the request may still be applied, and a later change must not reuse its number).
    async fn next_seq(&self) -> tokio::sync::MutexGuard<'_, u64> {
        let mut seq = self.seq.lock().await;
        *seq += 1;
        seq
    }

    /// Configuration `num`, or the latest for `None` (or for a number not reached yet). A
    /// linearizable read: it reflects every change acknowledged before the call.
    pub async fn query(&self, num: Option<u64>) -> Result<Config, ClientError> {
        self.query_within(num, self.timeout).await
    }

    /// [`CtrlerClient::query`] with its own deadline instead of the client's (a caller with a
    /// shorter deadline of its own, such as the key/value client, bounds its lookups by it).
    pub async fn query_within(
        &self,
        num: Option<u64>,
        timeout: Duration,
    ) -> Result<Config, ClientError> {
        let req = pb::QueryRequest { num };
        let config = self
            .call_within(timeout, ATTEMPT_TIMEOUT, |channel, t| {
                let mut c = ShardCtrlerClient::new(channel);
                async move { c.query(with_timeout(req, t)).await }
            })
            .await?
            .into_inner()
            .config
            .ok_or_else(|| ClientError::Internal("query reply without a configuration".into()))?;
        Ok(Config::from_pb(config))
    }

    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut channels = self.channels.lock().expect("channel map poisoned");
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let hp = HostPort::parse(addr).map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| ClientError::InvalidArgument(format!("{addr}: {e}")))?
            .tls_config(self.tls.client_config(hp.tls_name()))
            .map_err(|e| {
                ClientError::InvalidArgument(format!("{addr}: unusable TLS material: {e:?}"))
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// Calls `attempt` on one member after another until one answers, a refusal comes back,
    /// or the deadline passes.
    async fn call<T, A, F>(&self, attempt: A) -> Result<tonic::Response<T>, ClientError>
    where
        A: Fn(ShardCtrlerClient<Channel>, Duration) -> F,
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(ATTEMPT_TIMEOUT, |channel, t| {
            attempt(ShardCtrlerClient::new(channel), t)
        })
        .await
    }

    /// [`CtrlerClient::call`] for any service of the members, each attempt bounded by
    /// `attempt_timeout`.
    async fn call_with<T, A, F>(
        &self,
        attempt_timeout: Duration,
        attempt: A,
    ) -> Result<tonic::Response<T>, ClientError>
    where
        A: Fn(Channel, Duration) -> F,
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_within(self.timeout, attempt_timeout, attempt)
            .await
    }

    /// [`CtrlerClient::call_with`] bounded by `timeout` instead of the client's deadline.
    async fn call_within<T, A, F>(
        &self,
        timeout: Duration,
        attempt_timeout: Duration,
        attempt: A,
    ) -> Result<tonic::Response<T>, ClientError>
    where
        A: Fn(Channel, Duration) -> F,
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut rotation = self
            .addrs
            .iter()
            .cycle()
            .skip(rand::thread_rng().gen_range(0..self.addrs.len()));
        let mut target = self
            .leader
            .lock()
            .expect("leader poisoned")
            .clone()
            .unwrap_or_else(|| rotation.next().expect("addrs is non-empty").clone());
        let mut backoff = BACKOFF_MIN;
        let mut last_error: Option<String> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout {
                    after: timeout,
                    last_error,
                });
            }
            let per_attempt = left.min(attempt_timeout);
            let channel = self.channel(&target)?;
            let next = match tokio::time::timeout(per_attempt, attempt(channel, per_attempt)).await
            {
                Ok(Ok(reply)) => {
                    *self.leader.lock().expect("leader poisoned") = Some(target);
                    return Ok(reply);
                }
                Ok(Err(status)) => {
                    let e = RpcError::from_status(&status);
                    tracing::debug!(addr = %target, kind = ?e.kind, error = %e, "controller call failed");
                    last_error = Some(format!("{target}: {e}"));
                    match e.kind {
                        ErrorKind::InvalidArgument | ErrorKind::NotFound => {
                            return Err(ClientError::InvalidArgument(e.message));
                        }
                        ErrorKind::PermissionDenied => {
                            return Err(ClientError::PermissionDenied(e.message))
                        }
                        ErrorKind::Tls => return Err(ClientError::Tls(e.message)),
                        ErrorKind::Internal => return Err(ClientError::Internal(e.message)),
                        ErrorKind::NotLeader {
                            leader: Some(leader),
                        } if leader != target && HostPort::parse(&leader).is_ok() => {
                            Next::Go(leader)
                        }
                        ErrorKind::RetryLater => Next::Wait,
                        _ => Next::Rotate,
                    }
                }
                Err(_) => {
                    last_error = Some(format!("{target}: no answer within {per_attempt:?}"));
                    Next::Rotate
                }
            };
            match next {
                Next::Go(addr) => {
                    target = addr;
                    continue;
                }
                Next::Rotate => {
                    self.leader.lock().expect("leader poisoned").take();
                    target = rotation.next().expect("addrs is non-empty").clone();
                }
                Next::Wait => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
            let pause = (backoff + Duration::from_millis(jitter)).min(left);
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

fn with_timeout<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> TlsMaterial {
        TlsMaterial::from_pem("", "", "")
    }

    #[test]
    fn connect_validates_addresses() {
        assert!(CtrlerClient::connect(vec![], tls()).is_err());
        assert!(CtrlerClient::connect(vec!["nohost".into()], tls()).is_err());
        let c = CtrlerClient::connect(vec!["a:1".into(), "b:2".into()], tls()).unwrap();
        assert_ne!(c.client_id(), 0);
    }

    #[test]
    fn shards_of_lists_owned_shards() {
        let c = Config {
            num: 1,
            shards: vec![1, 2, 1, 0],
            groups: BTreeMap::from([(1, vec!["a:1".into()]), (2, vec!["b:1".into()])]),
        };
        assert_eq!(c.shards_of(1), vec![0, 2]);
        assert_eq!(c.shards_of(UNASSIGNED), vec![3]);
    }

    #[tokio::test]
    async fn unreachable_members_time_out_with_the_last_error() {
        // A port nothing listens on: every attempt fails fast, the deadline ends the call.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        quorumkv_common::tls::install_crypto_provider();
        let ca = quorumkv_common::certs::Ca::generate("ca").unwrap();
        let leaf = ca
            .issue("client", quorumkv_common::Role::Client, &[])
            .unwrap();
        let tls = TlsMaterial::from_pem(&ca.pem().cert, &leaf.cert, &leaf.key);
        let c = CtrlerClient::connect(vec![format!("127.0.0.1:{port}")], tls)
            .unwrap()
            .with_timeout(Duration::from_millis(300));
        match c.query(None).await {
            Err(ClientError::Timeout { last_error, .. }) => assert!(last_error.is_some()),
            other => panic!("{other:?}"),
        }
    }
}
