//! The seeded chaos suite: a whole cluster in one process (a 3-member controller and three
//! replica groups of three, real gRPC over mutual TLS on loopback, every group's Raft traffic
//! through the fault-injecting network) while concurrent clients read and write and a nemesis
//! works through a schedule drawn from a seed:
//!
//! - crashes (a member stopped at once: no hand-off, no drain) and restarts, of the leader or
//!   of a follower;
//! - partitions: the leader isolated, one member cut from the two others, a one-way cut (the
//!   leader cannot reach one follower, which still reaches it);
//! - message loss and delay (which also reorders), up to 20 % and 40 ms;
//! - `join` / `leave` of a third group and `move` of a shard, so shards migrate under faults;
//! - membership changes (a member replaced by a new, empty one: learner, catch-up, joint
//!   consensus swap, controller record) and leader transfers.
//!
//! Every run ends by healing the network, waiting until no shard is migrating (a shard stuck
//! fails the run), reading every key, and checking the whole history — the final reads
//! included, so an acknowledged write that went missing is a violation — with the project's
//! linearizability checker.
//!
//! What a seed fixes: the schedule (faults, their targets' roles, durations and order) and each
//! client's operations. What it does not: thread interleavings and timing, which are real. A
//! failing seed is printed with the command that reruns its schedule; a rerun replays the same
//! schedule, and usually the failure, but is not guaranteed to.
//!
//! CI runs the seeds of [`ci_seed_1`]..; `scripts/chaos.sh N` runs N random seeds.
//! Environment: `QKV_CHAOS_SEED` (for `seed_from_env`), `QKV_CHAOS_SECONDS` (schedule length,
//! default 20).

mod support;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorumkv_testkit::linearizability::{History, KvOp, Operation, DEFAULT_STEPS_PER_KEY};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::{Cluster, Opts, SHARDS};

const CLIENTS: u64 = 4;
/// Keys per 30 s of schedule: enough contention to be interesting, few enough operations per
/// key for the checker to decide.
const KEYS_PER_30_S: usize = 6;
/// A client stops after this many operations per second of schedule even if not told to stop.
const MAX_OPS_PER_S: usize = 150;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Groups 1 and 2 are always joined; group 3 comes and goes.
const GROUPS: u64 = 3;

/// Whom a fault hits, resolved when it starts (the schedule names roles, not ids, because
/// which member leads depends on the run).
#[derive(Debug, Clone, Copy)]
enum Target {
    Leader,
    /// The n-th (mod the count) member that does not lead.
    Follower(usize),
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Crash {
        gid: u64,
        who: Target,
    },
    IsolateLeader {
        gid: u64,
    },
    Minority {
        gid: u64,
        who: Target,
    },
    /// The leader's messages to one follower are dropped; the follower's still arrive.
    OneWay {
        gid: u64,
        follower: usize,
    },
    Lossy {
        drop_pct: u32,
        delay_ms: u64,
    },
    Move {
        shard: u64,
        to: u64,
    },
    /// Joins group 3 if it is out, else makes it leave.
    ToggleThirdGroup,
    Replace {
        gid: u64,
        who: Target,
    },
    Transfer {
        gid: u64,
        follower: usize,
    },
}

#[derive(Debug, Clone, Copy)]
struct Step {
    fault: Fault,
    /// How long the fault lasts before it is undone (heal, restart).
    hold: Duration,
    /// Quiet time after it is undone.
    rest: Duration,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} for {} ms, then {} ms quiet",
            self.fault,
            self.hold.as_millis(),
            self.rest.as_millis()
        )
    }
}

/// The schedule of a seed: steps until `total` is covered.
fn schedule(seed: u64, total: Duration) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut steps = Vec::new();
    let mut covered = Duration::ZERO;
    while covered < total {
        let gid = rng.gen_range(1..=2);
        let who = if rng.gen_bool(0.5) {
            Target::Leader
        } else {
            Target::Follower(rng.gen_range(0..2))
        };
        let fault = match rng.gen_range(0..100) {
            0..=19 => Fault::Crash { gid, who },
            20..=29 => Fault::IsolateLeader { gid },
            30..=37 => Fault::Minority { gid, who },
            38..=45 => Fault::OneWay {
                gid,
                follower: rng.gen_range(0..2),
            },
            46..=55 => Fault::Lossy {
                drop_pct: rng.gen_range(5..=20),
                delay_ms: rng.gen_range(5..=40),
            },
            56..=67 => Fault::Move {
                shard: rng.gen_range(0..SHARDS as u64),
                to: rng.gen_range(1..=GROUPS),
            },
            68..=77 => Fault::ToggleThirdGroup,
            78..=87 => Fault::Replace { gid, who },
            _ => Fault::Transfer {
                gid,
                follower: rng.gen_range(0..2),
            },
        };
        let step = Step {
            fault,
            hold: Duration::from_millis(rng.gen_range(300..=2_500)),
            rest: Duration::from_millis(rng.gen_range(0..=600)),
        };
        covered += step.hold + step.rest;
        steps.push(step);
    }
    steps
}

