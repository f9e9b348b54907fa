//! Property tests: random Join/Leave/Move/SetServers sequences, invalid and retried ones included, keep
//! every invariant after every step, and replaying a sequence reproduces the same controller.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use quorumkv_shardctrler::{Applied, Command, Config, Controller, CtrlError, RequestId};
use support::{check_balanced, check_owners, min_moves, moved};

/// Server addresses to draw from, each with the identity of the server it names (`None` when
/// malformed). Several spellings share an identity, to exercise duplicate detection.
const POOL: &[(&str, Option<u8>)] = &[
    ("s0.kv:7000", Some(0)),
    ("s1.kv:7000", Some(1)),
    ("s2.kv:7000", Some(2)),
    ("s3.kv:7000", Some(3)),
    ("s4.kv:7000", Some(4)),
    ("s5.kv:7000", Some(5)),
    ("10.0.0.6:7000", Some(6)),
    ("[::7]:7000", Some(7)),
    ("[0::7]:7000", Some(7)),
    ("S0.KV:7000", Some(0)),
    ("s1.kv:07000", Some(1)),
    ("s0.kv:7001", Some(8)),
    ("bad", None),
    ("h:0", None),
    ("10.0.0.300:1", None),
];

/// A gid as drawn: usually one of the live groups (so Leave and Move mostly succeed),
/// sometimes any number, including 0 and absent gids.
#[derive(Debug, Clone)]
enum Gid {
    Live(prop::sample::Index),
    Raw(u64),
}

/// A joining group's servers: usually its own valid addresses, sometimes picks from `POOL`
/// (malformed, duplicated or already taken).
#[derive(Debug, Clone)]
enum Servers {
    Own(usize),
    Pool(Vec<usize>),
}

#[derive(Debug, Clone)]
enum Op {
    Join {
        client: u64,
        groups: Vec<(u64, Servers)>,
    },
    Leave {
        client: u64,
        gids: Vec<Gid>,
    },
    Move {
        client: u64,
        shard: u64,
        gid: Gid,
    },
    SetServers {
        client: u64,
        gid: Gid,
        servers: Servers,
    },
    /// Re-deliver the client's last command under its last seq.
    Retry {
        client: u64,
    },
    /// Deliver the client's last command under an older seq.
    Stale {
        client: u64,
    },
}

/// Gids stay below 11 so that `min_moves` can brute-force over at most 10 groups.
fn gid() -> impl Strategy<Value = Gid> {
    prop_oneof![
        4 => any::<prop::sample::Index>().prop_map(Gid::Live),
        1 => (0u64..11).prop_map(Gid::Raw),
    ]
}

