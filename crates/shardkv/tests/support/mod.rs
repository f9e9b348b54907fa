//! A whole QuorumKV cluster in one test process: a 3-member shard controller and replica
//! groups of 3 members, all on 127.0.0.1 over mutual TLS, each group's Raft traffic through a
//! shared fault-injecting network.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorumkv_raft_core::{Bootstrap, NodeConfig, Status, Transport};
use quorumkv_shardctrler::{CtrlerMember, MemberOptions};
use quorumkv_shardctrler_client::CtrlerClient;
use quorumkv_shardkv::{KvMember, KvMemberOptions, ShardKvState};
use quorumkv_shardkv_client::{KvClient, KvError};
use quorumkv_testkit::certs::TestPki;
use quorumkv_testkit::linearizability::{History, KvOp, Operation};
use quorumkv_testkit::net::FaultyTransport;
use quorumkv_testkit::ports;
use quorumkv_testkit::FaultNet;

pub const WAIT: Duration = Duration::from_secs(30);
pub const SHARDS: usize = 10;

/// Test knobs.
#[derive(Clone, Copy)]
pub struct Opts {
    /// Snapshot after this many bytes of log (small to exercise snapshots).
    pub snapshot_log_bytes: u64,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            snapshot_log_bytes: 1 << 20,
        }
    }
}

struct Group {
    addrs: BTreeMap<u64, String>,
    members: BTreeMap<u64, KvMember>,
}

pub struct Cluster {
    pub pki: TestPki,
    pub net: Arc<FaultNet>,
    dir: tempfile::TempDir,
    opts: Opts,
    ctrl_addrs: Vec<String>,
    ctrl: Vec<CtrlerMember>,
    groups: BTreeMap<u64, Group>,
}

fn fast(cfg: &mut NodeConfig, opts: &Opts) {
    cfg.tick_interval = Duration::from_millis(20);
    cfg.request_timeout = Duration::from_secs(3);
    cfg.snapshot_log_bytes = opts.snapshot_log_bytes;
    cfg.log_prefill = false;
    cfg.keep_entries_after_snapshot = 50;
}