fn schedule_seconds() -> u64 {
    std::env::var("QKV_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

fn keys() -> usize {
    KEYS_PER_30_S.max(KEYS_PER_30_S * schedule_seconds() as usize / 30)
}

/// What a run saw, for the suite's report line.
#[derive(Default)]
struct Tally {
    applied: usize,
    skipped: Vec<String>,
}

/// The nemesis: applies steps to the cluster and undoes them.
struct Nemesis<'a> {
    c: &'a mut Cluster,
    third_joined: bool,
    tally: Tally,
}

impl Nemesis<'_> {
    fn resolve(&self, gid: u64, who: Target) -> Option<u64> {
        let leader = self.c.leader(gid);
        match who {
            Target::Leader => leader,
            Target::Follower(n) => {
                let others: Vec<u64> = self
                    .c
                    .running(gid)
                    .into_iter()
                    .filter(|id| Some(*id) != leader)
                    .collect();
                (!others.is_empty()).then(|| others[n % others.len()])
            }
        }
    }

    /// Network ids of the group's members (the fault network's ids are gid * 100 + id).
    fn net_ids(&self, gid: u64) -> Vec<u64> {
        self.c
            .member_ids(gid)
            .into_iter()
            .map(|id| gid * 100 + id)
            .collect()
    }

    fn skip(&mut self, step: &Step, why: &str) {
        self.tally.skipped.push(format!("{:?}: {why}", step.fault));
    }

    async fn run(&mut self, step: &Step) {
        tracing::info!(step = %step, "nemesis");
        match step.fault {
            Fault::Crash { gid, who } => {
                let Some(id) = self.resolve(gid, who) else {
                    return self.skip(step, "no such member now");
                };
                self.c.crash_member(gid, id).await;
                tokio::time::sleep(step.hold).await;
                self.c.restart_member(gid, id).await;
            }
            Fault::IsolateLeader { gid } => {
                let Some(id) = self.c.leader(gid) else {
                    return self.skip(step, "no leader now");
                };
                self.c.net.isolate(gid * 100 + id, &self.net_ids(gid));
                tokio::time::sleep(step.hold).await;
                self.c.net.heal();
            }
            Fault::Minority { gid, who } => {
                let Some(id) = self.resolve(gid, who) else {
                    return self.skip(step, "no such member now");
                };
                self.c.net.isolate(gid * 100 + id, &self.net_ids(gid));
                tokio::time::sleep(step.hold).await;
                self.c.net.heal();
            }
            Fault::OneWay { gid, follower } => {
                let (Some(leader), Some(f)) = (
                    self.c.leader(gid),
                    self.resolve(gid, Target::Follower(follower)),
                ) else {
                    return self.skip(step, "no leader now");
                };
                self.c.net.cut_one_way(gid * 100 + leader, gid * 100 + f);
                tokio::time::sleep(step.hold).await;
                self.c.net.heal();
            }
            Fault::Lossy { drop_pct, delay_ms } => {
                self.c
                    .net
                    .set_unreliable(f64::from(drop_pct) / 100.0, Duration::from_millis(delay_ms));
                tokio::time::sleep(step.hold).await;
                self.c.net.heal();
            }
            Fault::Move { shard, to } => {
                if to == 3 && !self.third_joined {
                    return self.skip(step, "group 3 is not joined");
                }
                if let Err(e) = self.c.ctrler().move_shard(shard, to).await {
                    return self.skip(step, &e.to_string());
                }
                tokio::time::sleep(step.hold).await;
            }
            Fault::ToggleThirdGroup => {
                let result = if self.third_joined {
                    self.c.ctrler().leave(vec![3]).await
                } else {
                    let groups = [(3, self.c.group_servers(3))].into_iter().collect();
                    self.c.ctrler().join(groups).await
                };
                match result {
                    Ok(_) => self.third_joined = !self.third_joined,
                    Err(e) => return self.skip(step, &e.to_string()),
                }
                tokio::time::sleep(step.hold).await;
            }
            Fault::Replace { gid, who } => {
                let Some(id) = self.resolve(gid, who) else {
                    return self.skip(step, "no such member now");
                };
                // On a healed network a membership change must complete (retried as an
                // operator would); one that cannot is a stuck group.
                if let Err(e) = self.c.replace_member(gid, id).await {
                    panic!("replacing member {id} of group {gid} did not complete: {e}");
                }
                tokio::time::sleep(step.hold).await;
            }
            Fault::Transfer { gid, follower } => {
                let (Some(leader), Some(to)) = (
                    self.c.leader(gid),
                    self.resolve(gid, Target::Follower(follower)),
                ) else {
                    return self.skip(step, "no leader now");
                };
                let node = self.c.node(gid, leader);
                if let Err(e) = node.transfer_leader(to).await {
                    return self.skip(step, &e.to_string());
                }
                tokio::time::sleep(step.hold).await;
            }
        }
        self.tally.applied += 1;
    }
}