fn servers() -> impl Strategy<Value = Servers> {
    prop_oneof![
        6 => (1usize..3).prop_map(Servers::Own),
        1 => prop::collection::vec(0..POOL.len(), 0..3).prop_map(Servers::Pool),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let client = 0u64..3;
    prop_oneof![
        4 => (client.clone(), prop::collection::vec((0u64..11, servers()), 0..4))
            .prop_map(|(client, groups)| Op::Join { client, groups }),
        3 => (client.clone(), prop::collection::vec(gid(), 0..3))
            .prop_map(|(client, gids)| Op::Leave { client, gids }),
        2 => (client.clone(), 0u64..14, gid())
            .prop_map(|(client, shard, gid)| Op::Move { client, shard, gid }),
        2 => (client.clone(), gid(), servers())
            .prop_map(|(client, gid, servers)| Op::SetServers { client, gid, servers }),
        1 => client.clone().prop_map(|client| Op::Retry { client }),
        1 => client.prop_map(|client| Op::Stale { client }),
    ]
}

fn resolve(gid: &Gid, prev: &Config) -> u64 {
    match gid {
        Gid::Live(index) if prev.groups.is_empty() => index.index(11) as u64,
        Gid::Live(index) => *prev
            .groups
            .keys()
            .nth(index.index(prev.groups.len()))
            .unwrap(),
        Gid::Raw(g) => *g,
    }
}

fn server_list(gid: u64, servers: &Servers) -> Vec<String> {
    match servers {
        Servers::Own(n) => (0..*n).map(|r| format!("g{gid}-r{r}.kv:7000")).collect(),
        Servers::Pool(picks) => picks.iter().map(|i| POOL[*i].0.to_string()).collect(),
    }
}

/// Whether `cmd` should be accepted by a controller whose latest configuration is `prev`,
/// decided without the crate's own validation code (server identities come from `POOL`).
fn expect_ok(cmd: &Command, prev: &Config) -> bool {
    // Own addresses `g{gid}-r{r}.kv:7000` are valid and distinct from each other and POOL.
    let identity = |addr: &String| match POOL.iter().find(|p| p.0 == addr) {
        Some((_, id)) => id.map(|id| id.to_string()),
        None => Some(addr.clone()),
    };
    match cmd {
        Command::Join { groups, .. } => {
            let mut used: BTreeSet<String> = prev
                .groups
                .values()
                .flatten()
                .filter_map(identity)
                .collect();
            // Groups already in with the same servers are skipped (a repeated join).
            let groups: BTreeMap<_, _> = groups
                .iter()
                .filter(|(gid, servers)| prev.groups.get(gid) != Some(servers))
                .collect();
            (!groups.is_empty() || join_is_repeat(cmd, prev))
                && groups.iter().all(|(gid, servers)| {
                    **gid != 0 && !prev.groups.contains_key(gid) && !servers.is_empty()
                })
                && groups
                    .values()
                    .flat_map(|s| s.iter())
                    .all(|addr| identity(addr).is_some_and(|id| used.insert(id)))
        }
        Command::Leave { gids, .. } => {
            let distinct: BTreeSet<u64> = gids.iter().copied().collect();
            // Never every group: the shards would have no owner.
            !gids.is_empty()
                && distinct.len() == gids.len()
                && distinct.iter().all(|g| prev.groups.contains_key(g))
                && distinct.len() < prev.groups.len()
        }
        Command::Move { shard, gid, .. } => {
            (*shard as usize) < prev.shards.len() && prev.groups.contains_key(gid)
        }
        Command::SetServers { gid, servers, .. } => {
            let mut used: BTreeSet<String> = prev
                .groups
                .iter()
                .filter(|(g, _)| *g != gid)
                .flat_map(|(_, s)| s)
                .filter_map(identity)
                .collect();
            prev.groups.contains_key(gid)
                && !servers.is_empty()
                && servers
                    .iter()
                    .all(|addr| identity(addr).is_some_and(|id| used.insert(id)))
        }
    }
}

/// A Join (non-empty) whose every group is already in with the same servers: a no-op.
fn join_is_repeat(cmd: &Command, prev: &Config) -> bool {
    matches!(cmd, Command::Join { groups, .. }
        if !groups.is_empty() && groups.iter().all(|(g, s)| prev.groups.get(g) == Some(s)))
}

/// Applies `ops` to a fresh controller, checking every invariant after every step.
fn run(num_shards: usize, ops: &[Op]) -> Controller {
    let mut c = Controller::with_shards(num_shards).unwrap();
    // client → (last seq, last command, its result)
    let mut last: BTreeMap<u64, (u64, Command, Result<Applied, CtrlError>)> = BTreeMap::new();
    for op in ops {
        let before = c.clone();
        let prev = before.query(None).unwrap().clone();
        let (client, cmd) = match op {
            Op::Retry { client } | Op::Stale { client } => {
                let Some((seq, cmd, result)) = last.get(client).cloned() else {
                    continue;
                };
                if matches!(op, Op::Retry { .. }) {
                    assert_eq!(
                        c.apply(cmd),
                        result,
                        "retry must return the recorded result"
                    );
                } else {
                    let stale = with_seq(cmd, seq - 1);
                    assert!(matches!(c.apply(stale), Err(CtrlError::Superseded { .. })));
                }
                assert_eq!(c, before, "a duplicate changed state");
                continue;
            }
            Op::Join { client, groups } => {
                let groups = groups
                    .iter()
                    .map(|(gid, servers)| (*gid, server_list(*gid, servers)))
                    .collect();
                (
                    *client,
                    Command::Join {
                        id: id(*client, 0),
                        groups,
                    },
                )
            }
            Op::Leave { client, gids } => (
                *client,
                Command::Leave {
                    id: id(*client, 0),
                    gids: gids.iter().map(|g| resolve(g, &prev)).collect(),
                },
            ),
            Op::Move { client, shard, gid } => (
                *client,
                Command::Move {
                    id: id(*client, 0),
                    shard: *shard,
                    gid: resolve(gid, &prev),
                },
            ),
            Op::SetServers {
                client,
                gid,
                servers,
            } => {
                let gid = resolve(gid, &prev);
                (
                    *client,
                    Command::SetServers {
                        id: id(*client, 0),
                        gid,
                        servers: server_list(gid, servers),
                    },
                )
            }
        };
        let seq = last.get(&client).map_or(1, |l| l.0 + 1);
        let cmd = with_seq(cmd, seq);
        let mut live: BTreeSet<u64> = prev.groups.keys().copied().collect();
        let ok = expect_ok(&cmd, &prev);
        let result = c.apply(cmd.clone());
        assert_eq!(result.is_ok(), ok, "{cmd:?} on {prev:?} gave {result:?}");
        last.insert(client, (seq, cmd.clone(), result.clone()));

        let history = c.history();
        assert_eq!(
            &history[..before.history().len()],
            before.history(),
            "history rewritten"
        );
        let next = c.query(None).unwrap().clone();
        match result {
            Err(CtrlError::InvalidArgument(_)) => {
                assert_eq!(history, before.history(), "a refusal changed history");
                continue;
            }
            Err(e) => panic!("unexpected {e:?}"),
            Ok(Applied { num }) if join_is_repeat(&cmd, &prev) => {
                assert_eq!(history, before.history(), "a repeated join changed history");
                assert_eq!(num, next.num);
                continue;
            }
            Ok(Applied { num }) => {
                assert_eq!(history.len(), before.history().len() + 1);
                assert_eq!(num, next.num);
                assert_eq!(num as usize, history.len() - 1);
            }
        }
        check_owners(&next);
        match &cmd {
            Command::Join { groups, .. } => {
                live.extend(groups.keys());
                for (gid, servers) in groups {
                    assert_eq!(&next.groups[gid], servers);
                }
                check_balanced(&next, &live.iter().copied().collect::<Vec<_>>());
                assert_eq!(
                    moved(&prev, &next),
                    min_moves(&prev, &next),
                    "join not minimal"
                );
            }
            Command::Leave { gids, .. } => {
                for g in gids {
                    live.remove(g);
                }
                check_balanced(&next, &live.iter().copied().collect::<Vec<_>>());
                assert_eq!(
                    moved(&prev, &next),
                    min_moves(&prev, &next),
                    "leave not minimal"
                );
            }
            Command::Move { shard, gid, .. } => {
                assert_eq!(next.groups, prev.groups);
                assert_eq!(next.owner(*shard), Some(*gid));
                assert!(moved(&prev, &next) <= 1);
            }
            Command::SetServers { gid, servers, .. } => {
                assert_eq!(next.shards, prev.shards, "set-servers moved shards");
                let mut expected = prev.groups.clone();
                expected.insert(*gid, servers.clone());
                assert_eq!(next.groups, expected);
            }
        }
    }
    // Every configuration ever created still satisfies the ownership invariant.
    for cfg in c.history() {
        check_owners(cfg);
    }
    c
}

fn id(client: u64, seq: u64) -> RequestId {
    RequestId { client, seq }
}

fn with_seq(mut cmd: Command, seq: u64) -> Command {
    match &mut cmd {
        Command::Join { id, .. }
        | Command::Leave { id, .. }
        | Command::Move { id, .. }
        | Command::SetServers { id, .. } => id.seq = seq,
    }
    cmd
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_sequences_keep_invariants_and_replay_identically(
        num_shards in 1usize..=12,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let first = run(num_shards, &ops);
        let second = run(num_shards, &ops);
        prop_assert_eq!(first.history(), second.history());
        prop_assert_eq!(&first, &second);
        let restored = Controller::restore(first.snapshot()).unwrap();
        prop_assert_eq!(restored, first);
    }

    /// `rebalance` alone, from arbitrary (even unbalanced or orphaned) assignments.
    #[test]
    fn rebalance_is_balanced_and_minimal_from_any_start(
        owners in prop::collection::vec(0u64..10, 1..40),
        groups in prop::collection::btree_set(1u64..10, 0..8),
    ) {
        let next = quorumkv_shardctrler::rebalance(&owners, &groups);
        let before = config(owners, &groups);
        let after = config(next, &groups);
        check_owners(&after);
        check_balanced(&after, &groups.iter().copied().collect::<Vec<_>>());
        prop_assert_eq!(moved(&before, &after), min_moves(&before, &after));
    }
}

fn config(shards: Vec<u64>, groups: &BTreeSet<u64>) -> Config {
    Config {
        num: 0,
        shards,
        groups: groups
            .iter()
            .map(|g| (*g, vec![format!("g{g}:1")]))
            .collect(),
    }
}
