//! One observation of the cluster: the controller's latest configuration and what every member
//! says of itself (`AdminView`), asked all at once over mutual TLS, each call bounded, so a dead
//! member costs one timeout and never blocks the page.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures::future::join_all;
use parking_lot::Mutex;
use quorumkv_common::{HostPort, TlsMaterial};
use quorumkv_proto::admin as pb;
use quorumkv_proto::admin::admin_view_client::AdminViewClient;
use quorumkv_shardctrler_client::{Config, CtrlerClient};
use tonic::transport::{Channel, Endpoint};

use super::ClusterAccess;

/// The controller's group id in observations (replica groups have non-zero gids).
pub const CONTROLLER: u64 = 0;
/// Bound of the configuration query (retries among the controller members included).
const CONFIG_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound of one member's answer, connecting included.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(1);

/// The metric families the dashboard reads from every member.
pub const FAMILIES: [&str; 8] = [
    "quorumkv_kv_requests_total",
    "quorumkv_kv_request_duration_seconds",
    "quorumkv_ctrler_requests_total",
    "quorumkv_ctrler_request_duration_seconds",
    "quorumkv_shard_state",
    "quorumkv_shard_keys",
    "quorumkv_shard_bytes",
    "quorumkv_shardkv_config_num",
];

/// What one address answered, or why it did not.
#[derive(Debug, Clone)]
pub struct Answer {
    pub addr: String,
    pub view: Result<pb::MemberView, String>,
}

/// Everything one look at the cluster saw.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The latest configuration, or why the controller did not give it.
    pub config: Result<Config, String>,
    /// By group ([`CONTROLLER`] for the controller): every address asked, with its answer.
    pub groups: BTreeMap<u64, Vec<Answer>>,
}

/// Asks the cluster; keeps one lazily connected channel per address.
pub struct Gatherer {
    ctrler: CtrlerClient,
    ctrlers: Vec<String>,
    tls: TlsMaterial,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Gatherer {
    /// Must be called within a tokio runtime.
    pub fn new(access: ClusterAccess) -> Result<Self, String> {
        let ctrler = CtrlerClient::connect(access.ctrlers.clone(), access.tls.clone())
            .map_err(|e| e.to_string())?
            .with_timeout(CONFIG_TIMEOUT);
        Ok(Gatherer {
            ctrler,
            ctrlers: access.ctrlers,
            tls: access.tls,
            channels: Mutex::new(HashMap::new()),
        })
    }

    /// Looks at the cluster once. Without an answer from the controller, the groups of
    /// `known` (the last configuration seen) are asked.
    pub async fn observe(&self, known: Option<&Config>) -> Observation {
        let config = match tokio::time::timeout(CONFIG_TIMEOUT, self.ctrler.query(None)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("the controller did not answer: {e}")),
            Err(_) => Err(format!(
                "the controller did not answer within {CONFIG_TIMEOUT:?}"
            )),
        };
        let mut wanted: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        wanted.insert(CONTROLLER, self.ctrlers.clone());
        if let Some(c) = config.as_ref().ok().or(known) {
            for (gid, servers) in &c.groups {
                wanted.insert(*gid, servers.clone());
            }
        }
        let mut groups = self.ask(&wanted).await;
        // Members the others know of that no list names (added, not yet recorded in the
        // controller): ask them too, so that they show up, as down if they are.
        let mut more: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (gid, answers) in &groups {
            let asked: BTreeSet<&str> = answers.iter().map(|a| a.addr.as_str()).collect();
            let known: BTreeSet<&str> = answers
                .iter()
                .filter_map(|a| a.view.as_ref().ok())
                .flat_map(|v| v.members.iter().map(|m| m.addr.as_str()))
                .filter(|addr| !addr.is_empty() && !asked.contains(addr))
                .collect();
            if !known.is_empty() {
                more.insert(*gid, known.into_iter().map(String::from).collect());
            }
        }
        if !more.is_empty() {
            for (gid, answers) in self.ask(&more).await {
                groups.entry(gid).or_default().extend(answers);
            }
        }
        Observation { config, groups }
    }

    async fn ask(&self, wanted: &BTreeMap<u64, Vec<String>>) -> BTreeMap<u64, Vec<Answer>> {
        let calls = wanted.iter().flat_map(|(gid, addrs)| {
            addrs.iter().map(move |addr| async move {
                let view = self.member(addr).await;
                (
                    *gid,
                    Answer {
                        addr: addr.clone(),
                        view,
                    },
                )
            })
        });
        let mut groups: BTreeMap<u64, Vec<Answer>> = BTreeMap::new();
        for (gid, answer) in join_all(calls).await {
            groups.entry(gid).or_default().push(answer);
        }
        groups
    }

    async fn member(&self, addr: &str) -> Result<pb::MemberView, String> {
        let mut client = AdminViewClient::new(self.channel(addr)?);
        let req = pb::MemberViewRequest {
            families: FAMILIES.iter().map(|f| f.to_string()).collect(),
        };
        match tokio::time::timeout(MEMBER_TIMEOUT, client.member(req)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(quorumkv_common::rpc::RpcError::from_status(&status).message),
            Err(_) => Err(format!("no answer within {MEMBER_TIMEOUT:?}")),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let hp = HostPort::parse(addr).map_err(|e| e.to_string())?;
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .and_then(|e| e.tls_config(self.tls.client_config(hp.tls_name())))
            .map_err(|e| format!("{addr}: {e}"))?
            .connect_timeout(MEMBER_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}
