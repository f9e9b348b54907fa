//! The replicated controller end to end, in process: three members on 127.0.0.1 with mutual
//! TLS, driven through the client library (and, where the wire matters, the generated gRPC
//! client). The MIT 6.824 shardctrler scenarios, adapted, plus exactly-once, refusals, log
//! compaction and the fixed shard count. Every wait is bounded and awaits a condition.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use quorumkv_proto::shardctrler as pb;
use quorumkv_proto::shardctrler::shard_ctrler_client::ShardCtrlerClient;
use quorumkv_raft_core::{NodeConfig, Status};
use quorumkv_shardctrler::{Config, CtrlError, CtrlerMember, MemberOptions, CONTROLLER_GROUP_ID};
use quorumkv_shardctrler_client::{ClientError, CtrlerClient};
use quorumkv_testkit::certs::TestPki;
use quorumkv_testkit::ports;
use tonic::transport::{Channel, Endpoint};

const WAIT: Duration = Duration::from_secs(20);
const SHARDS: usize = 10;

/// A controller group of real members on loopback.
struct Ctl {
    pki: TestPki,
    dir: tempfile::TempDir,
    addrs: BTreeMap<u64, String>,
    reserved: BTreeMap<u64, std::net::TcpListener>,
    members: BTreeMap<u64, CtrlerMember>,
}

impl Ctl {
    async fn start(n: u64) -> Self {
        quorumkv_testkit::init_tracing();
        let mut c = Ctl {
            pki: TestPki::new(),
            dir: tempfile::tempdir().unwrap(),
            addrs: BTreeMap::new(),
            reserved: BTreeMap::new(),
            members: BTreeMap::new(),
        };
        for id in 1..=n {
            let l = ports::reserve();
            c.addrs.insert(id, l.local_addr().unwrap().to_string());
            c.reserved.insert(id, l);
        }
        for id in 1..=n {
            c.launch(id, SHARDS).await.expect("start member");
        }
        c.wait_leader().await;
        c
    }

    /// Test timing (20 ms ticks) and tiny snapshots, so that compaction happens often.
    fn options(&self, id: u64, num_shards: usize) -> MemberOptions {
        let mut raft = NodeConfig::new(
            id,
            CONTROLLER_GROUP_ID,
            self.dir.path().join(format!("n{id}")),
        );
        raft.tick_interval = Duration::from_millis(20);
        raft.request_timeout = Duration::from_secs(3);
        raft.snapshot_log_bytes = 2048;
        raft.log_prefill = false;
        raft.keep_entries_after_snapshot = 5;
        raft.members = self.addrs.iter().map(|(i, a)| (*i, a.clone())).collect();
        MemberOptions {
            raft,
            num_shards,
            tls: self.pki.node.clone(),
            admin: Some("127.0.0.1:0".parse().unwrap()),
        }
    }

    async fn launch(&mut self, id: u64, num_shards: usize) -> Result<(), CtrlError> {
        let listener = match self.reserved.remove(&id) {
            Some(l) => ports::to_tokio(l),
            None => ports::rebind(&self.addrs[&id]).await,
        };
        let m = CtrlerMember::start(self.options(id, num_shards), listener).await?;
        self.members.insert(id, m);
        Ok(())
    }

    async fn stop(&mut self, id: u64) {
        if let Some(m) = self.members.remove(&id) {
            m.shutdown().await;
        }
    }

    fn client(&self) -> CtrlerClient {
        CtrlerClient::connect(
            self.addrs.values().cloned().collect(),
            self.pki.admin.clone(),
        )
        .unwrap()
        .with_timeout(WAIT)
    }

    fn statuses(&self) -> BTreeMap<u64, Status> {
        self.members
            .iter()
            .map(|(id, m)| (*id, m.node().status()))
            .collect()
    }

