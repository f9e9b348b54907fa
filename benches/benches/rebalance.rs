//! Shard-controller rebalancing over 1,024 shards.
//!
//! For `k` existing groups, measures one `Join` of a new group and one `Leave` of an existing
//! one, both through `Controller::apply` (validation, rebalance, history append), plus the bare
//! `rebalance` function. Each iteration starts from a fresh clone of the same controller, made
//! outside the timed section, and hands the controller back so that dropping it is not timed
//! either: every sample measures the same transition and nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use quorumkv_shardctrler::{rebalance, Command, Controller, RequestId};

const SHARDS: usize = 1024;
const GROUP_COUNTS: [u64; 4] = [1, 10, 50, 200];

fn servers(gid: u64) -> Vec<String> {
    (0..3).map(|r| format!("g{gid}-r{r}.kv:7000")).collect()
}

/// A controller over `SHARDS` shards with groups `1..=k` joined one at a time, so the starting
/// assignment is the one a real cluster grown group by group would have.
fn controller_with_groups(k: u64) -> Controller {
    let mut c = Controller::with_shards(SHARDS).expect("positive shard count");
    for gid in 1..=k {
        let id = RequestId {
            client: 1,
            seq: gid,
        };
        let groups = BTreeMap::from([(gid, servers(gid))]);
        c.apply(Command::Join { id, groups }).expect("valid join");
    }
    c
}

fn bench_rebalance(c: &mut Criterion) {
    let mut group = c.benchmark_group("rebalance_1024_shards");
    for k in GROUP_COUNTS {
        let base = controller_with_groups(k);
        let next = RequestId { client: 2, seq: 1 };

        group.bench_with_input(BenchmarkId::new("join_one", k), &k, |b, &k| {
            let groups = BTreeMap::from([(k + 1, servers(k + 1))]);
            b.iter_batched(
                || (base.clone(), groups.clone()),
                |(mut ctrl, groups)| {
                    let applied = ctrl.apply(Command::Join { id: next, groups });
                    (ctrl, applied)
                },
                BatchSize::SmallInput,
            )
        });

        group.bench_with_input(BenchmarkId::new("leave_one", k), &k, |b, &k| {
            b.iter_batched(
                || base.clone(),
                |mut ctrl| {
                    let applied = ctrl.apply(Command::Leave {
                        id: next,
                        gids: vec![k],
                    });
                    (ctrl, applied)
                },
                BatchSize::SmallInput,
            )
        });

        let shards = base.latest().shards.clone();
        let joined: BTreeSet<u64> = (1..=k + 1).collect();
        group.bench_with_input(BenchmarkId::new("bare_join_one", k), &k, |b, _| {
            b.iter(|| rebalance(black_box(&shards), black_box(&joined)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = bench_rebalance
}
criterion_main!(benches);
