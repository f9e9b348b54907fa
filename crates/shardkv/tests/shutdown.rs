//! Graceful shutdown of a shardkv member under load: a stopping leader hands leadership to a
//! caught-up member (no election timeout), refuses new requests, lets in-flight ones finish,
//! and no acknowledged write is lost or applied twice. Every wait is bounded.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use support::{Cluster, Opts, WAIT};

/// What one writer had acknowledged: its puts (key -> value) and its appends to one key.
#[derive(Default)]
struct Acked {
    puts: BTreeMap<Vec<u8>, Vec<u8>>,
    log_key: Vec<u8>,
    log: Vec<u8>,
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn http(url: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || quorumkv_admin::get(&url, Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("GET failed: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_the_leader_hands_over_leadership_and_loses_no_acknowledged_write() {
    let mut c = Cluster::start(1, Opts::default()).await;
    let n = c.join(&[1]).await;
    c.wait_settled(&[1], n).await;
    wait_for("a leader of group 1", || c.leader(1).is_some()).await;
    let leader = c.leader(1).unwrap();
    for id in c.running(1) {
        let url = format!("{}/health/ready", c.admin_url(1, id));
        let deadline = Instant::now() + WAIT;
        loop {
            let (code, body) = http(url.clone()).await;
            if code == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "member {id} never ready: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // A small load: three writers, each putting fresh keys and appending to its own key.
    let stop = Arc::new(AtomicBool::new(false));
    let acked_ops = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..3u32 {
        let mut kv = c.client();
        let (stop, acked_ops, failures) = (stop.clone(), acked_ops.clone(), failures.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Acked {
                log_key: format!("log-{w}").into_bytes(),
                ..Acked::default()
            };
            let mut i = 0u32;
            while !stop.load(SeqCst) {
                i += 1;
                let (key, value) = (
                    format!("w{w}-{i}").into_bytes(),
                    format!("v{i}").into_bytes(),
                );
                match kv.put(&key, &value).await {
                    Ok(()) => {
                        acked.puts.insert(key, value);
                        acked_ops.fetch_add(1, SeqCst);
                    }
                    Err(e) => failures.lock().push(format!("put w{w}-{i}: {e}")),
                }
                let item = format!("{i};");
                match kv.append(&acked.log_key.clone(), item.as_bytes()).await {
                    Ok(()) => {
                        acked.log.extend_from_slice(item.as_bytes());
                        acked_ops.fetch_add(1, SeqCst);
                    }
                    Err(e) => failures.lock().push(format!("append log-{w} {i}: {e}")),
                }
            }
            acked
        }));
    }
    wait_for("load to start", || acked_ops.load(SeqCst) >= 30).await;

    let term_before = c.status(1, leader).term;
    let (handed_to, took) = c.shutdown_member(1, leader).await;
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    let to = handed_to.expect("the stopping leader handed leadership over");
    assert_ne!(to, leader);
    // Elected by transfer: the new leader leads the moment shutdown returns. An ordinary
    // election would need an election timeout (200-400 ms with the tests' 20 ms ticks) after
    // the old leader went silent, which is when shutdown returns at the earliest.
    let st = c.status(1, to);
    assert!(
        st.is_leader(),
        "member {to} does not lead after the hand-off: {st:?}"
    );
    assert_eq!(st.term, term_before + 1, "more than one election happened");

    let before = acked_ops.load(SeqCst);
    wait_for("load to go on after the hand-off", || {
        acked_ops.load(SeqCst) >= before + 30
    })
    .await;
    stop.store(true, SeqCst);
    let mut all = Vec::new();
    for w in writers {
        all.push(w.await.unwrap());
    }
    assert!(
        failures.lock().is_empty(),
        "operations failed beyond retries: {:?}",
        failures.lock()
    );

    // Every acknowledged write is there, every append exactly once and in order.
    let kv = c.client();
    for acked in &all {
        for (k, v) in &acked.puts {
            let got = kv.get(k).await.unwrap();
            assert_eq!(
                got.as_deref(),
                Some(&v[..]),
                "key {}",
                String::from_utf8_lossy(k)
            );
        }
        let log = kv.get(&acked.log_key).await.unwrap().unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&log),
            String::from_utf8_lossy(&acked.log),
            "appends to {}",
            String::from_utf8_lossy(&acked.log_key)
        );
    }

    // The new leader's metrics show the service-level families.
    let (code, text) = http(format!("{}/metrics", c.admin_url(1, to))).await;
    assert_eq!(code, 200);
    let labels = format!("group=\"1\",node=\"{to}\"");
    let ok_puts = format!("quorumkv_kv_requests_total{{{labels},op=\"put\",result=\"ok\"}} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&ok_puts))
        .expect(&ok_puts);
    assert!(!line.ends_with(" 0"), "{line}");
    assert!(text.contains(&format!("quorumkv_raft_role{{{labels},role=\"leader\"}} 1")));
    assert!(
        text.contains("state=\"serving\"} 1"),
        "no serving shard in\n{text}"
    );
    assert!(text.contains("# TYPE quorumkv_kv_request_duration_seconds histogram"));
    quorumkv_testkit::metrics::assert_families_documented(
        &text,
        quorumkv_testkit::metrics::Server::ShardKv,
    );

    // A follower stops at once and hands nothing over.
    let follower = c.running(1).into_iter().find(|id| *id != to).unwrap();
    let (handed_to, took) = c.shutdown_member(1, follower).await;
    assert_eq!(handed_to, None);
    assert!(
        took < Duration::from_secs(5),
        "follower shutdown took {took:?}"
    );
    c.shutdown().await;
}
