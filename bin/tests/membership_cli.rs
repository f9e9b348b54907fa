//! Membership from the command line, end to end with the real binaries over mutual TLS on
//! loopback: a 3-member controller and one 3-member replica group as processes. A fourth
//! member started with `--join` is added with `shardkv-client member --gid 1 add`, which also
//! records it in the controller; leadership is moved to member 1, which is then removed while
//! it leads and its process stopped; writes go on throughout. Every process is killed when the
//! test ends, even when it fails.

mod support;

use std::process::Output;
use std::time::{Duration, Instant};

use support::{ok, one_line_error, wait_for, NodeId, ProcCluster, CTRL_CLIENT, KV_CLIENT};

/// Bound of every wait for the cluster to reach a state.
const WAIT: Duration = Duration::from_secs(30);

/// The processes: the controller is group 0, the replica group is group 1 (members 1-3, and 4
/// to be added).
struct Cluster(ProcCluster);

impl std::ops::Deref for Cluster {
    type Target = ProcCluster;
    fn deref(&self) -> &ProcCluster {
        &self.0
    }
}

impl Cluster {
    fn new() -> Self {
        let nodes = [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (1, 4)];
        Cluster(ProcCluster::new(&nodes, 8, "info"))
    }

    /// Starts member `id` of `gid`; `join` starts it empty, to be added to a running group.
    fn start(&mut self, n: NodeId, join: bool) {
        let members: &[u64] = if join { &[1, 2, 3, 4] } else { &[1, 2, 3] };
        self.0.start(n, members, join);
    }

    /// Stops a member's process (after it was removed from its group).
    fn stop(&mut self, n: NodeId) {
        self.0.kill(n);
    }

    fn run(&self, bin: &str, args: &[&str]) -> Output {
        let mut all = vec!["--timeout", "30"];
        all.extend_from_slice(args);
        self.0.run(bin, &all)
    }

    fn kv(&self, args: &[&str]) -> Output {
        self.run(KV_CLIENT, args)
    }

    fn ctrl(&self, args: &[&str]) -> Output {
        self.run(CTRL_CLIENT, args)
    }

    /// `member --gid 1 list --json` of the replica group.
    fn group_members(&self) -> serde_json::Value {
        serde_json::from_str(&ok(&self.kv(&["--json", "member", "--gid", "1", "list"]))).unwrap()
    }

