//! A Raft group of real members on 127.0.0.1: real gRPC over mutual TLS, sled storage in a
//! temporary directory, every member's outgoing traffic through one [`FaultNet`]. Each member
//! serves the Raft transport and `RaftAdmin` (membership administration).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorumkv_raft_core::{Bootstrap, NodeConfig, RaftAdminService, RaftError, RaftNode, Status};
use tokio::task::JoinHandle;

use crate::certs::TestPki;
use crate::kv::{KvCommand, KvStateMachine};
use crate::net::{FaultNet, FaultyTransport};

/// A member of the test cluster.
pub type Node = RaftNode<KvStateMachine>;

/// Knobs for a test cluster.
#[derive(Clone)]
pub struct ClusterOptions {
    /// Applied to every member's configuration after the test defaults.
    pub tweak: Arc<dyn Fn(&mut NodeConfig) + Send + Sync>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            tweak: Arc::new(|_| {}),
        }
    }
}

struct Running {
    node: Arc<Node>,
    server: JoinHandle<()>,
}

/// A test Raft group. Members are numbered from 1.
pub struct TestCluster {
    pub group_id: u64,
    pub net: Arc<FaultNet>,
    pub pki: TestPki,
    dir: tempfile::TempDir,
    addrs: BTreeMap<u64, String>,
    initial: Vec<(u64, String)>,
    reserved: BTreeMap<u64, std::net::TcpListener>,
    running: BTreeMap<u64, Running>,
    /// Members that use other TLS material than `pki.node` (see [`TestCluster::set_tls`]).
    tls: BTreeMap<u64, quorumkv_common::TlsMaterial>,
    opts: ClusterOptions,
}

/// Default wait of the helpers below; generous for a loaded 2-core CI machine.
pub const WAIT: Duration = Duration::from_secs(20);

impl TestCluster {
    /// Starts `n` members that bootstrap one group, and waits for a leader.
    pub async fn start(n: u64, opts: ClusterOptions) -> Self {
        crate::init_tracing();
        let mut c = TestCluster {
            group_id: 7,
            net: FaultNet::new(),
            pki: TestPki::new(),
            dir: tempfile::tempdir().expect("tempdir"),
            addrs: BTreeMap::new(),
            initial: Vec::new(),
            reserved: BTreeMap::new(),
            running: BTreeMap::new(),
            tls: BTreeMap::new(),
            opts,
        };
        for id in 1..=n {
            c.reserve(id);
        }
        c.initial = c.addrs.iter().map(|(i, a)| (*i, a.clone())).collect();
        for id in 1..=n {
            c.launch(id, Bootstrap::NewGroup, c.initial.clone())
                .await
                .expect("start member");
        }
        c.wait_leader(WAIT).await;
        c
    }

    fn reserve(&mut self, id: u64) -> String {
        let l = crate::ports::reserve();
        let addr = l.local_addr().unwrap().to_string();
        self.reserved.insert(id, l);
        self.addrs.insert(id, addr.clone());
        addr
    }

    /// The configuration a member gets (test defaults: 20 ms ticks, so elections take
    /// 200-400 ms).
    pub fn config(&self, id: u64) -> NodeConfig {
        let mut cfg = NodeConfig::new(id, self.group_id, self.dir.path().join(format!("n{id}")));
        cfg.tick_interval = Duration::from_millis(20);
        cfg.request_timeout = Duration::from_secs(3);
        cfg.log_prefill = false;
        (self.opts.tweak)(&mut cfg);
        cfg
    }

    async fn launch(
        &mut self,
        id: u64,
        bootstrap: Bootstrap,
        members: Vec<(u64, String)>,
    ) -> Result<(), RaftError> {
        let listener = match self.reserved.remove(&id) {
            Some(l) => crate::ports::to_tokio(l),
            None => crate::ports::rebind(&self.addrs[&id]).await,
        };
        let mut cfg = self.config(id);
        cfg.members = members;
        cfg.bootstrap = bootstrap;
        let (net, rt) = (self.net.clone(), tokio::runtime::Handle::current());
        let tls = self.tls.get(&id).unwrap_or(&self.pki.node).clone();
        let (node, raft_service) = RaftNode::start_grpc_wrapped(
            cfg,
            KvStateMachine::default(),
            tls.clone(),
            65_536,
            |grpc| Arc::new(FaultyTransport::new(id, grpc, net, rt)),
        )?;
        let node = Arc::new(node);
        let svc = raft_service.into_server();
        let server = tonic::transport::Server::builder()
            .tls_config(tls.server_config())
            .expect("tls config")
            // Who may call what, by the role in the peer's certificate (quorumkv_common::auth).
            .layer(quorumkv_common::AuthLayer)
            .add_service(svc)
            .add_service(
                RaftAdminService::new(node.clone())
                    .with_catch_up_timeout(WAIT)
                    .into_server(),
            )
            .serve_with_incoming(quorumkv_raft_core::transport::incoming(listener));
        let server = tokio::spawn(async move {
            let _ = server.await;
        });
        self.running.insert(id, Running { node, server });
        Ok(())
    }