impl Cluster {
    /// Starts the controller and groups `1..=groups` (not joined yet).
    pub async fn start(groups: u64, opts: Opts) -> Self {
        quorumkv_testkit::init_tracing();
        let pki = TestPki::new();
        let dir = tempfile::tempdir().unwrap();
        let listeners: Vec<_> = (0..3).map(|_| ports::reserve()).collect();
        let ctrl_addrs: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().to_string())
            .collect();
        let members: Vec<(u64, String)> = (1..=3).zip(ctrl_addrs.iter().cloned()).collect();
        let mut ctrl = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let id = i as u64 + 1;
            let mut raft = NodeConfig::new(id, 0, dir.path().join(format!("ctrl-{id}")));
            raft.members = members.clone();
            fast(&mut raft, &opts);
            let m = CtrlerMember::start(
                MemberOptions {
                    raft,
                    num_shards: SHARDS,
                    tls: pki.node.clone(),
                    admin: None,
                },
                ports::to_tokio(l),
            )
            .await
            .unwrap();
            ctrl.push(m);
        }
        let mut c = Cluster {
            pki,
            net: FaultNet::new(),
            dir,
            opts,
            ctrl_addrs,
            ctrl,
            groups: BTreeMap::new(),
        };
        for gid in 1..=groups {
            c.start_group(gid).await;
        }
        c
    }

    fn member_options(&self, gid: u64, id: u64) -> KvMemberOptions {
        let g = &self.groups[&gid];
        let mut raft = NodeConfig::new(id, gid, self.member_dir(gid, id));
        raft.members = g.addrs.iter().map(|(i, a)| (*i, a.clone())).collect();
        fast(&mut raft, &self.opts);
        let net = self.net.clone();
        // Fault-injection ids are unique across groups: gid * 100 + member id.
        let base = gid * 100;
        KvMemberOptions {
            raft,
            ctrlers: self.ctrl_addrs.clone(),
            tls: self.pki.node.clone(),
            wrap_transport: Some(Arc::new(move |t| {
                Arc::new(FaultyTransport::in_group(
                    base,
                    id,
                    t,
                    net.clone(),
                    tokio::runtime::Handle::current(),
                )) as Arc<dyn Transport>
            })),
            admin: Some("127.0.0.1:0".parse().unwrap()),
            reads: Default::default(),
        }
    }

    /// Starts a new group of three members (not joined to the controller yet).
    pub async fn start_group(&mut self, gid: u64) {
        let listeners: Vec<_> = (0..3).map(|_| ports::reserve()).collect();
        let addrs: BTreeMap<u64, String> = (1..=3)
            .zip(
                listeners
                    .iter()
                    .map(|l| l.local_addr().unwrap().to_string()),
            )
            .collect();
        self.groups.insert(
            gid,
            Group {
                addrs,
                members: BTreeMap::new(),
            },
        );
        for (i, l) in listeners.into_iter().enumerate() {
            let id = i as u64 + 1;
            let m = KvMember::start(self.member_options(gid, id), ports::to_tokio(l))
                .await
                .unwrap();
            self.groups.get_mut(&gid).unwrap().members.insert(id, m);
        }
    }

    pub fn group_servers(&self, gid: u64) -> Vec<String> {
        self.groups[&gid].addrs.values().cloned().collect()
    }

    pub fn ctrler(&self) -> CtrlerClient {
        CtrlerClient::connect(self.ctrl_addrs.clone(), self.pki.admin.clone()).unwrap()
    }

    pub fn client(&self) -> KvClient {
        KvClient::connect(self.ctrl_addrs.clone(), self.pki.client.clone())
            .unwrap()
            .with_timeout(Duration::from_secs(20))
    }

    pub async fn join(&self, gids: &[u64]) -> u64 {
        let groups = gids.iter().map(|g| (*g, self.group_servers(*g))).collect();
        self.ctrler().join(groups).await.unwrap()
    }

    pub async fn leave(&self, gids: &[u64]) -> u64 {
        self.ctrler().leave(gids.to_vec()).await.unwrap()
    }

    /// Stops one member of a group.
    pub async fn stop_member(&mut self, gid: u64, id: u64) {
        if let Some(m) = self.groups.get_mut(&gid).unwrap().members.remove(&id) {
            m.shutdown().await;
        }
    }

    pub async fn restart_member(&mut self, gid: u64, id: u64) {
        self.try_restart_member(gid, id).await.unwrap();
    }

    /// Restarts a stopped member; its start may fail (a damaged data directory).
    pub async fn try_restart_member(
        &mut self,
        gid: u64,
        id: u64,
    ) -> Result<(), quorumkv_shardkv::StartError> {
        let addr = self.groups[&gid].addrs[&id].clone();
        let l = ports::rebind(&addr).await;
        let m = KvMember::start(self.member_options(gid, id), l).await?;
        self.groups.get_mut(&gid).unwrap().members.insert(id, m);
        Ok(())
    }

    /// Stops one member at once, as a crash would (no hand-off, no drain).
    pub async fn crash_member(&mut self, gid: u64, id: u64) {
        if let Some(m) = self.groups.get_mut(&gid).unwrap().members.remove(&id) {
            m.crash().await;
        }
    }

    /// The group's current member ids (running or not).
    pub fn member_ids(&self, gid: u64) -> Vec<u64> {
        self.groups[&gid].addrs.keys().copied().collect()
    }

    /// Replaces member `old` of `gid` with a new, empty member, as an operator would: start
    /// it with `Bootstrap::Join`, have the leader swap the two (learner, caught up, one joint
    /// change), record the group's new servers with the controller, stop the old member.
    /// Returns the new member's id, or why the change did not complete (the group's state is
    /// then whatever Raft made of it; the new member keeps running and is tracked).
    pub async fn replace_member(&mut self, gid: u64, old: u64) -> Result<u64, String> {
        let leader = self.wait_leader(gid).await;
        let new_id = self.groups[&gid].addrs.keys().max().copied().unwrap_or(0) + 1;
        let listener = ports::reserve();
        let addr = listener.local_addr().unwrap().to_string();
        self.groups
            .get_mut(&gid)
            .unwrap()
            .addrs
            .insert(new_id, addr.clone());
        let mut opts = self.member_options(gid, new_id);
        opts.raft.bootstrap = Bootstrap::Join;
        let m = KvMember::start(opts, ports::to_tokio(listener))
            .await
            .map_err(|e| format!("start member {new_id}: {e}"))?;
        self.groups.get_mut(&gid).unwrap().members.insert(new_id, m);
        // Each step is resumable: retry on whichever member leads now (a fault just healed
        // may still be settling), as an operator repeating the command would.
        let mut leader = leader;
        let mut attempt = 0;
        loop {
            let node = self.groups[&gid].members[&leader].node().clone();
            match node
                .replace_member_within(old, new_id, addr.clone(), Duration::from_secs(15))
                .await
            {
                Ok(_) => break,
                Err(e) if attempt < 3 => {
                    tracing::warn!(gid, old, new_id, error = %e, "replace: retrying");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    leader = self.wait_leader(gid).await;
                }
                Err(e) => return Err(format!("replace {old} with {new_id}: {e}")),
            }
        }
        self.groups.get_mut(&gid).unwrap().addrs.remove(&old);
        if let Some(m) = self.groups.get_mut(&gid).unwrap().members.remove(&old) {
            m.shutdown().await;
        }
        self.ctrler()
            .set_servers(gid, self.group_servers(gid))
            .await
            .map_err(|e| format!("record the servers of group {gid}: {e}"))?;
        Ok(new_id)
    }

    pub async fn stop_group(&mut self, gid: u64) {
        for id in self.member_ids(gid) {
            self.stop_member(gid, id).await;
        }
    }

    pub async fn restart_group(&mut self, gid: u64) {
        for id in self.member_ids(gid) {
            self.restart_member(gid, id).await;
        }
    }

    /// A member's data directory (Raft log, snapshots and shard store).
    pub fn member_dir(&self, gid: u64, id: u64) -> std::path::PathBuf {
        self.dir.path().join(format!("g{gid}-{id}"))
    }

    pub fn running(&self, gid: u64) -> Vec<u64> {
        self.groups[&gid].members.keys().copied().collect()
    }

    /// `http://ip:port` of a running member's admin endpoint.
    pub fn admin_url(&self, gid: u64, id: u64) -> String {
        let addr = self.groups[&gid].members[&id]
            .admin_addr()
            .expect("admin endpoint");
        format!("http://{addr}")
    }

    /// Stops one member gracefully and returns its `shutdown` result (the member leading
    /// afterwards, if it handed leadership over) and how long the shutdown took.
    pub async fn shutdown_member(&mut self, gid: u64, id: u64) -> (Option<u64>, Duration) {
        let m = self
            .groups
            .get_mut(&gid)
            .unwrap()
            .members
            .remove(&id)
            .expect("running member");
        let start = Instant::now();
        let to = m.shutdown().await;
        (to, start.elapsed())
    }

    pub fn status(&self, gid: u64, id: u64) -> Status {
        self.groups[&gid].members[&id].node().status()
    }

    /// Looks at a member's state (local, for assertions).
    pub fn state<T>(&self, gid: u64, id: u64, f: impl FnOnce(&ShardKvState) -> T) -> T {
        self.groups[&gid].members[&id].node().read_local(f)
    }

    /// Waits (up to [`WAIT`]) until a running member of `gid` leads.
    pub async fn wait_leader(&self, gid: u64) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(id) = self.leader(gid) {
                return id;
            }
            assert!(Instant::now() < deadline, "group {gid} has no leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A running member's Raft node.
    pub fn node(&self, gid: u64, id: u64) -> Arc<quorumkv_raft_core::RaftNode<ShardKvState>> {
        self.groups[&gid].members[&id].node().clone()
    }

    /// The leader of `gid` among its running members.
    pub fn leader(&self, gid: u64) -> Option<u64> {
        self.groups[&gid]
            .members
            .iter()
            .find(|(_, m)| m.node().status().is_leader())
            .map(|(id, _)| *id)
    }

    /// Waits until every running member of every listed group has reached configuration
    /// `num` and holds only `Serving` shards (migrations and garbage collection finished).
    pub async fn wait_settled(&self, gids: &[u64], num: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let done = gids.iter().all(|gid| {
                self.groups[gid].members.values().all(|m| {
                    m.node().read_local(|s| {
                        s.config().num >= num
                            && s.shards()
                                .values()
                                .all(|sh| sh.state == quorumkv_shardkv::shard::ShardState::Serving)
                    })
                })
            });
            if done {
                return;
            }
            if Instant::now() > deadline {
                let views: Vec<_> = gids
                    .iter()
                    .flat_map(|gid| {
                        self.groups[gid].members.iter().map(move |(id, m)| {
                            m.node().read_local(|s| {
                                format!(
                                    "g{gid}/{id}: config {} shards {:?}",
                                    s.config().num,
                                    s.shards()
                                        .iter()
                                        .map(|(k, v)| (*k, v.state.name()))
                                        .collect::<Vec<_>>()
                                )
                            })
                        })
                    })
                    .collect();
                panic!("groups {gids:?} did not settle at config {num}: {views:#?}");
            }
            // Migration progress shows in no single watchable value; poll at a short,
            // bounded interval.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sum of the key+value bytes held by one running member of each group.
    pub fn stored_bytes(&self) -> u64 {
        self.groups
            .values()
            .filter_map(|g| g.members.values().next())
            .map(|m| {
                m.node()
                    .read_local(|s| s.shards().values().map(|sh| sh.bytes).sum::<u64>())
            })
            .sum()
    }

    pub async fn shutdown(mut self) {
        let gids: Vec<u64> = self.groups.keys().copied().collect();
        for gid in gids {
            self.stop_group(gid).await;
        }
        for m in std::mem::take(&mut self.ctrl) {
            m.shutdown().await;
        }
    }
}

/// Runs `op` on `key` through `kv` and records it in `history` with its outcome: completed
/// (with what a get saw), or, for a write that timed out, of unknown outcome (it may have
/// happened at any time after the call; a timed-out read tells nothing and is left out). Any
/// other error fails the test: these clients only ever meet faults a retry resolves.
pub async fn run_and_record(
    kv: &mut KvClient,
    history: &History,
    client: u64,
    key: Vec<u8>,
    op: KvOp,
) {
    let call = history.now();
    let result = match &op {
        KvOp::Get => kv.get(&key).await.map(|v| v.map(|b| b.to_vec())),
        KvOp::Put(v) => kv.put(&key, v).await.map(|_| None),
        KvOp::Append(v) => kv.append(&key, v).await.map(|_| None),
        KvOp::Delete => kv.delete(&key).await.map(|_| None),
    };
    match result {
        Ok(output) => history.record(Operation::completed(
            client,
            key,
            op,
            output,
            call,
            history.now(),
        )),
        Err(KvError::Timeout { .. }) => {
            if op != KvOp::Get {
                history.record(Operation::timed_out(client, key, op, call));
            }
        }
        Err(e) => panic!("client {client}: unexpected error {e}"),
    }
}