    /// The latest configuration's servers of group 1.
    fn recorded_servers(&self) -> Vec<String> {
        let config: serde_json::Value =
            serde_json::from_str(&ok(&self.ctrl(&["--json", "query"]))).unwrap();
        let group = config["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["gid"] == 1)
            .cloned()
            .expect("group 1 in the configuration");
        serde_json::from_value(group["servers"].clone()).unwrap()
    }
}

/// The ids of the voters in a `member list --json` output.
fn voters(list: &serde_json::Value) -> Vec<u64> {
    list["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "voter")
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn members_are_added_and_removed_from_the_cli_and_the_controller_follows() {
    let started = Instant::now();
    let mut c = Cluster::new();
    for n in [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)] {
        c.start(n, false);
    }
    let joined = ok(&c.ctrl(&["join", &format!("1={}", c.addrs(1, &[1, 2, 3]).join(","))]));
    assert_eq!(joined.trim(), "configuration 1");
    assert_eq!(ok(&c.kv(&["put", "a", "1"])), "");

    // Adding a member that does not run changes nothing and says how to start it.
    let down = c.kv(&[
        "member",
        "--gid",
        "1",
        "add",
        &format!("4={}", c.addr((1, 4))),
    ]);
    let err = one_line_error(&down, 1);
    assert!(
        err.contains("cannot reach the new member 4") && err.contains("--join"),
        "{err}"
    );
    assert_eq!(voters(&c.group_members()), vec![1, 2, 3]);

    // Start member 4 empty with --join, then add it: a voter, recorded by the controller.
    c.start((1, 4), true);
    let added = ok(&c.kv(&[
        "member",
        "--gid",
        "1",
        "add",
        &format!("4={}", c.addr((1, 4))),
    ]));
    assert!(added.contains("member 4 added at"), "{added}");
    assert!(added.contains("controller: group 1 servers now"), "{added}");
    let list = c.group_members();
    assert_eq!(voters(&list), vec![1, 2, 3, 4], "{list}");
    assert_eq!(c.recorded_servers(), c.addrs(1, &[1, 2, 3, 4]));
    let text = ok(&c.kv(&["member", "--gid", "1", "list"]));
    assert!(
        text.contains("group 1: leader") && text.contains("(leader)"),
        "{text}"
    );
    assert_eq!(ok(&c.kv(&["put", "b", "2"])), "");
    assert_eq!(ok(&c.kv(&["get", "a"])), "1\n");

    // Move leadership to member 1, then remove it while it leads, then stop its process.
    // (If member 1 already leads, move it away first, so the transfer really changes the
    // leader: on a no-op the CLI rightly reports that nothing changed.)
    if c.group_members()["leader_id"] == 1 {
        let away = ok(&c.kv(&["member", "--gid", "1", "transfer", "2"]));
        assert!(away.contains("leader is now 2"), "{away}");
    }
    let moved = ok(&c.kv(&["member", "--gid", "1", "transfer", "1"]));
    assert!(moved.contains("leader is now 1"), "{moved}");
    assert_eq!(c.group_members()["leader_id"], 1);
    let removed = ok(&c.kv(&["member", "--gid", "1", "remove", "1"]));
    assert!(
        removed.contains("member 1 (") && removed.contains("removed"),
        "{removed}"
    );
    assert_eq!(c.recorded_servers(), c.addrs(1, &[2, 3, 4]));
    c.stop((1, 1));
    let list = wait_for("a leader among 2, 3, 4", WAIT, || {
        let out = c.kv(&["--json", "member", "--gid", "1", "list"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        [2, 3, 4]
            .contains(&list["leader_id"].as_u64()?)
            .then_some(list)
    });
    assert_eq!(voters(&list), vec![2, 3, 4], "{list}");

    // Writes and reads still work, on the group without member 1.
    assert_eq!(ok(&c.kv(&["put", "c", "3"])), "");
    assert_eq!(ok(&c.kv(&["append", "a", "+"])), "");
    assert_eq!(ok(&c.kv(&["get", "a"])), "1+\n");
    assert_eq!(ok(&c.kv(&["get", "b"])), "2\n");

    // The controller group's own membership is unchanged: 3 voters, one leader.
    let ctrl: serde_json::Value =
        serde_json::from_str(&ok(&c.ctrl(&["--json", "member", "list"]))).unwrap();
    assert_eq!(voters(&ctrl), vec![1, 2, 3], "{ctrl}");
    assert_eq!(ctrl["group_id"], 0);
    let text = ok(&c.ctrl(&["member", "list"]));
    assert!(text.starts_with("controller group: leader"), "{text}");
    // Bad arguments: exit 2, nothing sent.
    assert_eq!(c.ctrl(&["member", "add", "4"]).status.code(), Some(2));
    assert_eq!(c.kv(&["member", "list"]).status.code(), Some(2));

    eprintln!("membership_cli took {:?}", started.elapsed());
}

#[test]
fn replacing_the_leader_under_load_completes_and_writes_go_on() {
    // Defect: replacing the group's leader made the leader hand over while the CLI's call was
    // in flight; the retried call found the old member gone and failed, the controller kept
    // the old servers, and clients then ignored the new leader's address (not in that list):
    // every write failed.
    let nodes = [
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 1),
        (1, 2),
        (1, 3),
        (1, 4),
        (1, 5),
    ];
    let mut c = ProcCluster::new(&nodes, 8, "info");
    for n in [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)] {
        c.start(n, &[1, 2, 3], false);
    }
    ok(&c.run(
        CTRL_CLIENT,
        &["join", &format!("1={}", c.addrs(1, &[1, 2, 3]).join(","))],
    ));
    assert_eq!(ok(&kv30(&c, &["put", "a", "1"])), "");
    let leader = |c: &ProcCluster| -> u64 {
        let out = c.run(KV_CLIENT, &["--json", "member", "--gid", "1", "list"]);
        let list: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
        list["leader_id"].as_u64().unwrap()
    };
    let bench = c.spawn_client(
        KV_CLIENT,
        &[
            "--json",
            "bench",
            "--clients",
            "8",
            "--duration",
            "20s",
            "--read-ratio",
            "0.5",
        ],
    );

    // Replace the leader by member 4, in one go.
    c.start((1, 4), &[1, 2, 3, 4], true);
    let old = leader(&c);
    let replaced = ok(&kv30(
        &c,
        &[
            "member",
            "--gid",
            "1",
            "replace",
            &old.to_string(),
            &format!("4={}", c.addr((1, 4))),
        ],
    ));
    assert!(
        replaced.contains("controller: group 1 servers now"),
        "{replaced}"
    );
    let mut expect: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|i| *i != old).collect();
    assert_eq!(
        c.run(KV_CLIENT, &["--json", "member", "--gid", "1", "list"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        ok(&kv30(&c, &["put", "b", "2"])),
        "",
        "a write after the replacement"
    );

    // Replace the (new) leader by member 5, and kill the CLI between its steps: once 5 is a
    // learner, before the swap. Repeating the command completes it.
    c.start((1, 5), &[1, 2, 3, 4, 5], true);
    let old2 = leader(&c);
    let mut cli = c.spawn_client(
        KV_CLIENT,
        &[
            "--timeout",
            "60",
            "member",
            "--gid",
            "1",
            "replace",
            &old2.to_string(),
            &format!("5={}", c.addr((1, 5))),
        ],
    );
    wait_for("member 5 becomes a learner (or more)", WAIT, || {
        let out = c.run(KV_CLIENT, &["--json", "member", "--gid", "1", "list"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        list["members"]
            .as_array()?
            .iter()
            .any(|m| m["id"] == 5)
            .then_some(())
    });
    let _ = cli.kill();
    let _ = cli.wait();
    let again = ok(&kv30(
        &c,
        &[
            "member",
            "--gid",
            "1",
            "replace",
            &old2.to_string(),
            &format!("5={}", c.addr((1, 5))),
        ],
    ));
    expect.retain(|i| *i != old2);
    expect.push(5);
    expect.sort_unstable();
    let list: serde_json::Value =
        serde_json::from_str(&ok(&kv30(&c, &["--json", "member", "--gid", "1", "list"]))).unwrap();
    assert_eq!(voters(&list), expect, "{again} {list}");
    // The controller's record follows the group, whatever the run that changed it did.
    let config: serde_json::Value =
        serde_json::from_str(&ok(&c.run(CTRL_CLIENT, &["--json", "query"]))).unwrap();
    let servers = config["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gid"] == 1)
        .map(|g| g["servers"].clone())
        .unwrap();
    assert_eq!(
        serde_json::from_value::<Vec<String>>(servers).unwrap(),
        c.addrs(1, &expect)
    );
    // A record left stale (by a run that died after changing the group) is brought in step
    // by the next member command, even a listing.
    let stale = format!("1={}", c.addrs(1, &[1, 2, 3]).join(","));
    ok(&c.run(CTRL_CLIENT, &["set-servers", &stale]));
    let listed = ok(&kv30(&c, &["member", "--gid", "1", "list"]));
    assert!(
        listed.contains("controller: group 1 servers now"),
        "{listed}"
    );
    let config: serde_json::Value =
        serde_json::from_str(&ok(&c.run(CTRL_CLIENT, &["--json", "query"]))).unwrap();
    let group = config["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gid"] == 1);
    assert_eq!(
        serde_json::from_value::<Vec<String>>(group.unwrap()["servers"].clone()).unwrap(),
        c.addrs(1, &expect)
    );
    // Writes go on, and nothing written before is lost.
    assert_eq!(ok(&kv30(&c, &["put", "c", "3"])), "");
    assert_eq!(ok(&kv30(&c, &["get", "a"])), "1\n");
    assert_eq!(ok(&kv30(&c, &["get", "b"])), "2\n");
    let out = bench.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bench: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let puts = report["throughput"]["puts_per_s"].as_f64().unwrap();
    assert!(
        puts > 0.0,
        "no write succeeded under the replacements: {report}"
    );
    eprintln!(
        "bench during the replacements: {} ok, {} failed",
        report["succeeded"], report["failed"]
    );
}

/// `shardkv-client` with a 30 s timeout.
fn kv30(c: &ProcCluster, args: &[&str]) -> Output {
    let mut all = vec!["--timeout", "30"];
    all.extend_from_slice(args);
    c.run(KV_CLIENT, &all)
}
