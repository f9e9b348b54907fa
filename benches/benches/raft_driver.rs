//! Throughput of the raft driver: a 3-member group in one process, messages passed
//! mailbox-to-mailbox (no network, no TLS), real sled storage with honest fsync. Each
//! iteration proposes `batch` commands concurrently to the leader and waits until all are
//! applied there; criterion reports proposals/s per batch size. This is the baseline for
//! later performance work on batching.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use quorumkv_raft_core::{mailbox, NodeConfig, RaftNode};
use quorumkv_testkit::mem::MemNetwork;
use quorumkv_testkit::{KvCommand, KvStateMachine};

struct Group {
    nodes: Vec<Arc<RaftNode<KvStateMachine>>>,
    _dir: tempfile::TempDir,
}

fn start_group(rt: &tokio::runtime::Runtime) -> Group {
    let dir = tempfile::tempdir().unwrap();
    let net = MemNetwork::new();
    let members: Vec<(u64, String)> = (1..=3).map(|i| (i, format!("mem-{i}:1"))).collect();
    let mut nodes = Vec::new();
    let _guard = rt.enter();
    for id in 1..=3u64 {
        let (mb, inbox) = mailbox(65_536);
        let data_dir = dir.path().join(format!("n{id}"));
        net.register(id, mb.clone(), &data_dir);
        let mut cfg = NodeConfig::new(id, 1, data_dir);
        cfg.members = members.clone();
        cfg.tick_interval = Duration::from_millis(20);
        let transport = Arc::new(net.transport(id, mb.clone()));
        let node = RaftNode::start(cfg, KvStateMachine::default(), transport, mb, inbox).unwrap();
        nodes.push(Arc::new(node));
    }
    Group { nodes, _dir: dir }
}

fn leader(g: &Group, rt: &tokio::runtime::Runtime) -> Arc<RaftNode<KvStateMachine>> {
    rt.block_on(async {
        g.nodes[0]
            .wait_for(Duration::from_secs(10), |s| s.leader_id.is_some())
            .await
            .unwrap();
        let id = g.nodes[0].status().leader_id.unwrap();
        let l = g.nodes[(id - 1) as usize].clone();
        l.wait_for(Duration::from_secs(10), |s| s.is_leader())
            .await
            .unwrap();
        l
    })
}

fn proposals(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let group = start_group(&rt);
    let leader = leader(&group, &rt);
    let value = "x".repeat(100);
    let mut g = c.benchmark_group("raft_driver/propose");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for batch in [1usize, 16, 64, 256] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            let mut n = 0u64;
            b.iter(|| {
                rt.block_on(async {
                    let futs = (0..batch).map(|_| {
                        n += 1;
                        let cmd = KvCommand::Put {
                            key: format!("k{}", n % 1024),
                            value: value.clone(),
                        };
                        leader.propose(cmd.encode())
                    });
                    for r in futures::future::join_all(futs).await {
                        r.expect("proposal failed");
                    }
                })
            })
        });
    }
    g.finish();
    rt.block_on(async {
        for n in &group.nodes {
            n.shutdown().await;
        }
    });
}

criterion_group!(benches, proposals);
criterion_main!(benches);