    /// The TLS material (certificate, key and trusted CAs) member `id` uses from its next
    /// (re)start on, as server and towards its peers; `pki.node` until this is called. For
    /// certificate and CA rotation tests.
    pub fn set_tls(&mut self, id: u64, tls: quorumkv_common::TlsMaterial) {
        self.tls.insert(id, tls);
    }

    pub fn addr(&self, id: u64) -> &str {
        &self.addrs[&id]
    }

    pub fn ids(&self) -> Vec<u64> {
        self.running.keys().copied().collect()
    }

    pub fn node(&self, id: u64) -> Arc<Node> {
        self.running
            .get(&id)
            .unwrap_or_else(|| panic!("member {id} is not running"))
            .node
            .clone()
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.running.contains_key(&id)
    }

    /// Stops a member (its driver and its gRPC server); its data directory stays.
    pub async fn stop(&mut self, id: u64) {
        if let Some(r) = self.running.remove(&id) {
            r.node.shutdown().await;
            r.server.abort();
        }
    }

    /// Restarts a stopped member from its data directory.
    pub async fn restart(&mut self, id: u64) {
        self.launch(id, Bootstrap::NewGroup, self.initial.clone())
            .await
            .expect("restart member");
    }

    /// Starts a brand-new, empty member that waits to be added to the group (it is not added
    /// yet: call `add_learner` on the leader).
    pub async fn start_joining(&mut self, id: u64) -> String {
        let addr = self.reserve(id);
        let members: Vec<(u64, String)> = self.addrs.iter().map(|(i, a)| (*i, a.clone())).collect();
        self.launch(id, Bootstrap::Join, members)
            .await
            .expect("start joining member");
        addr
    }

    /// Statuses of the running members.
    pub fn statuses(&self) -> BTreeMap<u64, Status> {
        self.running
            .iter()
            .map(|(id, r)| (*id, r.node.status()))
            .collect()
    }

    /// Waits until `f` returns `Some` for the running members' statuses, re-checking on every
    /// status change (no polling sleeps). Panics after `timeout`, with the statuses.
    pub async fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&BTreeMap<u64, Status>) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let mut watchers: Vec<_> = self
                .running
                .values()
                .map(|r| r.node.watch_status())
                .collect();
            for w in &mut watchers {
                w.mark_unchanged();
            }
            if let Some(v) = f(&self.statuses()) {
                return v;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                panic!("timed out waiting for {what}: {:#?}", self.statuses());
            }
            let changed =
                futures::future::select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
            let _ = tokio::time::timeout(remaining, changed).await;
        }
    }

    /// Waits until exactly one running member leads in the highest term and returns it.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        self.wait_until(timeout, "a leader", |st| {
            let term = st.values().map(|s| s.term).max()?;
            let leaders: Vec<u64> = st
                .values()
                .filter(|s| s.is_leader() && s.term == term)
                .map(|s| s.id)
                .collect();
            (leaders.len() == 1).then(|| leaders[0])
        })
        .await
    }

    /// Waits until every listed member has applied at least `index`.
    pub async fn wait_applied(&self, ids: &[u64], index: u64) {
        self.wait_until(WAIT, &format!("{ids:?} to apply {index}"), |st| {
            ids.iter()
                .all(|id| st.get(id).is_some_and(|s| s.applied_index >= index))
                .then_some(())
        })
        .await
    }

    /// Proposes through whichever member leads, retrying on `NotLeader` / `RetryLater` until
    /// `timeout`. A `Timeout` from the node is returned as is (the outcome is unknown).
    pub async fn propose_within(
        &self,
        cmd: KvCommand,
        timeout: Duration,
    ) -> Result<Vec<u8>, RaftError> {
        let deadline = Instant::now() + timeout;
        let bytes = cmd.encode();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RaftError::Timeout(timeout));
            }
            let leader = self
                .statuses()
                .values()
                .filter(|s| s.is_leader())
                .max_by_key(|s| s.term)
                .map(|s| s.id);
            let Some(leader) = leader else {
                self.wait_until(left, "a leader", |st| {
                    st.values().any(|s| s.is_leader()).then_some(())
                })
                .await;
                continue;
            };
            match self
                .node(leader)
                .propose_with_timeout(bytes.clone(), left.min(Duration::from_secs(3)))
                .await
            {
                Ok(r) => return Ok(r),
                Err(RaftError::NotLeader { .. })
                | Err(RaftError::RetryLater(_))
                | Err(RaftError::ShuttingDown) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn put(&self, key: &str, value: &str) {
        self.propose_within(
            KvCommand::Put {
                key: key.into(),
                value: value.into(),
            },
            WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }

    /// A linearizable read of `key` through the current leader.
    pub async fn get(&self, key: &str) -> Option<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = self.wait_leader(WAIT).await;
            match self.node(leader).read(|sm| sm.get(key).cloned()).await {
                Ok(v) => return v,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "read retry");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("get {key}: {e}"),
            }
        }
    }

    /// A copy of a member's state machine (local, not linearizable: for assertions after
    /// `wait_applied`).
    pub fn state(&self, id: u64) -> KvStateMachine {
        self.node(id).read_local(|sm| sm.clone())
    }

    /// Stops every member.
    pub async fn shutdown(&mut self) {
        for id in self.ids() {
            self.stop(id).await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for r in self.running.values() {
            r.server.abort();
        }
    }
}
