//! `shardkv-client backup` and `restore` against the real binaries over mutual TLS: a backup
//! of a cluster of two groups taken while clients keep writing, the cluster then lost, and the
//! backup restored into a new cluster on other ports; every key acknowledged before the backup
//! began comes back with its value, and a key written during the backup comes back with its
//! value or not at all. Damaged files (a flipped byte, a cut-off file) and a cluster of another
//! shard count are refused with exit status 1 and nothing is restored. `ExportShard` itself:
//! an admin's call only, answered by the owning group's leader (WrongGroup from the leader of
//! another group, NotLeader with that leader's address from its followers).

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorumkv_common::rpc::{ErrorKind, RpcError};
use quorumkv_common::TlsFiles;
use quorumkv_proto::shardkv as pb;
use quorumkv_shardkv_client::{GroupCaller, KvClient};
use support::{
    json, ok, one_line_error, three_member_groups, wait_for, ProcCluster, CTRL_CLIENT, KV_CLIENT,
};

const SHARDS: usize = 8;
const WAIT: Duration = Duration::from_secs(30);

/// Starts the controller and `gids` (three members each) and joins the groups; waits until
/// every shard is served.
fn cluster(gids: &[u64], shards: usize) -> ProcCluster {
    let mut c = ProcCluster::new(&three_member_groups(gids), shards, "warn");
    for n in c.nodes() {
        c.start(n, &[1, 2, 3], false);
    }
    if gids.is_empty() {
        return c;
    }
    let groups: Vec<String> = gids
        .iter()
        .map(|g| format!("{g}={}", c.addrs(*g, &[1, 2, 3]).join(",")))
        .collect();
    let mut args = vec!["--timeout", "30", "join"];
    args.extend(groups.iter().map(String::as_str));
    ok(&c.run(CTRL_CLIENT, &args));
    c.wait_every_shard_serving(shards, WAIT);
    c
}

fn tls(c: &ProcCluster, name: &str) -> TlsFiles {
    TlsFiles {
        ca: support::cert(c.dir.path(), "ca.pem"),
        cert: support::cert(c.dir.path(), &format!("{name}.pem")),
        key: support::cert(c.dir.path(), &format!("{name}-key.pem")),
    }
}

