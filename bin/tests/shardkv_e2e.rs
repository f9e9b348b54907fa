//! End to end with the real binaries over mutual TLS on loopback: a 3-member
//! `shardctrler-server` group and two 3-member `shardkv-server` groups as processes, joined with
//! `shardctrler-client`, used through `shardkv-client`; then load from library clients while the
//! leader of group 1 is SIGKILLed and restarted from its data directory. No acknowledged write
//! may be lost or applied twice. Every process is killed when the test ends, even when it fails.

mod support;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorumkv_common::TlsFiles;
use quorumkv_shardkv_client::{KvClient, KvError};
use support::{
    ok, one_line_error, wait_for, NodeId, ProcCluster, CTRL_CLIENT, KV_CLIENT, KV_SERVER,
};

const SHARDS: usize = 16;
const GIDS: [u64; 2] = [1, 2];
/// Bound of every wait for the cluster to reach a state.
const WAIT: Duration = Duration::from_secs(20);

/// The controller (group 0) and groups 1 and 2, three members each.
struct Cluster(ProcCluster);

impl std::ops::Deref for Cluster {
    type Target = ProcCluster;
    fn deref(&self) -> &ProcCluster {
        &self.0
    }
}

impl Cluster {
    fn new() -> Self {
        let mut nodes = Vec::new();
        for gid in std::iter::once(0).chain(GIDS) {
            for id in 1..=3 {
                nodes.push((gid, id));
            }
        }
        Cluster(ProcCluster::new(&nodes, SHARDS, "warn"))
    }

    /// `host:port,...` of `gid`'s members.
    fn addrs(&self, gid: u64) -> String {
        self.0.addrs(gid, &[1, 2, 3]).join(",")
    }

    /// Starts (or restarts, on the same port and data directory) one node.
    fn start(&mut self, n: NodeId) {
        self.0.start(n, &[1, 2, 3], false);
    }

    fn kill(&mut self, n: NodeId) {
        self.0.kill(n);
    }

    fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca: support::cert(self.dir.path(), "ca.pem"),
            cert: support::cert(self.dir.path(), "admin.pem"),
            key: support::cert(self.dir.path(), "admin-key.pem"),
        }
    }

    fn kv(&self, args: &[&str]) -> Output {
        self.run(KV_CLIENT, args)
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&ok(&self.kv(&["--timeout", "5", "--json", "status"]))).unwrap()
    }

    /// The group as `status --json` shows it.
    fn group_status(&self, gid: u64) -> serde_json::Value {
        self.status()["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["gid"] == gid)
            .cloned()
            .unwrap_or_else(|| panic!("group {gid} missing from status"))
    }
}

