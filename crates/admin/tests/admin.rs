//! The admin endpoints of a real 3-member group (testkit's TLS cluster), over real HTTP on
//! 127.0.0.1, read with the crate's own dependency-free client. Every wait is bounded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorumkv_admin::{AdminServer, NodeSource};
use quorumkv_testkit::cluster::{ClusterOptions, TestCluster};

const WAIT: Duration = Duration::from_secs(20);

async fn http(url: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || quorumkv_admin::get(&url, Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("GET failed: {e}"))
}

/// Polls `url` until `pred` holds for the answer (bounded by `WAIT`).
async fn wait_http(url: &str, what: &str, pred: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, body) = http(url.to_string()).await;
        if pred(code, &body) {
            return (code, body);
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} at {url}; last answer {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {line_prefix} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_of_a_real_group_over_http() {
    let mut c = TestCluster::start(3, ClusterOptions::default()).await;
    let mut admin = BTreeMap::new();
    let mut base = BTreeMap::new();
    for id in c.ids() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = AdminServer::start(listener, Arc::new(NodeSource::new(c.node(id)))).unwrap();
        base.insert(id, format!("http://{}", server.local_addr()));
        admin.insert(id, server);
    }
    c.put("a", "1").await;
    assert_eq!(c.get("a").await.as_deref(), Some("1"));
    let leader = c.wait_leader(WAIT).await;
    let follower = c.ids().into_iter().find(|id| *id != leader).unwrap();

    // Alive and ready everywhere.
    for (id, url) in &base {
        let (code, body) = http(format!("{url}/health/alive")).await;
        assert_eq!(code, 200, "member {id}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "alive");
        assert!(v["uptime_secs"].is_u64(), "{body}");
        wait_http(&format!("{url}/health/ready"), "ready", |code, _| {
            code == 200
        })
        .await;
    }
    let probe_url = format!("{}/health/ready", base[&follower]);
    let probe = tokio::task::spawn_blocking(move || {
        quorumkv_admin::probe(&probe_url, Duration::from_secs(5))
    });
    assert_eq!(probe.await.unwrap(), Ok(200));

    // Metrics of the leader: role, indices, proposals, reads, peers.
    let (code, text) = http(format!("{}/metrics", base[&leader])).await;
    assert_eq!(code, 200);
    let l = format!("group=\"{}\",node=\"{leader}\"", c.group_id);
    assert_eq!(
        metric(&text, &format!("quorumkv_raft_role{{{l},role=\"leader\"}}")),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!("quorumkv_raft_role{{{l},role=\"follower\"}}")
        ),
        0.0
    );
    assert!(metric(&text, &format!("quorumkv_raft_applied_index{{{l}}}")) >= 2.0);
    assert_eq!(metric(&text, &format!("quorumkv_raft_voters{{{l}}}")), 3.0);
    assert!(metric(&text, &format!("quorumkv_raft_proposals_total{{{l}}}")) >= 1.0);
    assert!(
        metric(
            &text,
            &format!("quorumkv_raft_proposal_duration_seconds_count{{{l}}}")
        ) >= 1.0
    );
    assert!(
        metric(
            &text,
            &format!("quorumkv_raft_proposal_duration_seconds_bucket{{{l},le=\"+Inf\"}}")
        ) >= 1.0
    );
    assert!(metric(&text, &format!("quorumkv_raft_read_index_total{{{l}}}")) >= 1.0);
    assert!(
        metric(
            &text,
            &format!("quorumkv_raft_messages_sent_total{{{l},peer=\"{follower}\"}}")
        ) > 0.0
    );
    assert!(text.contains("# TYPE quorumkv_raft_read_index_duration_seconds histogram"));
    assert!(text.contains(&format!(
        "quorumkv_raft_messages_dropped_total{{{l},peer=\"{follower}\"}}"
    )));

    // A follower cut off from the group is alive but not ready (no quorum); the leader and
    // the other follower still form one and stay ready.
    let others: Vec<u64> = c.ids();
    c.net.isolate(follower, &others);
    let (_, body) = wait_http(
        &format!("{}/health/ready", base[&follower]),
        "not ready (no quorum)",
        |code, _| code == 503,
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "not_ready", "{body}");
    assert_eq!(v["failed"], "no_quorum", "{body}");
    let probe_url = format!("{}/health/ready", base[&follower]);
    let probe = tokio::task::spawn_blocking(move || {
        quorumkv_admin::probe(&probe_url, Duration::from_secs(5))
    });
    assert_eq!(probe.await.unwrap(), Ok(503));
    let (code, body) = http(format!("{}/health/alive", base[&follower])).await;
    assert_eq!(code, 200, "liveness must not depend on quorum: {body}");
    let leader_now = c.wait_leader(WAIT).await;
    wait_http(
        &format!("{}/health/ready", base[&leader_now]),
        "leader ready",
        |code, _| code == 200,
    )
    .await;
    c.put("b", "2").await;

    // Healed, it catches up and is ready again.
    c.net.heal();
    wait_http(
        &format!("{}/health/ready", base[&follower]),
        "ready after heal",
        |code, _| code == 200,
    )
    .await;

    // A stopped driver is reported dead, with the reason.
    c.stop(follower).await;
    let (code, body) = http(format!("{}/health/alive", base[&follower])).await;
    assert_eq!(code, 500, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["reason"], "raft_driver_stopped", "{body}");
    let (code, _) = http(format!("{}/health/ready", base[&follower])).await;
    assert_eq!(code, 503);

    for (_, server) in admin {
        server.shutdown().await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_leader_cut_off_from_its_peers_reports_no_quorum() {
    let c = TestCluster::start(3, ClusterOptions::default()).await;
    let leader = c.wait_leader(WAIT).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = AdminServer::start(listener, Arc::new(NodeSource::new(c.node(leader)))).unwrap();
    let url = format!("http://{}/health/ready", server.local_addr());
    wait_http(&url, "ready", |code, _| code == 200).await;
    c.net.isolate(leader, &c.ids());
    let (_, body) = wait_http(&url, "no quorum", |code, _| code == 503).await;
    assert!(body.contains("\"failed\":\"no_quorum\""), "{body}");
    server.shutdown().await;
}