fn client(c: &ProcCluster) -> KvClient {
    KvClient::connect(c.addrs(0, &[1, 2, 3]), tls(c, "admin").load().unwrap())
        .unwrap()
        .with_timeout(Duration::from_secs(10))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_backup_under_load_restores_into_a_new_cluster_and_damaged_files_are_refused() {
    let started = Instant::now();
    let rt = runtime();
    let a = cluster(&[1, 2], SHARDS);
    let kv = client(&a);

    // Acknowledged before the backup: 300 keys over every shard, some overwritten and some
    // deleted, a binary value and an empty one among them.
    let mut acked: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    rt.block_on(async {
        let mut w = kv.fork();
        for i in 0..300 {
            let (k, v) = (format!("before:{i}"), format!("value {i}"));
            w.put(k.as_bytes(), v.as_bytes()).await.unwrap();
            acked.insert(k.into_bytes(), Some(v.into_bytes()));
        }
        for i in (0..300).step_by(7) {
            let k = format!("before:{i}");
            w.put(k.as_bytes(), b"overwritten").await.unwrap();
            acked.insert(k.into_bytes(), Some(b"overwritten".to_vec()));
        }
        for i in (3..300).step_by(11) {
            let k = format!("before:{i}");
            w.delete(k.as_bytes()).await.unwrap();
            acked.insert(k.into_bytes(), None);
        }
        let binary: Vec<u8> = (0..=255).collect();
        w.put(b"before:binary", &binary).await.unwrap();
        acked.insert(b"before:binary".to_vec(), Some(binary));
        w.put(b"before:empty", b"").await.unwrap();
        acked.insert(b"before:empty".to_vec(), Some(Vec::new()));
    });

    // Writers keep going while the backup runs: new keys, and overwrites of keys of their own.
    let stop = Arc::new(AtomicBool::new(false));
    let during: Arc<Mutex<BTreeMap<String, Vec<String>>>> = Default::default();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, during, mut c) = (stop.clone(), during.clone(), kv.fork());
            rt.spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("during:{w}:{}", n % 50);
                    let value = format!("{w}.{n}");
                    // Every value sent is remembered, acknowledged or not (a timed-out write
                    // may be applied).
                    during
                        .lock()
                        .unwrap()
                        .entry(key.clone())
                        .or_default()
                        .push(value.clone());
                    let _ = c.put(key.as_bytes(), value.as_bytes()).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    // A backup by a client certificate is refused, and leaves no file.
    let file = a.dir.path().join("backups").join("cluster.qkvb");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let refused = a.run_as(
        "client",
        KV_CLIENT,
        &["backup", "--out", file.to_str().unwrap()],
    );
    let err = one_line_error(&refused, 1);
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains("admin"), "{err}");
    assert_eq!(
        std::fs::read_dir(file.parent().unwrap()).unwrap().count(),
        0
    );

    let backup = a.run(
        KV_CLIENT,
        &["--json", "backup", "--out", file.to_str().unwrap()],
    );
    let summary = json(&backup);
    let progress = String::from_utf8_lossy(&backup.stderr).to_string();
    stop.store(true, Ordering::Relaxed);
    let written: u64 = writers.into_iter().map(|h| rt.block_on(h).unwrap()).sum();
    assert!(backup.status.success(), "{progress}");
    eprintln!("{progress}{summary}");
    assert!(written > 0, "the writers wrote nothing during the backup");
    assert_eq!(summary["shards"], SHARDS as u64, "{summary}");
    assert_eq!(summary["file"], file.to_str().unwrap());
    let present = acked.values().filter(|v| v.is_some()).count() as u64;
    let keys = summary["keys"].as_u64().unwrap();
    assert!(
        keys >= present,
        "{keys} keys, {present} acknowledged: {summary}"
    );
    assert!(summary["config"].as_u64().unwrap() >= 1, "{summary}");
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(
        size > summary["bytes"].as_u64().unwrap(),
        "{size} bytes: {summary}"
    );
    for shard in 1..=SHARDS {
        assert!(
            progress.contains(&format!("shard {shard}/{SHARDS}: ")),
            "{progress}"
        );
    }
    // Only the finished file is left beside it.
    assert_eq!(
        std::fs::read_dir(file.parent().unwrap()).unwrap().count(),
        1
    );
    // In text, the summary is one line on stdout.
    let second = file.with_file_name("second.qkvb");
    let text = ok(&a.run(KV_CLIENT, &["backup", "--out", second.to_str().unwrap()]));
    eprintln!("{text}");
    assert!(
        text.starts_with(&format!("backup: {SHARDS} shards, ")),
        "{text}"
    );
    assert!(
        text.ends_with(&format!(" written to {}\n", second.display())),
        "{text}"
    );
    let err = one_line_error(
        &a.run(KV_CLIENT, &["backup", "--out", "/no/such/dir/b.qkvb"]),
        1,
    );
    assert!(
        err.contains("the directory /no/such/dir does not exist"),
        "{err}"
    );

    // The disaster: the whole first cluster is gone. A new one, on other ports, with one group.
    let backups = tempfile::tempdir().unwrap();
    let kept = backups.path().join("cluster.qkvb");
    std::fs::copy(&file, &kept).unwrap();
    let during = during.lock().unwrap().clone();
    drop(kv);
    drop(a);
    let b = cluster(&[1], SHARDS);

    // Damaged copies are refused before anything is written.
    let good = std::fs::read(&kept).unwrap();
    let flipped = backups.path().join("flipped.qkvb");
    let mut bytes = good.clone();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&flipped, &bytes).unwrap();
    let err = one_line_error(
        &b.run(KV_CLIENT, &["restore", flipped.to_str().unwrap()]),
        1,
    );
    assert!(
        err.contains("damaged backup") && err.contains("checksum"),
        "{err}"
    );
    assert!(err.contains("nothing was restored"), "{err}");
    let cut = backups.path().join("cut.qkvb");
    std::fs::write(&cut, &good[..good.len() - 10]).unwrap();
    let err = one_line_error(&b.run(KV_CLIENT, &["restore", cut.to_str().unwrap()]), 1);
    assert!(err.contains("damaged backup: truncated"), "{err}");
    let err = one_line_error(&b.run(KV_CLIENT, &["restore", "/no/such/backup"]), 1);
    assert!(err.contains("cannot open /no/such/backup"), "{err}");
    let kv_b = client(&b);
    let probe = rt.block_on(kv_b.get(b"before:1")).unwrap();
    assert_eq!(probe, None, "a refused restore wrote something");

    let restored = b.run(KV_CLIENT, &["--json", "restore", kept.to_str().unwrap()]);
    let report = json(&restored);
    assert!(restored.status.success(), "{restored:?}");
    assert_eq!(report["shards"], SHARDS as u64, "{report}");
    assert_eq!(report["keys"], keys, "{report}");
    let text = String::from_utf8_lossy(&restored.stderr);
    assert!(
        text.contains(&format!("shard {SHARDS}/{SHARDS}: ")),
        "{text}"
    );

    // Every key acknowledged before the backup: its value, or absent if it was deleted.
    rt.block_on(async {
        for (k, v) in &acked {
            let got = kv_b.get(k).await.unwrap().map(|b| b.to_vec());
            assert_eq!(&got, v, "{}", String::from_utf8_lossy(k));
        }
        // Keys written during the backup: absent, or one of the values sent.
        let mut found = 0;
        for (k, sent) in &during {
            if let Some(v) = kv_b.get(k.as_bytes()).await.unwrap() {
                let v = String::from_utf8(v.to_vec()).unwrap();
                assert!(sent.contains(&v), "{k} = {v:?}, never written");
                found += 1;
            }
        }
        eprintln!(
            "{found} of {} keys written during the backup are in it",
            during.len()
        );
    });

    // Restoring again is safe: the same keys, the same values.
    let again = ok(&b.run(KV_CLIENT, &["restore", kept.to_str().unwrap()]));
    eprintln!("{again}");
    assert!(
        again.starts_with(&format!("restored {SHARDS} shards, ")),
        "{again}"
    );

    assert!(
        started.elapsed() < Duration::from_secs(100),
        "{:?}",
        started.elapsed()
    );
}