#[test]
fn cli_and_library_clients_lose_no_acknowledged_write_when_a_leader_is_killed() {
    let started = Instant::now();
    quorumkv_common::tls::install_crypto_provider();
    let mut c = Cluster::new();
    let nodes = c.nodes();
    for n in nodes {
        c.start(n);
    }

    // Join both groups through the controller's CLI (it retries until the controller elects).
    let joined = ok(&c.run(
        CTRL_CLIENT,
        &[
            "--timeout",
            "20",
            "join",
            &format!("1={}", c.addrs(1)),
            &format!("2={}", c.addrs(2)),
        ],
    ));
    assert_eq!(joined.trim(), "configuration 1");

    // The KV CLI: writes print nothing; get prints the value; a missing key exits 1.
    let kv = |args: &[&str]| {
        let mut a = vec!["--timeout", "20"];
        a.extend_from_slice(args);
        c.kv(&a)
    };
    assert_eq!(ok(&kv(&["put", "fruit", "apple"])), "");
    assert_eq!(ok(&kv(&["get", "fruit"])), "apple\n");
    assert_eq!(ok(&kv(&["append", "fruit", " pie"])), "");
    assert_eq!(ok(&kv(&["get", "fruit"])), "apple pie\n");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&kv(&["--json", "get", "fruit"]))).unwrap();
    assert_eq!(json["value"], "apple pie");
    assert_eq!(ok(&kv(&["delete", "fruit"])), "");
    let missing = kv(&["get", "fruit"]);
    assert_eq!(one_line_error(&missing, 1), "not found");
    assert!(missing.stdout.is_empty());
    assert_eq!(ok(&kv(&["--hex", "put", "00ff", "0a00"])), "");
    assert_eq!(ok(&kv(&["get", "--hex", "00ff"])), "0a00\n");
    // A value of the full 1 MiB, which no command line can hold: from stdin, then from a file.
    let big: Vec<u8> = (0..quorumkv_shardkv_client::MAX_VALUE_BYTES)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let mut put = Command::new(KV_CLIENT)
        .arg("--ctrlers")
        .arg(c.addrs(0))
        .args(support::tls_args_as(c.dir.path(), "client"))
        .args(["--timeout", "20", "put", "big", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    put.stdin.take().unwrap().write_all(&big).unwrap();
    ok(&put.wait_with_output().unwrap());
    let got = ok(&c.run_as("client", KV_CLIENT, &["--timeout", "20", "get", "big"]));
    assert!(got.as_bytes()[..big.len()] == big[..], "1 MiB from stdin");
    let file = c.dir.path().join("value");
    std::fs::write(&file, &big[..1000]).unwrap();
    ok(&kv(&[
        "append",
        "small",
        "--value-file",
        file.to_str().unwrap(),
    ]));
    assert_eq!(ok(&kv(&["get", "small"])).len(), 1001);
    // Roles: the node certificate may not write; the refusal says why.
    let err = one_line_error(&c.run_as("node", KV_CLIENT, &["put", "x", "y"]), 1);
    assert!(
        err.contains(
            "permission denied: quorumkv.shardkv.ShardKv/Put needs a client or admin \
                      certificate; this connection presented a node certificate"
        ),
        "{err}"
    );
    // `bench --fill` loads every key of the key space once.
    let fill = ok(&kv(&[
        "--json",
        "bench",
        "--fill",
        "--keys",
        "300",
        "--clients",
        "8",
    ]));
    let fill: serde_json::Value = serde_json::from_str(&fill).unwrap();
    assert_eq!(fill["succeeded"], 300, "{fill}");
    assert_eq!(fill["latency_ms"]["put"]["count"], 300, "{fill}");
    // The values are random bytes: read them as hex (keys too, then).
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    for k in ["bench:00000000", "bench:00000150", "bench:00000299"] {
        assert_eq!(ok(&kv(&["get", "--hex", &hex(k)])).len(), 201, "{k}");
    }
    assert_eq!(
        one_line_error(&kv(&["get", "bench:00000300"]), 1),
        "not found"
    );
    // Bad arguments: exit 2 (clap's convention), nothing sent.
    assert_eq!(kv(&["--hex", "get", "0g"]).status.code(), Some(2));
    assert_eq!(kv(&["get"]).status.code(), Some(2));

    // Status: both groups, every member reachable, every shard served by exactly one group.
    let status = wait_for("all shards served", WAIT, || {
        let s = c.status();
        let groups = s["groups"].as_array().unwrap();
        let serving: usize = groups
            .iter()
            .map(|g| {
                g["shards"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|s| s["state"] == "serving")
                    .count()
            })
            .sum();
        (serving == SHARDS).then_some(s)
    });
    assert_eq!(status["config_num"], 1);
    for g in status["groups"].as_array().unwrap() {
        let members = g["members"].as_array().unwrap();
        assert_eq!(members.len(), 3, "{g}");
        assert!(members.iter().all(|m| m["reachable"] == true), "{g}");
        assert!(g["leader_id"].as_u64().is_some(), "{g}");
    }
    let text = ok(&kv(&["status"]));
    assert!(
        text.contains("group 1: leader") && text.contains("group 2: leader"),
        "{text}"
    );

    // Load from library clients: each appends unique tokens to its own key and remembers which
    // appends were acknowledged. Most keys live in group 1, whose leader is killed.
    let tls = c.tls_files().load().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = KvClient::connect(c.addrs(0).split(',').map(String::from).collect(), tls)
        .unwrap()
        .with_timeout(Duration::from_secs(10));
    let config = rt.block_on(client.refresh_config()).unwrap();
    let owner = |k: &str| config.shards[quorumkv_common::shard_of(k.as_bytes(), SHARDS)];
    let mut keys: Vec<String> = Vec::new();
    for want in [1, 1, 1, 1, 1, 1, 2, 2] {
        let k = (0..)
            .map(|i| format!("e2e:{i}"))
            .find(|k| owner(k) == want && !keys.contains(k))
            .unwrap();
        keys.push(k);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acked_group1 = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(w, key)| {
            let mut client = client.fork();
            let (key, stop, acked_group1) = (key.clone(), stop.clone(), acked_group1.clone());
            let in_group1 = owner(&key) == 1;
            rt.spawn(async move {
                let (mut attempted, mut acked) = (Vec::new(), Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let token = format!("{w}.{};", attempted.len());
                    attempted.push(token.clone());
                    match client.append(key.as_bytes(), token.as_bytes()).await {
                        Ok(()) => {
                            acked.push(token);
                            if in_group1 {
                                acked_group1.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        // Outcome unknown: the token may or may not be there.
                        Err(KvError::Timeout { .. }) => {}
                        Err(e) => panic!("append to {key}: {e}"),
                    }
                }
                (key, attempted, acked)
            })
        })
        .collect();
    let acks_reach = |n: u64, what: &str| {
        wait_for(what, WAIT, || {
            (acked_group1.load(Ordering::Relaxed) >= n).then_some(())
        })
    };
    acks_reach(100, "acknowledged appends to group 1 before the kill");

    // SIGKILL group 1's leader under load; the load goes on.
    let leader = wait_for("a leader of group 1", WAIT, || {
        let g = c.group_status(1);
        let id = g["leader_id"].as_u64()?;
        let m = g["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)?
            .clone();
        (m["role"] == "leader").then_some(id)
    });
    let victim = (1, leader);
    c.kill(victim);
    let at_kill = acked_group1.load(Ordering::Relaxed);
    acks_reach(
        at_kill + 100,
        "acknowledged appends to group 1 after the kill",
    );
    let new_leader = c.group_status(1)["leader_id"].as_u64();
    assert!(new_leader.is_some_and(|l| l != leader), "{new_leader:?}");

    // Restart it from its data directory; it catches up while the load goes on.
    c.start(victim);
    let target = c.group_status(1)["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["commit_index"].as_u64())
        .max()
        .unwrap();
    wait_for("the restarted member to catch up", WAIT, || {
        let g = c.group_status(1);
        let m = g["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == leader)?
            .clone();
        (m["reachable"] == true && m["applied_index"].as_u64()? >= target).then_some(())
    });
    let at_restart = acked_group1.load(Ordering::Relaxed);
    acks_reach(at_restart + 50, "acknowledged appends after the restart");
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = rt.block_on(async {
        let mut out = Vec::new();
        for w in writers {
            out.push(w.await.expect("writer panicked"));
        }
        out
    });

    // Every acknowledged token is there exactly once and in order; nothing else is, except
    // appends whose outcome was unknown (timed out).
    let reader = client.fork();
    for (key, attempted, acked) in results {
        let value = rt
            .block_on(reader.get(key.as_bytes()))
            .unwrap()
            .unwrap_or_default();
        let value = String::from_utf8(value.to_vec()).unwrap();
        let tokens: Vec<String> = value.split_inclusive(';').map(|t| t.to_string()).collect();
        let mut seen = std::collections::HashSet::new();
        for t in &tokens {
            assert!(seen.insert(t), "{key}: {t} applied twice");
            assert!(attempted.contains(t), "{key}: {t} was never written");
        }
        let mut it = tokens.iter();
        for a in &acked {
            assert!(
                it.any(|t| t == a),
                "{key}: acknowledged {a} missing or out of order (value {value:?})"
            );
        }
        assert!(!acked.is_empty(), "{key}: no acknowledged write");
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// Flag problems are caught before anything starts, on one line.
#[test]
fn binaries_refuse_bad_flags_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    support::write_certs(dir.path());
    let tls = support::tls_args(dir.path());
    let data = dir.path().join("data");
    // Valid flags, with `(flag, value)` replaced or added.
    let server = |change: &[&str]| {
        let mut args = vec![
            "--gid",
            "1",
            "--id",
            "1",
            "--cluster",
            "1=127.0.0.1:7201",
            "--ctrlers",
            "127.0.0.1:7101",
            "--data-dir",
            data.to_str().unwrap(),
        ];
        match args.iter().position(|a| *a == change[0]) {
            Some(i) => args[i + 1] = change[1],
            None => args.extend_from_slice(change),
        }
        Command::new(KV_SERVER)
            .args(&args)
            .args(&tls)
            .env_remove("QKV_CONFIG")
            .output()
            .unwrap()
    };
    let err = one_line_error(&server(&["--gid", "0"]), 1);
    assert!(err.contains("--gid 0"), "{err}");
    let err = one_line_error(&server(&["--id", "4"]), 1);
    assert!(err.contains("--id 4 is not in --cluster"), "{err}");
    let err = one_line_error(&server(&["--ctrlers", "nohost"]), 1);
    assert!(err.contains("--ctrlers"), "{err}");
    let err = one_line_error(&server(&["--admin-listen", "127.0.0.1:7201"]), 1);
    assert!(err.contains("--admin-listen"), "{err}");
    let as_client = Command::new(KV_SERVER)
        .args(["--gid", "1", "--id", "1", "--cluster", "1=127.0.0.1:7201"])
        .args([
            "--ctrlers",
            "127.0.0.1:7101",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .args(support::tls_args_as(dir.path(), "client"))
        .env_remove("QKV_CONFIG")
        .output()
        .unwrap();
    let err = one_line_error(&as_client, 1);
    assert!(
        err.contains("is a client certificate; a server needs a node certificate"),
        "{err}"
    );
    assert!(!Path::new(&data).exists(), "nothing may be created");

    // A TOML file takes the flags' long names; an unknown key is refused.
    let file = dir.path().join("kv.toml");
    std::fs::write(&file, "gid = 1\nno-such-flag = 1\n").unwrap();
    let out = Command::new(KV_SERVER)
        .args(["--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(one_line_error(&out, 1).contains("unknown key \"no-such-flag\""));

    let client = |args: &[&str]| {
        Command::new(KV_CLIENT)
            .args(["--ctrlers", "127.0.0.1:1"])
            .args(&tls)
            .args(args)
            .env_remove("QKV_JSON")
            .output()
            .unwrap()
    };
    for bad in [
        &["bench", "--clients", "0"][..],
        &["bench", "--read-ratio", "2"],
        &["bench", "--duration", "1", "--ops", "5"],
        &["bench", "--fill", "--ops", "5"],
        &["--timeout", "0", "get", "k"],
        &["put", "k"],
    ] {
        assert_eq!(client(bad).status.code(), Some(2), "{bad:?}");
    }
    let big = "k".repeat(quorumkv_shardkv_client::MAX_KEY_BYTES + 1);
    assert_eq!(client(&["get", &big]).status.code(), Some(2));
    assert_eq!(
        client(&["put", "", "v"]).status.code(),
        Some(2),
        "empty key"
    );
    assert_eq!(
        client(&["--timeout", "5x", "get", "k"]).status.code(),
        Some(2)
    );
    // Nothing listens there: a failure bounded by --timeout (configuration lookup included),
    // one line, exit 1.
    let started = std::time::Instant::now();
    let err = one_line_error(&client(&["--timeout", "1s", "get", "k"]), 1);
    assert!(err.starts_with("shardkv-client: error: "), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // A missing TLS file: named once, with the OS's reason once.
    let out = Command::new(KV_CLIENT)
        .args([
            "--ctrlers",
            "127.0.0.1:1",
            "--tls-ca",
            "/nonexistent/ca.pem",
        ])
        .args(&tls[2..])
        .args(["get", "k"])
        .output()
        .unwrap();
    let err = one_line_error(&out, 1);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    // The bench reports its failures and exits 1 when nothing succeeded (its progress lines
    // precede the error on stderr).
    let out = client(&["--timeout", "1", "bench", "--ops", "3"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.trim_end()
            .lines()
            .last()
            .unwrap()
            .contains("no operation succeeded"),
        "{err}"
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("3 failed") && report.contains("3 timeout"),
        "{report}"
    );
}