/// One client's loop: random operations on the shared keys, each recorded with its outcome.
async fn client_loop(
    mut kv: quorumkv_shardkv_client::KvClient,
    client: u64,
    seed: u64,
    history: History,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (client + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    for i in 0..MAX_OPS_PER_S * schedule_seconds() as usize {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = format!("chaos-{}", rng.gen_range(0..keys())).into_bytes();
        let token = format!("<{client}.{i}>").into_bytes();
        let op = match rng.gen_range(0..10) {
            0..=3 => KvOp::Get,
            4..=5 => KvOp::Put(token),
            6..=8 => KvOp::Append(token),
            _ => KvOp::Delete,
        };
        support::run_and_record(&mut kv, &history, client, key, op).await;
    }
}

/// One seeded run; panics (naming the seed) on a violation, a lost write or a stuck shard.
async fn run(seed: u64) {
    let total = Duration::from_secs(schedule_seconds());
    let steps = schedule(seed, total);
    let rerun = format!(
        "QKV_CHAOS_SEED={seed} QKV_CHAOS_SECONDS={} cargo nextest run -p quorumkv-shardkv \
         --test chaos --run-ignored only seed_from_env",
        total.as_secs()
    );
    eprintln!("chaos seed {seed}: {} steps; rerun: {rerun}", steps.len());
    for (i, s) in steps.iter().enumerate() {
        eprintln!("  step {i}: {s}");
    }
    let started = Instant::now();
    let mut c = Cluster::start(
        GROUPS,
        Opts {
            snapshot_log_bytes: 64 * 1024,
        },
    )
    .await;
    let n = c.join(&[1, 2]).await;
    c.wait_settled(&[1, 2], n).await;

    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let base = c.client().with_timeout(CLIENT_TIMEOUT);
    let workers: Vec<_> = (0..CLIENTS)
        .map(|client| {
            tokio::spawn(client_loop(
                base.fork(),
                client,
                seed,
                history.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let mut nemesis = Nemesis {
        c: &mut c,
        third_joined: false,
        tally: Tally::default(),
    };
    for step in &steps {
        nemesis.run(step).await;
        tokio::time::sleep(step.rest).await;
    }
    let Nemesis {
        third_joined,
        tally,
        ..
    } = nemesis;

    // Everything healed (each step undid its own fault); the clients stop, the cluster must
    // settle: no shard left migrating.
    c.net.heal();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await
            .unwrap_or_else(|e| panic!("chaos seed {seed}: a client failed: {e}; rerun: {rerun}"));
    }
    let config = c.ctrler().query(None).await.expect("latest configuration");
    let joined: Vec<u64> = if third_joined {
        vec![1, 2, 3]
    } else {
        vec![1, 2]
    };
    assert_eq!(
        config.groups.keys().copied().collect::<BTreeSet<_>>(),
        joined.iter().copied().collect(),
        "chaos seed {seed}: the controller's groups differ from what the nemesis did"
    );
    c.wait_settled(&joined, config.num).await;

    // Final reads of every key, part of the history: a write acknowledged and then lost
    // shows as a read no linearization can explain.
    let reader = c.client().with_timeout(Duration::from_secs(20));
    for k in 0..keys() {
        let key = format!("chaos-{k}").into_bytes();
        let call = history.now();
        let value = reader
            .get(&key)
            .await
            .unwrap_or_else(|e| panic!("chaos seed {seed}: final read of key {k}: {e}"));
        history.record(Operation::completed(
            CLIENTS,
            key,
            KvOp::Get,
            value.map(|b| b.to_vec()),
            call,
            history.now(),
        ));
    }

    let ops = history.len();
    let verdict = history.check(DEFAULT_STEPS_PER_KEY);
    eprintln!(
        "chaos seed {seed}: {ops} operations, {} faults applied, {} skipped ({:?}), {} messages \
         dropped, {:.1} s: {verdict}",
        tally.applied,
        tally.skipped.len(),
        tally.skipped,
        c.net.dropped(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        ops > 50,
        "chaos seed {seed}: too few operations ({ops}); rerun: {rerun}"
    );
    assert!(
        verdict.is_ok(),
        "chaos seed {seed}: {ops} operations: {verdict}; rerun: {rerun}"
    );
    c.shutdown().await;
}

// The seeds CI runs (each about a minute on two cores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_seed_1() {
    run(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_seed_2() {
    run(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_seed_3() {
    run(3).await;
}

/// The seed in `QKV_CHAOS_SEED` (what `scripts/chaos.sh` and a failing run's rerun line use).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by scripts/chaos.sh with QKV_CHAOS_SEED set"]
async fn seed_from_env() {
    let seed = std::env::var("QKV_CHAOS_SEED")
        .expect("QKV_CHAOS_SEED")
        .parse()
        .expect("QKV_CHAOS_SEED must be a number");
    run(seed).await;
}

#[test]
fn a_seed_fixes_the_schedule() {
    let a: Vec<String> = schedule(7, Duration::from_secs(30))
        .iter()
        .map(ToString::to_string)
        .collect();
    let b: Vec<String> = schedule(7, Duration::from_secs(30))
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(a, b);
    assert_ne!(
        a,
        schedule(8, Duration::from_secs(30))
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
}
