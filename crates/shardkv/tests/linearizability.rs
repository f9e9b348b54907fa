//! Histories recorded by concurrent clients while shards migrate, a group leader is killed and
//! restarted, and a leader is partitioned away, checked for linearizability key by key.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quorumkv_testkit::linearizability::{History, KvOp, DEFAULT_STEPS_PER_KEY};
use rand::{Rng, SeedableRng};
use support::{Cluster, Opts};

const KEYS: usize = 4;
const CLIENTS: u64 = 5;
/// Each client stops after this many operations even if not told to stop.
const MAX_OPS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_migration_crashes_and_partitions_are_linearizable() {
    let mut c = Cluster::start(
        3,
        Opts {
            snapshot_log_bytes: 32 * 1024,
        },
    )
    .await;
    let n = c.join(&[1]).await;
    c.wait_settled(&[1], n).await;

    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let base = c.client().with_timeout(Duration::from_secs(5));
    let mut workers = Vec::new();
    for client in 0..CLIENTS {
        let mut kv = base.fork();
        let (history, stop) = (history.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(client);
            for i in 0..MAX_OPS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("lin-{}", rng.gen_range(0..KEYS)).into_bytes();
                let token = format!("<{client}.{i}>").into_bytes();
                let op = match rng.gen_range(0..10) {
                    0..=3 => KvOp::Get,
                    4..=5 => KvOp::Put(token),
                    _ => KvOp::Append(token),
                };
                support::run_and_record(&mut kv, &history, client, key, op).await;
            }
        }));
    }

    // Migrations while the clients run.
    let n = c.join(&[2]).await;
    c.wait_settled(&[1, 2], n).await;
    // Kill and restart a group leader.
    let victim = c.leader(1).expect("group 1 has a leader");
    c.stop_member(1, victim).await;
    let n = c.join(&[3]).await;
    c.wait_settled(&[2, 3], n).await;
    c.restart_member(1, victim).await;
    // Partition group 2's leader from its followers for a while (its fault-net ids are
    // gid * 100 + member id).
    let l2 = c.leader(2).expect("group 2 has a leader");
    let ids: Vec<u64> = (1..=3).map(|i| 200 + i).collect();
    c.net.isolate(200 + l2, &ids);
    let n = c.leave(&[1]).await;
    // Let the partition bite under load: the majority elects another leader.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !c
        .running(2)
        .into_iter()
        .any(|id| id != l2 && c.status(2, id).is_leader())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "group 2's majority elected no leader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.net.heal();
    c.wait_settled(&[1, 2, 3], n).await;

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let ops = history.len();
    assert!(ops > 100, "too few operations recorded: {ops}");
    let verdict = history.check(DEFAULT_STEPS_PER_KEY);
    assert!(verdict.is_ok(), "{ops} operations: {verdict}");
    c.shutdown().await;
}