/// A backup of another shard count, or into a cluster without replica groups, is refused
/// before anything is written; so is a file that is not a backup.
#[test]
fn a_backup_of_another_shard_count_or_without_groups_to_restore_into_is_refused() {
    use quorumkv_proto::backup as bpb;
    use quorumkv_shardkv_client::backup::{BackupWriter, FORMAT};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("small.qkvb");
    let mut w = BackupWriter::create(
        &file,
        bpb::BackupHeader {
            format: FORMAT,
            num_shards: SHARDS as u64,
            config: None,
            created_ms: 1,
        },
    )
    .unwrap();
    for shard in 0..SHARDS as u64 {
        w.begin_shard(bpb::ShardBegin {
            shard,
            ..Default::default()
        })
        .unwrap();
        w.entries(vec![pb::KeyValue {
            key: format!("k{shard}").into(),
            value: "v".into(),
        }])
        .unwrap();
        w.end_shard().unwrap();
    }
    w.finish().unwrap();

    // Two controllers without groups: of another shard count, and of the same.
    let mut other = ProcCluster::new(&three_member_groups(&[]), SHARDS * 2, "warn");
    let mut same = ProcCluster::new(&three_member_groups(&[]), SHARDS, "warn");
    for n in other.nodes() {
        other.start(n, &[1, 2, 3], false);
        same.start(n, &[1, 2, 3], false);
    }
    for c in [&other, &same] {
        wait_for("the controller serving", WAIT, || {
            c.run(CTRL_CLIENT, &["--timeout", "2", "query"])
                .status
                .success()
                .then_some(())
        });
    }
    let err = one_line_error(
        &other.run(KV_CLIENT, &["restore", file.to_str().unwrap()]),
        1,
    );
    assert!(
        err.contains(&format!(
            "holds a cluster of {SHARDS} shards, but this cluster has {}",
            SHARDS * 2
        )),
        "{err}"
    );
    assert!(err.contains("nothing was restored"), "{err}");
    let err = one_line_error(
        &same.run(KV_CLIENT, &["restore", file.to_str().unwrap()]),
        1,
    );
    assert!(err.contains("join the groups first"), "{err}");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a backup\n").unwrap();
    let err = one_line_error(
        &same.run(KV_CLIENT, &["restore", text.to_str().unwrap()]),
        1,
    );
    assert!(err.contains("not a QuorumKV backup"), "{err}");
    // And `backup` has nothing to copy without groups.
    let err = one_line_error(
        &same.run(
            KV_CLIENT,
            &["backup", "--out", dir.path().join("b").to_str().unwrap()],
        ),
        1,
    );
    assert!(err.contains("nothing to back up"), "{err}");
}