    /// Waits until `f` holds for the running members' statuses, re-checking on every change.
    async fn wait_until<T>(
        &self,
        what: &str,
        mut f: impl FnMut(&BTreeMap<u64, Status>) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut watchers: Vec<_> = self
                .members
                .values()
                .map(|m| m.node().watch_status())
                .collect();
            for w in &mut watchers {
                w.mark_unchanged();
            }
            if let Some(v) = f(&self.statuses()) {
                return v;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}: {:#?}",
                self.statuses()
            );
            let changed =
                futures::future::select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
            let _ = tokio::time::timeout(left, changed).await;
        }
    }

    async fn wait_leader(&self) -> u64 {
        self.wait_until("a leader", |st| {
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

    /// A raw gRPC client of member `id`, for checks at the wire level.
    async fn grpc(&self, id: u64) -> ShardCtrlerClient<Channel> {
        let channel = Endpoint::from_shared(format!("https://{}", self.addrs[&id]))
            .unwrap()
            .tls_config(self.pki.admin.client_config("127.0.0.1"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        ShardCtrlerClient::new(channel)
    }

    /// Every member's controller after all of them applied the leader's commit index.
    async fn converged(&self) -> BTreeMap<u64, quorumkv_shardctrler::Controller> {
        self.wait_until("members to converge", |st| {
            let commit = st.values().map(|s| s.commit_index).max()?;
            st.values().all(|s| s.applied_index >= commit).then_some(())
        })
        .await;
        self.members
            .iter()
            .map(|(id, m)| (*id, m.node().read_local(|sm| sm.controller().clone())))
            .collect()
    }
}

/// The client's configuration as the crate's type, for the shared checks.
fn plain(c: &quorumkv_shardctrler_client::Config) -> Config {
    Config {
        num: c.num,
        shards: c.shards.clone(),
        groups: c.groups.clone(),
    }
}

fn servers(gid: u64) -> Vec<String> {
    (0..3).map(|i| format!("g{gid}-s{i}:7001")).collect()
}

fn one(gid: u64) -> BTreeMap<u64, Vec<String>> {
    BTreeMap::from([(gid, servers(gid))])
}

async fn latest(ck: &CtrlerClient) -> Config {
    plain(&ck.query(None).await.expect("query"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_join_leave_move_and_immutable_history() {
    let c = Ctl::start(3).await;
    let ck = c.client();

    let c0 = latest(&ck).await;
    assert_eq!(c0.num, 0);
    assert!(c0.groups.is_empty());
    support::check_owners(&c0);

    assert_eq!(ck.join(one(1)).await.unwrap(), 1);
    support::check_balanced(&latest(&ck).await, &[1]);
    assert_eq!(ck.join(one(2)).await.unwrap(), 2);
    let c2 = latest(&ck).await;
    support::check_balanced(&c2, &[1, 2]);
    assert_eq!(c2.groups[&2], servers(2));

    // The wire bytes of configuration 2, to compare after later changes.
    let mut raw = c.grpc(1).await;
    let bytes_of = |r: pb::QueryReply| r.config.unwrap().encode_to_vec();
    let c2_bytes = bytes_of(
        raw.query(pb::QueryRequest { num: Some(2) })
            .await
            .unwrap()
            .into_inner(),
    );

    assert_eq!(ck.leave(vec![1]).await.unwrap(), 3);
    support::check_balanced(&latest(&ck).await, &[2]);

    // Move: respected until the next join/leave.
    ck.join(one(3)).await.unwrap();
    let before = latest(&ck).await;
    let shard = before.shards.iter().position(|g| *g == 2).unwrap() as u64;
    let n = ck.move_shard(shard, 3).await.unwrap();
    let moved = latest(&ck).await;
    assert_eq!(moved.num, n);
    assert_eq!(moved.shards[shard as usize], 3);
    assert_eq!(support::moved(&before, &moved), 1);
    ck.join(one(4)).await.unwrap();
    support::check_balanced(&latest(&ck).await, &[2, 3, 4]);

    // History never changes, on any member, byte for byte.
    for id in [1, 2, 3] {
        let mut raw = c.grpc(id).await;
        let again = raw
            .query(pb::QueryRequest { num: Some(2) })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(bytes_of(again), c2_bytes, "member {id}");
    }
    assert_eq!(plain(&ck.query(Some(2)).await.unwrap()), c2);
    assert_eq!(plain(&ck.query(Some(0)).await.unwrap()), c0);
    // A number beyond the latest reads the latest.
    assert_eq!(
        ck.query(Some(1_000)).await.unwrap().num,
        latest(&ck).await.num
    );

    let all = c.converged().await;
    let first = all.values().next().unwrap();
    assert!(all.values().all(|ctrl| ctrl == first), "members diverged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_transfers_and_multi_group_changes_stay_balanced() {
    let c = Ctl::start(3).await;
    let ck = c.client();

    // Multi-group join.
    let groups: BTreeMap<u64, Vec<String>> = (1..=3).map(|g| (g, servers(g))).collect();
    ck.join(groups).await.unwrap();
    let mut prev = latest(&ck).await;
    support::check_balanced(&prev, &[1, 2, 3]);

    // Joins move shards only to the new group; leaves move only the leaving group's shards.
    let mut live: BTreeSet<u64> = (1..=3).collect();
    for step in 0..6u64 {
        if step % 2 == 0 {
            let gid = 10 + step;
            ck.join(one(gid)).await.unwrap();
            live.insert(gid);
            let next = latest(&ck).await;
            for (s, (a, b)) in prev.shards.iter().zip(&next.shards).enumerate() {
                assert!(
                    a == b || *b == gid,
                    "join {gid}: shard {s} moved {a} -> {b}"
                );
            }
            prev = next;
        } else {
            let gid = *live.iter().next().unwrap();
            ck.leave(vec![gid]).await.unwrap();
            live.remove(&gid);
            let next = latest(&ck).await;
            for (s, (a, b)) in prev.shards.iter().zip(&next.shards).enumerate() {
                assert!(
                    a == b || *a == gid,
                    "leave {gid}: shard {s} moved {a} -> {b}"
                );
            }
            prev = next;
        }
        support::check_balanced(&prev, &live.iter().copied().collect::<Vec<_>>());
    }

    // Multi-group leave, then more groups than shards.
    let gone: Vec<u64> = live.iter().copied().take(2).collect();
    ck.leave(gone.clone()).await.unwrap();
    for g in &gone {
        live.remove(g);
    }
    support::check_balanced(
        &latest(&ck).await,
        &live.iter().copied().collect::<Vec<_>>(),
    );
    let many: BTreeMap<u64, Vec<String>> = (100..100 + SHARDS as u64 + 3)
        .map(|g| (g, servers(g)))
        .collect();
    live.extend(many.keys());
    ck.join(many).await.unwrap();
    let c_many = latest(&ck).await;
    support::check_balanced(&c_many, &live.iter().copied().collect::<Vec<_>>());
    let owners: BTreeSet<u64> = c_many.shards.iter().copied().collect();
    assert_eq!(owners.len(), SHARDS, "each shard its own group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_survive_a_leader_restart() {
    let mut c = Ctl::start(3).await;
    const CLIENTS: u64 = 5;
    const ROUNDS: u64 = 4;
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for k in 0..CLIENTS {
        let ck = c.client();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut ops = 0;
            for r in 0..ROUNDS {
                let gid = 1000 * (k + 1) + r;
                ck.join(one(gid))
                    .await
                    .unwrap_or_else(|e| panic!("join {gid}: {e}"));
                ops += 1;
                done.fetch_add(1, Ordering::SeqCst);
                let cfg = ck.query(None).await.unwrap();
                if let Some(shard) = cfg.shards.iter().position(|g| *g != gid) {
                    ck.move_shard(shard as u64, gid)
                        .await
                        .unwrap_or_else(|e| panic!("move: {e}"));
                    ops += 1;
                }
                if r % 2 == 1 {
                    ck.leave(vec![gid])
                        .await
                        .unwrap_or_else(|e| panic!("leave {gid}: {e}"));
                    ops += 1;
                }
            }
            ops
        }));
    }

    // Kill the leader in the middle of the run, wait for a successor, bring it back.
    let deadline = Instant::now() + WAIT;
    while done.load(Ordering::SeqCst) < CLIENTS {
        assert!(Instant::now() < deadline, "clients made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let old = c.wait_leader().await;
    c.stop(old).await;
    let new = c.wait_leader().await;
    assert_ne!(new, old);
    c.launch(old, SHARDS).await.unwrap();

    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let ck = c.client();
    let last = latest(&ck).await;
    // Every change applied exactly once: one configuration per acknowledged change.
    assert_eq!(last.num, total, "configurations vs acknowledged changes");
    let live: Vec<u64> = (0..CLIENTS)
        .flat_map(|k| {
            (0..ROUNDS)
                .filter(|r| r % 2 == 0)
                .map(move |r| 1000 * (k + 1) + r)
        })
        .collect();
    // The last change may be a move; a fresh join rebalances.
    ck.join(one(1)).await.unwrap();
    let mut want = live.clone();
    want.push(1);
    support::check_balanced(&latest(&ck).await, &want);
    for n in 0..=last.num {
        support::check_owners(&plain(&ck.query(Some(n)).await.unwrap()));
    }

    let all = c.converged().await;
    let first = all.values().next().unwrap();
    assert!(all.values().all(|ctrl| ctrl == first), "members diverged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_is_applied_once() {
    let c = Ctl::start(3).await;
    let leader = c.wait_leader().await;
    let mut raw = c.grpc(leader).await;
    let join = pb::JoinRequest {
        client_id: 42,
        seq: 1,
        groups: vec![
            pb::Group {
                gid: 7,
                servers: servers(7),
            },
            pb::Group {
                gid: 8,
                servers: servers(8),
            },
        ],
    };
    let first = raw.join(join.clone()).await.unwrap().into_inner();
    let again = raw.join(join.clone()).await.unwrap().into_inner();
    assert_eq!(first, again);
    let latest = raw
        .query(pb::QueryRequest { num: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        latest.config.unwrap().num,
        first.num,
        "the retry created no configuration"
    );

    // An older request of the same client is refused and changes nothing.
    let leave = pb::LeaveRequest {
        client_id: 42,
        seq: 2,
        gids: vec![7],
    };
    let left = raw.leave(leave).await.unwrap().into_inner();
    let stale = raw.join(join).await.unwrap_err();
    assert_eq!(stale.code(), tonic::Code::InvalidArgument, "{stale:?}");
    let latest = raw
        .query(pb::QueryRequest { num: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(latest.config.unwrap().num, left.num);

    // A follower points at the leader.
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let err = c
        .grpc(follower)
        .await
        .leave(pb::LeaveRequest {
            client_id: 43,
            seq: 1,
            gids: vec![7],
        })
        .await
        .unwrap_err();
    let e = quorumkv_common::rpc::RpcError::from_status(&err);
    assert_eq!(
        e.kind,
        quorumkv_common::rpc::ErrorKind::NotLeader {
            leader: Some(c.addrs[&leader].clone())
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let c = Ctl::start(3).await;
    let ck = c.client();
    ck.join(one(1)).await.unwrap();
    let before = latest(&ck).await;

    let bad_join = |gid: u64, servers: &[&str]| {
        BTreeMap::from([(
            gid,
            servers.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )])
    };
    let refusals = [
        ck.join(bad_join(0, &["a:1"])).await,
        ck.join(bad_join(2, &[])).await,
        ck.join(bad_join(2, &["no-port"])).await,
        ck.join(bad_join(2, &["a:1", "A:1"])).await,
        ck.join(bad_join(2, &["g1-s0:7001"])).await,
        ck.join(BTreeMap::from([(1, vec!["other:7001".to_string()])]))
            .await,
        ck.join(BTreeMap::new()).await,
        ck.leave(vec![1]).await,
        ck.leave(vec![]).await,
        ck.leave(vec![9]).await,
        ck.leave(vec![1, 1]).await,
        ck.move_shard(SHARDS as u64, 1).await,
        ck.move_shard(0, 9).await,
        ck.move_shard(0, 0).await,
    ];
    for (i, r) in refusals.into_iter().enumerate() {
        assert!(
            matches!(r, Err(ClientError::InvalidArgument(_))),
            "case {i}: {r:?}"
        );
    }
    assert_eq!(latest(&ck).await, before);
    // Joining a group again with the same servers succeeds and changes nothing.
    assert_eq!(ck.join(one(1)).await.unwrap(), before.num);
    assert_eq!(latest(&ck).await, before);

    let mut raw = c.grpc(c.wait_leader().await).await;
    let status = raw
        .join(pb::JoinRequest {
            client_id: 5,
            seq: 1,
            groups: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = raw
        .r#move(pb::MoveRequest {
            client_id: 0,
            seq: 1,
            shard: 0,
            gid: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(latest(&ck).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_do_not_grow_the_log_and_changes_are_compacted() {
    let mut c = Ctl::start(3).await;
    let ck = c.client();
    ck.join(one(1)).await.unwrap();
    let leader = c.wait_leader().await;
    let last_before = c.statuses()[&leader].last_index;
    for _ in 0..100 {
        ck.query(None).await.unwrap();
    }
    let st = c.statuses()[&leader].clone();
    assert!(st.is_leader(), "leadership changed during the test");
    assert_eq!(st.last_index, last_before, "queries wrote to the log");

    for i in 0..60u64 {
        let gid = 10 + i;
        ck.join(one(gid)).await.unwrap();
        ck.leave(vec![gid]).await.unwrap();
    }
    let st = c
        .wait_until("snapshots on every member", |st| {
            st.values()
                .all(|s| s.snapshot_index > 60)
                .then(|| st.clone())
        })
        .await;
    for s in st.values() {
        assert!(s.first_index > 60, "member {} kept its log: {s:?}", s.id);
        assert!(
            s.last_index - s.first_index < 100,
            "member {} log unbounded: {s:?}",
            s.id
        );
    }

    // A member restarted from its snapshot serves the same history.
    let before = latest(&ck).await;
    let leader = c.wait_leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    c.stop(follower).await;
    c.launch(follower, SHARDS).await.unwrap();
    let all = c.converged().await;
    assert_eq!(all[&follower].latest().num, before.num);
    assert!(
        all.values().all(|ctrl| ctrl == &all[&follower]),
        "members diverged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_refuses_another_shard_count() {
    let mut c = Ctl::start(3).await;
    c.client().join(one(1)).await.unwrap();
    c.stop(3).await;
    let err = c.launch(3, SHARDS + 1).await.unwrap_err();
    match &err {
        CtrlError::CannotStart(why) => {
            assert!(
                why.contains(&format!("{SHARDS} shards, not {}", SHARDS + 1)),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    c.launch(3, SHARDS).await.unwrap();
    c.converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_hands_over_and_the_admin_port_counts_requests() {
    let mut c = Ctl::start(3).await;
    let ck = c.client();
    let num = ck.join(one(1)).await.unwrap();
    let leader = c.wait_leader().await;
    c.converged().await;
    let http = |url: String| async move {
        tokio::task::spawn_blocking(move || quorumkv_admin::get(&url, Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap()
    };
    let admin = |id: u64| format!("http://{}", c.members[&id].admin_addr().unwrap());
    for id in c.members.keys() {
        let (code, body) = http(format!("{}/health/ready", admin(*id))).await;
        assert_eq!(code, 200, "member {id}: {body}");
    }
    let (code, text) = http(format!("{}/metrics", admin(leader))).await;
    assert_eq!(code, 200);
    let joins = format!(
        "quorumkv_ctrler_requests_total{{group=\"0\",node=\"{leader}\",op=\"join\",result=\"ok\"}} 1"
    );
    assert!(text.contains(&joins), "no {joins} in\n{text}");
    assert!(text.contains(&format!(
        "quorumkv_ctrler_config_num{{group=\"0\",node=\"{leader}\"}} {num}"
    )));
    quorumkv_testkit::metrics::assert_families_documented(
        &text,
        quorumkv_testkit::metrics::Server::Controller,
    );

    // Roles, over real TLS: a node certificate (what the groups hold) queries but cannot
    // change the configuration; a client certificate neither. Nothing changes.
    for (who, tls) in [("node", &c.pki.node), ("client", &c.pki.client)] {
        let as_who = CtrlerClient::connect(c.addrs.values().cloned().collect(), tls.clone())
            .unwrap()
            .with_timeout(WAIT);
        assert_eq!(as_who.query(None).await.unwrap().num, num);
        match as_who.join(one(7)).await {
            Err(quorumkv_shardctrler_client::ClientError::PermissionDenied(m)) => assert!(
                m.contains("Join needs an admin certificate")
                    && m.contains(&format!("presented a {who} certificate")),
                "{m}"
            ),
            other => panic!("{who} joined: {other:?}"),
        }
        assert!(matches!(
            as_who.leave(vec![1]).await,
            Err(quorumkv_shardctrler_client::ClientError::PermissionDenied(
                _
            ))
        ));
        assert!(matches!(
            as_who.set_servers(1, vec!["x:1".into()]).await,
            Err(quorumkv_shardctrler_client::ClientError::PermissionDenied(
                _
            ))
        ));
    }
    assert_eq!(latest(&ck).await.num, num);

    let term = c.statuses()[&leader].term;
    let member = c.members.remove(&leader).unwrap();
    let start = Instant::now();
    let to = member.shutdown().await.expect("leadership handed over");
    assert!(start.elapsed() < Duration::from_secs(10));
    let st = c.statuses()[&to].clone();
    assert!(st.is_leader() && st.term == term + 1, "{st:?}");
    ck.join(one(2)).await.unwrap();
    assert_eq!(latest(&ck).await.num, num + 1);
}
