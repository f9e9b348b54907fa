//! `shardkv-client check` against the real binaries: it cannot run without a replica group
//! (exit 2), finds a healthy group linearizable (exit 0), and catches the stale reads of a group
//! started with the hidden `--unsafe-stale-reads-for-testing` (exit 1, with the violation and
//! the smallest history that proves it), naming only keys that group serves.

mod support;

use std::time::{Duration, Instant};

use support::{
    json, ok, one_line_error, three_member_groups, wait_for, ProcCluster, CTRL_CLIENT, KV_CLIENT,
};

const SHARDS: usize = 16;
const WAIT: Duration = Duration::from_secs(20);

#[test]
fn check_passes_a_healthy_group_and_catches_stale_reads() {
    let started = Instant::now();
    let mut c = ProcCluster::new(&three_member_groups(&[1, 2]), SHARDS, "warn");
    for id in 1..=3 {
        c.start((0, id), &[1, 2, 3], false);
        c.start((1, id), &[1, 2, 3], false);
        c.start_with(
            (2, id),
            &[1, 2, 3],
            false,
            &["--unsafe-stale-reads-for-testing"],
        );
    }
    let check = |c: &ProcCluster, args: &[&str]| {
        let mut a = vec![
            "--timeout",
            "10",
            "check",
            "--duration",
            "4",
            "--clients",
            "4",
        ];
        a.extend_from_slice(args);
        c.run(KV_CLIENT, &a)
    };

    // Nothing to check yet: the controller has no group. Exit 2, one line.
    wait_for("the controller serving", WAIT, || {
        c.run(CTRL_CLIENT, &["--timeout", "2", "query"])
            .status
            .success()
            .then_some(())
    });
    let none = check(&c, &["--keys", "2"]);
    assert!(
        one_line_error(&none, 2).contains("no replica group"),
        "{none:?}"
    );

    // A healthy group: linearizable, exit 0.
    let joined = ok(&c.run(
        CTRL_CLIENT,
        &[
            "--timeout",
            "20",
            "join",
            &format!("1={}", c.addrs(1, &[1, 2, 3]).join(",")),
        ],
    ));
    assert_eq!(joined.trim(), "configuration 1");
    let healthy = check(&c, &["--keys", "4"]);
    let text = ok(&healthy);
    assert!(text.contains("\nlinearizable: 4 keys, "), "{text}");
    assert!(text.contains(" operations, 0 violations\n"), "{text}");

    // The unsafe group takes half of the shards; its keys are read stale.
    ok(&c.run(
        CTRL_CLIENT,
        &[
            "--timeout",
            "20",
            "join",
            &format!("2={}", c.addrs(2, &[1, 2, 3]).join(",")),
        ],
    ));
    let config = wait_for("group 2 serving its shards", WAIT, || {
        let status = json(&c.run(KV_CLIENT, &["--timeout", "5", "--json", "status"]));
        let g2_serving = status["groups"]
            .as_array()?
            .iter()
            .find(|g| g["gid"] == 2)?["shards"]
            .as_array()?
            .iter()
            .filter(|s| s["state"] == "serving")
            .count();
        let q = json(&c.run(CTRL_CLIENT, &["--json", "query"]));
        (g2_serving == SHARDS / 2).then_some(q)
    });
    let owners: Vec<u64> = config["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap())
        .collect();
    let history = c.dir.path().join("history.jsonl");
    let stale = check(
        &c,
        &[
            "--keys",
            "20",
            "--save",
            history.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(stale.status.code(), Some(1), "{stale:?}");
    let report = json(&stale);
    assert_eq!(report["verdict"], "violation", "{report}");
    let failing = report["failing_keys"].as_array().unwrap();
    assert!(!failing.is_empty(), "{report}");
    for k in failing {
        let key = k["key"].as_str().unwrap();
        let owner = owners[quorumkv_common::shard_of(key.as_bytes(), SHARDS)];
        assert_eq!(owner, 2, "{key} is served by the healthy group: {report}");
    }
    // The first violation comes with its smallest history: a read and the writes around it.
    let witness = failing[0]["witness"].as_array().unwrap();
    assert!((2..=6).contains(&witness.len()), "{report}");
    assert!(witness.iter().any(|o| o["op"] == "get"), "{report}");
    let saved = std::fs::read_to_string(&history).unwrap();
    assert_eq!(
        saved.lines().count() as u64,
        report["operations"].as_u64().unwrap()
    );

    // The text report says the same to a person.
    let text = check(&c, &["--keys", "20"]);
    assert_eq!(text.status.code(), Some(1), "{text:?}");
    let text = String::from_utf8_lossy(&text.stdout);
    // The keys that saw operations (on a loaded machine a few of the 20 may see none).
    let keys: usize = text
        .split("\nNOT linearizable: ")
        .nth(1)
        .and_then(|t| t.split(" key").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no verdict line: {text}"));
    assert!((1..=20).contains(&keys), "{text}");
    assert!(
        text.contains("the smallest history that shows it"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(90));
}
