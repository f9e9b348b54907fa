//! Chaos against the real binaries: a 3-member controller and two replica groups of three,
//! separate processes over mutual TLS on loopback, while `shardkv-client check` runs its
//! concurrent clients and a seeded nemesis SIGKILLs and restarts members (leaders included,
//! controller members too), pauses members with SIGSTOP/SIGCONT (a frozen process: its peers
//! see silence, then it wakes with stale timers), stops members with SIGTERM (the graceful
//! hand-off path) and moves shards. The check must find the history linearizable, and the
//! groups must end with every shard serving.
//!
//! Partitions are exercised in process (`crates/shardkv/tests/chaos.rs`); here the processes
//! share the host's loopback, so a pause is this test's way of cutting a member off.
//! `QKV_CHAOS_SEED` picks the schedule (default 42); the seed is printed.

mod support;

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::{ok, three_member_groups, wait_for, NodeId, ProcCluster, CTRL_CLIENT, KV_CLIENT};

const SHARDS: usize = 8;
const CHECK_SECONDS: u64 = 30;
/// The nemesis stops this long before the check ends, so the last operations complete.
const NEMESIS_SECONDS: u64 = 22;
const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug)]
enum Fault {
    Kill(NodeId),
    Pause(NodeId),
    Term(NodeId),
    Move { shard: usize, to: u64 },
}

#[test]
fn real_processes_under_kills_pauses_and_moves_stay_linearizable() {
    let seed: u64 = std::env::var("QKV_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(42);
    eprintln!("chaos (processes) seed {seed}: rerun with QKV_CHAOS_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = ProcCluster::new(&three_member_groups(&[1, 2]), SHARDS, "warn");
    for n in c.nodes() {
        c.start(n, &[1, 2, 3], false);
    }
    wait_for("the controller serving", WAIT, || {
        c.run(CTRL_CLIENT, &["--timeout", "2", "query"])
            .status
            .success()
            .then_some(())
    });
    for gid in [1, 2] {
        ok(&c.run(
            CTRL_CLIENT,
            &[
                "--timeout",
                "20",
                "join",
                &format!("{gid}={}", c.addrs(gid, &[1, 2, 3]).join(",")),
            ],
        ));
    }

    let check = c.spawn_client(
        KV_CLIENT,
        &[
            "--timeout",
            "5s",
            "check",
            "--duration",
            &format!("{CHECK_SECONDS}s"),
            "--clients",
            "6",
            "--keys",
            "6",
            "--json",
        ],
    );

    let started = Instant::now();
    let mut applied = Vec::new();
    while started.elapsed() < Duration::from_secs(NEMESIS_SECONDS) {
        let node = (rng.gen_range(0..=2), rng.gen_range(1..=3));
        let fault = match rng.gen_range(0..10) {
            0..=3 => Fault::Kill(node),
            4..=5 => Fault::Pause(node),
            6..=7 => Fault::Term(node),
            _ => Fault::Move {
                shard: rng.gen_range(0..SHARDS),
                to: rng.gen_range(1..=2),
            },
        };
        let hold = Duration::from_millis(rng.gen_range(300..=2_500));
        eprintln!(
            "  {:>5.1} s: {fault:?} for {} ms",
            started.elapsed().as_secs_f64(),
            hold.as_millis()
        );
        match fault {
            Fault::Kill(n) => {
                c.kill(n);
                std::thread::sleep(hold);
                c.start(n, &[1, 2, 3], false);
            }
            Fault::Pause(n) => {
                c.signal(n, libc::SIGSTOP);
                std::thread::sleep(hold);
                c.signal(n, libc::SIGCONT);
            }
            Fault::Term(n) => {
                c.stop(n);
                std::thread::sleep(hold);
                c.start(n, &[1, 2, 3], false);
            }
            Fault::Move { shard, to } => {
                let out = c.run(
                    CTRL_CLIENT,
                    &[
                        "--timeout",
                        "10",
                        "move",
                        &shard.to_string(),
                        &to.to_string(),
                    ],
                );
                // A controller member may be down or paused: a move that times out is a
                // skipped fault, not a failure (the controller's own tests cover it).
                if !out.status.success() {
                    eprintln!(
                        "    move skipped: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                std::thread::sleep(hold);
            }
        }
        applied.push(fault);
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..=500)));
    }
    for n in c.nodes() {
        assert!(c.is_running(n), "{n:?} was left stopped");
    }

    let out = support::wait_output(check, Duration::from_secs(CHECK_SECONDS + 90));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!(
        "chaos (processes) seed {seed}: {} faults, {} operations ({} of unknown outcome): {}",
        applied.len(),
        report["operations"],
        report["unknown_outcome"].as_array().map_or(0, Vec::len),
        report["verdict"]
    );
    assert_eq!(out.status.code(), Some(0), "seed {seed}: {report}");
    assert_eq!(report["verdict"], "linearizable", "seed {seed}: {report}");
    assert_eq!(report["violations"], 0, "seed {seed}: {report}");
    assert!(
        report["operations"].as_u64().unwrap_or(0) > 100,
        "seed {seed}: too few operations: {report}"
    );
    assert!(applied.len() >= 5, "only {} faults applied", applied.len());

    // No shard left migrating.
    c.wait_every_shard_serving(SHARDS, WAIT);
}