/// `ExportShard` is answered only by the leader of the shard's owner: another group's leader
/// says WrongGroup, its followers NotLeader with the leader's address.
#[test]
fn export_shard_is_refused_by_other_groups_and_followers() {
    let rt = runtime();
    // Channels are made inside the runtime.
    let _entered = rt.enter();
    let c = cluster(&[1, 2], SHARDS);
    // A migration on a loaded machine may take more than the default 10 s.
    let kv = client(&c).with_timeout(WAIT);
    let config = rt.block_on(kv.refresh_config()).unwrap();
    let shard = config.shards.iter().position(|g| *g == 2).unwrap() as u64;
    let caller = GroupCaller::new(tls(&c, "admin").load().unwrap());
    let answers = wait_for("a leader in group 1", WAIT, || {
        let answers: Vec<(String, ErrorKind)> = c
            .addrs(1, &[1, 2, 3])
            .into_iter()
            .map(|addr| {
                let mut member = caller.client(&addr).unwrap();
                let req = pb::ExportShardRequest {
                    shard,
                    max_bytes: 1024,
                };
                let err = rt
                    .block_on(member.export_shard(req))
                    .map(|_| ())
                    .expect_err("group 1 does not own the shard");
                (addr, RpcError::from_status(&err).kind)
            })
            .collect();
        // Settled: one leader, and both followers know it (until then, an election or a
        // follower that has not heard from the leader yet answers otherwise).
        let mut leaders = answers.iter().filter(|(_, k)| *k == ErrorKind::WrongGroup);
        let leader = leaders.next()?.0.clone();
        let settled = leaders.next().is_none()
            && answers.iter().all(|(addr, kind)| {
                *addr == leader
                    || *kind
                        == ErrorKind::NotLeader {
                            leader: Some(leader.clone()),
                        }
            });
        if !settled {
            eprintln!("not settled yet: {answers:?}");
        }
        settled.then_some(answers)
    });
    let wrong = answers
        .iter()
        .filter(|(_, k)| *k == ErrorKind::WrongGroup)
        .count();
    let hinted = answers
        .iter()
        .filter(|(_, k)| matches!(k, ErrorKind::NotLeader { leader: Some(_) }))
        .count();
    assert_eq!((wrong, hinted), (1, 2), "{answers:?}");
    // The owner's leader answers, also while the shard moves to the other group: a copy
    // refused by the old owner is asked of the new one.
    let keys: Vec<String> = (0..2000)
        .map(|i| format!("moving:{i}"))
        .filter(|k| quorumkv_common::shard_of(k.as_bytes(), SHARDS) as u64 == shard)
        .take(40)
        .collect();
    rt.block_on(async {
        let mut w = kv.fork();
        for k in &keys {
            w.put(k.as_bytes(), b"v").await.unwrap();
        }
    });
    let mut begins = Vec::new();
    let (copied, moved) = std::thread::scope(|scope| {
        let mover = scope.spawn(|| {
            c.run(
                CTRL_CLIENT,
                &["--timeout", "20", "move", &shard.to_string(), "1"],
            )
        });
        let copied = rt.block_on(kv.export_shard(shard, |e| {
            if let quorumkv_shardkv_client::backup::ExportEvent::Begin { gid, .. } = e {
                begins.push(gid);
            }
            Ok(())
        }));
        (copied, mover.join().unwrap())
    });
    ok(&moved);
    let copied = copied.expect("the shard is exported from one of its owners");
    assert_eq!(copied, keys.len() as u64, "copies from groups {begins:?}");
    // Once group 2 has moved on to the new configuration, from the new owner. (Until then
    // group 2 still serves the shard in its configuration and its copy is as good: no other
    // group can take a write of the shard before group 2 hands it off.)
    wait_for("the copy from group 1", WAIT, || {
        let mut from = 0;
        let copied = rt
            .block_on(kv.export_shard(shard, |e| {
                if let quorumkv_shardkv_client::backup::ExportEvent::Begin { gid, .. } = e {
                    from = gid;
                }
                Ok(())
            }))
            .unwrap();
        assert_eq!(copied, keys.len() as u64);
        (from == 1).then_some(())
    });
    // An application's certificate is refused.
    let app = GroupCaller::new(tls(&c, "client").load().unwrap());
    let mut member = app.client(&c.addr((2, 1))).unwrap();
    let err = rt
        .block_on(member.export_shard(pb::ExportShardRequest {
            shard,
            max_bytes: 1024,
        }))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
}
