//! The MIT 6.824 shardkv scenarios, adapted: a real controller and replica groups on loopback
//! over mutual TLS, faults through the test network. Every wait is bounded.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use quorumkv_common::shard_of;
use quorumkv_proto::shardkv as pb;
use quorumkv_shardkv_client::{KvClient, KvError};
use support::{Cluster, Opts, SHARDS};

fn key(i: usize) -> Vec<u8> {
    format!("key-{i}").into_bytes()
}

async fn put_all(kv: &mut KvClient, n: usize, tag: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut want = BTreeMap::new();
    for i in 0..n {
        let v = format!("{tag}{i}").into_bytes();
        kv.put(&key(i), &v).await.unwrap();
        want.insert(key(i), v);
    }
    want
}

async fn check_all(kv: &KvClient, want: &BTreeMap<Vec<u8>, Vec<u8>>) {
    for (k, v) in want {
        let got = kv.get(k).await.unwrap();
        assert_eq!(
            got.as_deref(),
            Some(&v[..]),
            "key {}",
            String::from_utf8_lossy(k)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_then_leave_keeps_every_key() {
    let c = Cluster::start(2, Opts::default()).await;
    let n = c.join(&[1]).await;
    c.wait_settled(&[1], n).await;
    let mut kv = c.client();
    let mut want = put_all(&mut kv, 30, "v").await;
    let n = c.join(&[2]).await;
    c.wait_settled(&[1, 2], n).await;
    for (k, v) in want.iter_mut() {
        kv.append(k, b"+").await.unwrap();
        v.push(b'+');
    }
    let n = c.leave(&[1]).await;
    c.wait_settled(&[1, 2], n).await;
    check_all(&kv, &want).await;
    assert!(
        c.state(1, 1, |s| s.shards().is_empty()),
        "group 1 still holds shards after leaving"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_shards_a_down_group_fails_only_its_own_keys() {
    let mut c = Cluster::start(2, Opts::default()).await;
    let n = c.join(&[1, 2]).await;
    c.wait_settled(&[1, 2], n).await;
    let mut kv = c.client();
    let want = put_all(&mut kv, 20, "v").await;
    c.stop_group(2).await;
    let config = c.state(1, 1, |s| s.config().clone());
    let quick = c.client().with_timeout(Duration::from_millis(1500));
    let (mut ok, mut failed) = (0, 0);
    for (k, v) in &want {
        let gid = config.shards[shard_of(k, SHARDS)];
        match quick.get(k).await {
            Ok(got) => {
                assert_eq!(gid, 1, "a key of the stopped group was served");
                assert_eq!(got.as_deref(), Some(&v[..]));
                ok += 1;
            }
            Err(KvError::Timeout { .. }) => {
                assert_eq!(gid, 2, "a key of the live group failed");
                failed += 1;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(ok > 0 && failed > 0, "ok {ok}, failed {failed}");
    c.restart_group(2).await;
    check_all(&kv, &want).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_bound_the_log_and_survive_a_full_restart() {
    let mut c = Cluster::start(
        2,
        Opts {
            snapshot_log_bytes: 4096,
        },
    )
    .await;
    let n = c.join(&[1, 2]).await;
    c.wait_settled(&[1, 2], n).await;
    let mut kv = c.client();
    let mut want = put_all(&mut kv, 10, "v").await;
    for round in 0..20 {
        for (k, v) in want.iter_mut() {
            let add = format!(".{round}");
            kv.append(k, add.as_bytes()).await.unwrap();
            v.extend_from_slice(add.as_bytes());
        }
    }
    for gid in [1, 2] {
        let l = c.leader(gid).unwrap();
        let st = c.status(gid, l);
        assert!(
            st.snapshot_index > 0,
            "group {gid} never snapshotted: {st:?}"
        );
        assert!(
            st.last_index - st.first_index < 200,
            "group {gid}'s log is not bounded: {st:?}"
        );
    }
    c.stop_group(1).await;
    c.stop_group(2).await;
    c.restart_group(1).await;
    c.restart_group(2).await;
    check_all(&kv, &want).await;
    c.shutdown().await;
}

/// Waits until member `id` has applied what the leader has, then returns both members' full
/// states (as snapshot bytes).
async fn converged_states(c: &Cluster, gid: u64, id: u64) -> (Vec<u8>, Vec<u8>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let leader = c.leader(gid).expect("a leader");
        let want = c.status(gid, leader).applied_index;
        if c.status(gid, id).applied_index == want {
            let a = c.state(gid, leader, |s| s.snapshot_bytes());
            let b = c.state(gid, id, |s| s.snapshot_bytes());
            if c.status(gid, leader).applied_index == want {
                return (a, b);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "member {id} of group {gid} did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_members_resume_from_their_shard_store_and_one_that_lost_it_refuses_to_start() {
    let mut c = Cluster::start(
        1,
        Opts {
            snapshot_log_bytes: 4096,
        },
    )
    .await;
    let n = c.join(&[1]).await;
    c.wait_settled(&[1], n).await;
    let mut kv = c.client();
    let mut want = put_all(&mut kv, 10, "v").await;
    let mut round = 0;
    let mut more = |kv: &mut KvClient, want: &mut BTreeMap<Vec<u8>, Vec<u8>>| {
        round += 1;
        let add = format!(".{round}");
        let mut kv = kv.fork();
        let keys: Vec<Vec<u8>> = want.keys().cloned().collect();
        for k in &keys {
            want.get_mut(k).unwrap().extend_from_slice(add.as_bytes());
        }
        async move {
            for k in keys {
                kv.append(&k, add.as_bytes()).await.unwrap();
            }
        }
    };
    for _ in 0..10 {
        more(&mut kv, &mut want).await;
    }
    let leader = c.leader(1).unwrap();
    let (normal, lost) = if leader == 1 {
        (2, 3)
    } else {
        (1, if leader == 2 { 3 } else { 2 })
    };
    // One member keeps its shard store (it re-applies only the log after it). The other
    // loses it: the log was compacted behind the synced store, so nothing on this member can
    // rebuild it, and it refuses to start (saying what to do) rather than serve an empty
    // state; with its store back (from a copy) it resumes. One at a time, so that the group
    // keeps a majority and takes writes meanwhile.
    for (id, lose_store) in [(normal, false), (lost, true)] {
        c.stop_member(1, id).await;
        for _ in 0..3 {
            more(&mut kv, &mut want).await;
        }
        if lose_store {
            let store = c.member_dir(1, id).join(quorumkv_shardkv::node::STORE_DIR);
            assert!(store.is_dir(), "no shard store at {}", store.display());
            let aside = c.member_dir(1, id).join("kv.copy");
            copy_dir(&store, &aside);
            std::fs::remove_dir_all(&store).unwrap();
            let Err(err) = c.try_restart_member(1, id).await else {
                panic!("member {id} started without its store");
            };
            let msg = format!("{err}");
            assert!(msg.contains("re-add this member"), "{msg}");
            std::fs::remove_dir_all(&store).unwrap();
            std::fs::rename(&aside, &store).unwrap();
        }
        c.restart_member(1, id).await;
        let (a, b) = converged_states(&c, 1, id).await;
        assert!(a == b, "member {id}'s state differs from the leader's");
    }
    // Every write applied exactly once, with the old leader out of the way.
    c.stop_member(1, leader).await;
    check_all(&kv, &want).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_down_across_configuration_changes_catches_up() {
    let mut c = Cluster::start(3, Opts::default()).await;
    let n = c.join(&[1]).await;
    c.wait_settled(&[1], n).await;
    let mut kv = c.client();
    let want = put_all(&mut kv, 20, "v").await;
    c.stop_member(1, 3).await;
    let n = c.join(&[2]).await;
    c.wait_settled(&[1, 2], n).await;
    let n = c.join(&[3]).await;
    c.wait_settled(&[1, 2, 3], n).await;
    let n = c.leave(&[2]).await;
    c.wait_settled(&[1, 2, 3], n).await;
    c.restart_member(1, 3).await;
    c.wait_settled(&[1], n).await;
    // The restarted member holds exactly what its group holds.
    let leader = c.leader(1).unwrap();
    let view = |s: &quorumkv_shardkv::ShardKvState| {
        (
            s.config().num,
            s.shards().keys().copied().collect::<Vec<_>>(),
        )
    };
    assert_eq!(c.state(1, leader, view), c.state(1, 3, view));
    check_all(&kv, &want).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_during_joins_leaves_and_restarts() {
    let mut c = Cluster::start(
        3,
        Opts {
            snapshot_log_bytes: 16 * 1024,
        },
    )
    .await;
    let n = c.join(&[1]).await;
    c.wait_settled(&[1], n).await;
    let base = c.client();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4u32 {
        let mut kv = base.fork();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let k = format!("worker-{w}").into_bytes();
            let mut expect = Vec::new();
            // Bounded: at most 400 appends, or until told to stop.
            for i in 0..400u32 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let piece = format!("[{w}.{i}]");
                kv.append(&k, piece.as_bytes()).await.expect("append");
                expect.extend_from_slice(piece.as_bytes());
            }
            (k, expect)
        }));
    }
    let n = c.join(&[2]).await;
    c.wait_settled(&[1, 2], n).await;
    let victim = c.leader(1).unwrap();
    c.stop_member(1, victim).await;
    let n = c.join(&[3]).await;
    c.wait_settled(&[2, 3], n).await;
    c.restart_member(1, victim).await;
    let n = c.leave(&[2]).await;
    c.wait_settled(&[1, 2, 3], n).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let kv = c.client();
    for w in workers {
        let (k, expect) = w.await.unwrap();
        let got = kv.get(&k).await.unwrap().unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expect),
            "every acknowledged append exactly once, in order"
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreliable_network_during_migrations() {
    let c = Cluster::start(
        2,
        Opts {
            snapshot_log_bytes: 16 * 1024,
        },
    )
    .await;
    let n = c.join(&[1]).await;
    c.wait_settled(&[1], n).await;
    c.net.set_unreliable(0.1, Duration::from_millis(10));
    let mut kv = c.client();
    let mut want = put_all(&mut kv, 20, "v").await;
    let n = c.join(&[2]).await;
    for (k, v) in want.iter_mut() {
        kv.append(k, b"!").await.unwrap();
        v.push(b'!');
    }
    c.wait_settled(&[1, 2], n).await;
    let n = c.leave(&[1]).await;
    c.wait_settled(&[1, 2], n).await;
    assert!(c.net.dropped() > 0, "the network dropped nothing");
    check_all(&kv, &want).await;
    c.net.heal();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrated_shards_are_deleted_so_storage_stays_bounded() {
    let c = Cluster::start(2, Opts::default()).await;
    let n = c.join(&[1]).await;
    c.wait_settled(&[1], n).await;
    let mut kv = c.client();
    let mut live = 0u64;
    for i in 0..20 {
        let v = vec![b'x'; 1000];
        kv.put(&key(i), &v).await.unwrap();
        live += (key(i).len() + v.len()) as u64;
    }
    for round in 0..3 {
        let n = c.join(&[2]).await;
        c.wait_settled(&[1, 2], n).await;
        let n = c.leave(&[if round % 2 == 0 { 1 } else { 2 }]).await;
        c.wait_settled(&[1, 2], n).await;
        let n = c.join(&[if round % 2 == 0 { 1 } else { 2 }]).await;
        c.wait_settled(&[1, 2], n).await;
        let n = c.leave(&[2]).await;
        c.wait_settled(&[1, 2], n).await;
    }
    assert_eq!(c.stored_bytes(), live, "migrated shards leaked storage");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unaffected_shards_keep_serving_while_others_cannot_move() {
    let mut c = Cluster::start(2, Opts::default()).await;
    let n = c.join(&[1]).await;
    c.wait_settled(&[1], n).await;
    let mut kv = c.client();
    let want = put_all(&mut kv, 30, "v").await;
    let n = c.join(&[2]).await;
    c.wait_settled(&[1, 2], n).await;
    // Read before the leave: group 2 moves on to the next configuration within a poll.
    let before = c.state(2, 1, |s| s.config().clone());
    // Group 1 dies, then leaves: its shards can never be pulled by group 2.
    c.stop_group(1).await;
    let n = c.leave(&[1]).await;
    let config = c.ctrler().query(Some(n)).await.unwrap();
    let mut quick = c.client().with_timeout(Duration::from_secs(3));
    let mut served = 0;
    for (k, v) in &want {
        let shard = shard_of(k, SHARDS);
        assert_eq!(config.shards[shard], 2);
        if before.shards[shard] == 2 {
            // Unaffected: group 2 owned it before; it must keep serving it.
            assert_eq!(quick.get(k).await.unwrap().as_deref(), Some(&v[..]));
            quick.append(k, b"#").await.unwrap();
            served += 1;
        }
    }
    assert!(served > 0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrived_shards_are_served_while_others_are_missing() {
    let mut c = Cluster::start(3, Opts::default()).await;
    let n = c.join(&[1, 2, 3]).await;
    c.wait_settled(&[1, 2, 3], n).await;
    let mut kv = c.client();
    let want = put_all(&mut kv, 40, "v").await;
    let before = c.state(3, 1, |s| s.config().clone());
    // Group 2 dies; then group 1 leaves: its shards go to groups 2 (dead) and 3.
    c.stop_group(2).await;
    let n = c.leave(&[1]).await;
    let after = c.ctrler().query(Some(n)).await.unwrap();
    let quick = c.client().with_timeout(Duration::from_secs(10));
    let mut served = 0;
    for (k, v) in &want {
        let shard = shard_of(k, SHARDS);
        if before.shards[shard] == 1 && after.shards[shard] == 3 {
            // Partial: moved from a live group to a live group; served once arrived even
            // though the shards moving to group 2 never arrive.
            assert_eq!(quick.get(k).await.unwrap().as_deref(), Some(&v[..]));
            served += 1;
        }
    }
    assert!(served > 0, "no key moved from group 1 to group 3");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_deletes_and_exactly_once() {
    let c = Cluster::start(1, Opts::default()).await;
    let n = c.join(&[1]).await;
    c.wait_settled(&[1], n).await;
    let mut kv = c.client();
    kv.put(b"a", b"1").await.unwrap();
    kv.delete(b"a").await.unwrap();
    assert_eq!(kv.get(b"a").await.unwrap(), None);
    kv.delete(b"never-existed").await.unwrap();
    assert!(matches!(
        kv.put(&vec![b'k'; 4097], b"v").await,
        Err(KvError::InvalidArgument(_))
    ));
    assert!(matches!(
        kv.put(b"big", &vec![0u8; 1024 * 1024 + 1]).await,
        Err(KvError::InvalidArgument(_))
    ));
    // Binary keys and values.
    kv.put(&[0, 255, 10], &[1, 0, 2]).await.unwrap();
    assert_eq!(
        kv.get(&[0, 255, 10]).await.unwrap().as_deref(),
        Some(&[1, 0, 2][..])
    );

    // The same request id twice: applied once.
    let leader = c.leader(1).unwrap();
    let addr = c.group_servers(1)[(leader - 1) as usize].clone();
    let groups = quorumkv_shardkv_client::GroupCaller::new(c.pki.client.clone());
    let mut raw = groups.client(&addr).unwrap();
    let req = pb::PutRequest {
        key: bytes::Bytes::from_static(b"once"),
        value: bytes::Bytes::from_static(b"x"),
        id: Some(pb::RequestId {
            client_id: 4242,
            seq: 1,
        }),
        config_num: n,
    };
    raw.append(req.clone()).await.unwrap();
    raw.append(req.clone()).await.unwrap();
    assert_eq!(kv.get(b"once").await.unwrap().as_deref(), Some(&b"x"[..]));
    // An empty key is refused by the server too, for clients that skip the library's check.
    let empty = pb::PutRequest {
        key: bytes::Bytes::new(),
        ..req
    };
    let refused = raw.put(empty).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("the key is empty"),
        "{refused:?}"
    );
    assert!(matches!(
        kv.get(b"").await,
        Err(KvError::InvalidArgument(_))
    ));
    // Roles, over real TLS: the group-to-group calls take node certificates only; a client or
    // admin certificate is refused before the service runs, and nothing is deleted.
    for (who, tls) in [("client", &c.pki.client), ("admin", &c.pki.admin)] {
        let mut other = quorumkv_shardkv_client::GroupCaller::new(tls.clone())
            .client(&addr)
            .unwrap();
        let pull = other
            .pull_shard(pb::PullShardRequest {
                config_num: n,
                shard: 0,
                after_key: None,
                max_bytes: 1024,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            pull.code(),
            tonic::Code::PermissionDenied,
            "{who}: {pull:?}"
        );
        assert!(
            pull.message()
                .contains("PullShard needs a node certificate")
                && pull
                    .message()
                    .contains(&format!("presented a {who} certificate")),
            "{pull:?}"
        );
        let delete = other
            .delete_shard(pb::DeleteShardRequest {
                config_num: n,
                shard: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(
            delete.code(),
            tonic::Code::PermissionDenied,
            "{who}: {delete:?}"
        );
    }
    assert_eq!(kv.get(b"once").await.unwrap().as_deref(), Some(&b"x"[..]));
    c.shutdown().await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_retried_after_a_timeout_is_applied_once() {
    // Defect: every call took a fresh sequence number, so a client that retried a write that
    // timed out but had in fact been applied applied it twice.
    let c = Cluster::start(1, Opts::default()).await;
    let n = c.join(&[1]).await;
    c.wait_settled(&[1], n).await;
    let reader = c.client();
    // Group 1's members on the fault network (gid * 100 + id).
    let ids: Vec<u64> = (101..=103).collect();
    for attempt in 0..10 {
        let key = format!("once-{attempt}");
        // The first put (configuration lookup included) may take its time on a loaded
        // machine; only the append must time out.
        let mut kv = c.client();
        kv.put(key.as_bytes(), b"").await.unwrap();
        kv.set_timeout(Duration::from_millis(100));
        // The leader is cut off for less than an election timeout: the append cannot commit
        // before the client gives up, and commits once the leader is back.
        let leader = c.leader(1).unwrap();
        c.net.isolate(100 + leader, &ids);
        let r = kv.append(key.as_bytes(), b"x").await;
        c.net.heal();
        if !matches!(r, Err(KvError::Timeout { .. })) {
            continue;
        }
        assert!(
            kv.unfinished().is_some(),
            "the timed-out write was not kept"
        );
        let applied = async {
            loop {
                if reader.get(key.as_bytes()).await.unwrap().as_deref() == Some(&b"x"[..]) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), applied)
            .await
            .is_err()
        {
            continue; // A new leader dropped it: nothing to show on this attempt.
        }
        // The caller retries the same write on the same client, as the docs say.
        kv.set_timeout(Duration::from_secs(10));
        kv.append(key.as_bytes(), b"x").await.unwrap();
        assert!(kv.unfinished().is_none());
        assert_eq!(
            reader.get(key.as_bytes()).await.unwrap().as_deref(),
            Some(&b"x"[..]),
            "the retried append was applied twice"
        );
        // A different write abandons nothing that matters here and gets its own number.
        kv.append(key.as_bytes(), b"y").await.unwrap();
        assert_eq!(
            reader.get(key.as_bytes()).await.unwrap().as_deref(),
            Some(&b"xy"[..])
        );
        c.shutdown().await;
        return;
    }
    panic!("no attempt produced a write that timed out and was applied");
}
