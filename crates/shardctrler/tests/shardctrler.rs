//! Scenario tests adapted from the MIT 6.824 shardctrler suite (`TestBasic`, `TestMulti`),
//! minus concurrency and failures, which belong to the Raft wrapper; plus the validation and
//! exactly-once rules of this crate.

mod support;

use std::collections::BTreeMap;

use quorumkv_shardctrler::{
    Applied, Command, Config, Controller, CtrlError, RequestId, Snapshot, DEFAULT_SHARDS,
};
use support::{check_balanced, check_owners, min_moves, moved};

/// A client that numbers its requests, as the real clerk will.
struct Clerk {
    client: u64,
    seq: u64,
}

impl Clerk {
    fn new(client: u64) -> Self {
        Clerk { client, seq: 0 }
    }

    fn next(&mut self) -> RequestId {
        self.seq += 1;
        RequestId {
            client: self.client,
            seq: self.seq,
        }
    }

    fn join(&mut self, c: &mut Controller, gids: &[u64]) -> Result<Applied, CtrlError> {
        let groups = gids.iter().map(|g| (*g, servers(*g))).collect();
        let id = self.next();
        c.apply(Command::Join { id, groups })
    }

    fn leave(&mut self, c: &mut Controller, gids: &[u64]) -> Result<Applied, CtrlError> {
        let id = self.next();
        c.apply(Command::Leave {
            id,
            gids: gids.to_vec(),
        })
    }

    fn mov(&mut self, c: &mut Controller, shard: u64, gid: u64) -> Result<Applied, CtrlError> {
        let id = self.next();
        c.apply(Command::Move { id, shard, gid })
    }
}

fn servers(gid: u64) -> Vec<String> {
    (0..3).map(|r| format!("g{gid}-r{r}.kv:7000")).collect()
}

fn latest(c: &Controller) -> Config {
    c.query(None).unwrap().clone()
}

#[test]
fn basic_join_leave() {
    let mut c = Controller::new();
    let mut ck = Clerk::new(1);
    assert_eq!(c.num_shards(), DEFAULT_SHARDS);
    check_balanced(&latest(&c), &[]);
    assert_eq!(latest(&c), Config::initial(DEFAULT_SHARDS));

    assert_eq!(ck.join(&mut c, &[1]), Ok(Applied { num: 1 }));
    check_balanced(&latest(&c), &[1]);
    assert_eq!(ck.join(&mut c, &[2]), Ok(Applied { num: 2 }));
    check_balanced(&latest(&c), &[1, 2]);
    let cfg = latest(&c);
    assert_eq!(cfg.groups[&1], servers(1));
    assert_eq!(cfg.groups[&2], servers(2));

    assert_eq!(ck.leave(&mut c, &[1]), Ok(Applied { num: 3 }));
    check_balanced(&latest(&c), &[2]);
    // The last group cannot leave: its shards, data included, would have no owner.
    let err = ck.leave(&mut c, &[2]).unwrap_err();
    assert!(err.to_string().contains("no owner"), "{err}");
    assert_eq!(latest(&c).num, 3);
    assert!(latest(&c).shards.iter().all(|s| *s == 2));
    // Nor can all of several groups at once.
    ck.join(&mut c, &[1]).unwrap();
    assert!(ck.leave(&mut c, &[1, 2]).is_err());
    check_balanced(&latest(&c), &[1, 2]);
}

#[test]
fn historical_queries_never_change() {
    let mut c = Controller::with_shards(10).unwrap();
    let mut ck = Clerk::new(1);
    let mut seen = vec![latest(&c)];
    for step in [&[1u64, 2][..], &[3], &[4, 5]] {
        ck.join(&mut c, step).unwrap();
        seen.push(latest(&c));
    }
    ck.mov(&mut c, 0, 5).unwrap();
    seen.push(latest(&c));
    ck.leave(&mut c, &[1, 3]).unwrap();
    seen.push(latest(&c));
    ck.leave(&mut c, &[2, 4]).unwrap();
    seen.push(latest(&c));

    for (num, cfg) in seen.iter().enumerate() {
        assert_eq!(cfg.num, num as u64);
        assert_eq!(c.query(Some(num as u64)).unwrap(), cfg);
    }
    assert_eq!(c.history(), &seen[..]);
    // None and any number past the end mean "latest".
    assert_eq!(
        c.query(Some(seen.len() as u64)).unwrap(),
        seen.last().unwrap()
    );
    assert_eq!(c.query(Some(u64::MAX)).unwrap(), seen.last().unwrap());
}

#[test]
fn moves_are_respected_until_the_next_join() {
    let n = DEFAULT_SHARDS as u64;
    let mut c = Controller::new();
    let mut ck = Clerk::new(1);
    ck.join(&mut c, &[3]).unwrap();
    ck.join(&mut c, &[4]).unwrap();
    for shard in 0..n {
        let gid = if shard < n / 2 { 3 } else { 4 };
        let before = latest(&c);
        ck.mov(&mut c, shard, gid).unwrap();
        let after = latest(&c);
        assert_eq!(after.num, before.num + 1);
        assert_eq!(after.owner(shard), Some(gid));
        assert_eq!(after.groups, before.groups);
        assert!(moved(&before, &after) <= 1);
    }
    let pinned = latest(&c);
    assert_eq!(pinned.shards_of(3), (0..n / 2).collect::<Vec<_>>());
    assert_eq!(pinned.shards_of(4), (n / 2..n).collect::<Vec<_>>());

    // Moving a shard to its current owner is still a new (identical) configuration.
    ck.mov(&mut c, 0, 3).unwrap();
    assert_eq!(latest(&c).shards, pinned.shards);
    assert_eq!(latest(&c).num, pinned.num + 1);

    // Unbalance by moves, then Join rebalances from there with minimal moves.
    for shard in 0..8 {
        ck.mov(&mut c, shard, 4).unwrap();
    }
    let before = latest(&c);
    ck.join(&mut c, &[5]).unwrap();
    let after = latest(&c);
    check_balanced(&after, &[3, 4, 5]);
    assert_eq!(moved(&before, &after), min_moves(&before, &after));
    ck.leave(&mut c, &[3, 4]).unwrap();
    check_balanced(&latest(&c), &[5]);
}

#[test]
fn minimal_transfers_after_joins_and_leaves() {
    let mut c = Controller::new();
    let mut ck = Clerk::new(1);
    let first: Vec<u64> = (1..=5).collect();
    let second: Vec<u64> = (6..=10).collect();
    for g in &first {
        ck.join(&mut c, &[*g]).unwrap();
    }
    let c1 = latest(&c);
    for g in &second {
        let before = latest(&c);
        ck.join(&mut c, &[*g]).unwrap();
        let after = latest(&c);
        assert_eq!(moved(&before, &after), min_moves(&before, &after));
    }
    let c2 = latest(&c);
    check_balanced(&c2, &(1..=10).collect::<Vec<_>>());
    // 6.824: a shard that ends on an old group never left it.
    for shard in 0..c.num_shards() {
        if c2.shards[shard] <= 5 {
            assert_eq!(c1.shards[shard], c2.shards[shard], "shard {shard}");
        }
    }

    for g in &second {
        let before = latest(&c);
        ck.leave(&mut c, &[*g]).unwrap();
        let after = latest(&c);
        assert_eq!(moved(&before, &after), min_moves(&before, &after));
        // Only the leaver's shards moved.
        assert_eq!(moved(&before, &after), before.shards_of(*g).len());
    }
    let c3 = latest(&c);
    check_balanced(&c3, &first);
    for shard in 0..c.num_shards() {
        if c2.shards[shard] <= 5 {
            assert_eq!(c2.shards[shard], c3.shards[shard], "shard {shard}");
        }
    }
}

#[test]
fn multi_group_join_leave_with_minimal_transfers() {
    let mut c = Controller::new();
    let mut ck = Clerk::new(1);
    ck.join(&mut c, &[1, 2]).unwrap();
    check_balanced(&latest(&c), &[1, 2]);
    ck.join(&mut c, &[3]).unwrap();
    check_balanced(&latest(&c), &[1, 2, 3]);
    let c1 = latest(&c);

    ck.join(&mut c, &[4, 5, 6, 7]).unwrap();
    let c2 = latest(&c);
    check_balanced(&c2, &[1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(moved(&c1, &c2), min_moves(&c1, &c2));
    for shard in 0..c.num_shards() {
        if c2.shards[shard] <= 3 {
            assert_eq!(
                c1.shards[shard], c2.shards[shard],
                "multijoin moved shard {shard}"
            );
        }
    }

    ck.leave(&mut c, &[4, 5, 6, 7]).unwrap();
    let c3 = latest(&c);
    check_balanced(&c3, &[1, 2, 3]);
    assert_eq!(moved(&c2, &c3), min_moves(&c2, &c3));
    for shard in 0..c.num_shards() {
        if c2.shards[shard] <= 3 {
            assert_eq!(
                c2.shards[shard], c3.shards[shard],
                "multileave moved shard {shard}"
            );
        }
    }
    ck.leave(&mut c, &[1, 2]).unwrap();
    check_balanced(&latest(&c), &[3]);
}

#[test]
fn lower_bound_is_met_for_1024_shards() {
    let mut c = Controller::with_shards(1024).unwrap();
    let mut ck = Clerk::new(1);
    ck.join(&mut c, &[1, 2, 3]).unwrap();
    let before = latest(&c);
    ck.join(&mut c, &[4]).unwrap();
    // 1024 = 4 * 256: three groups of 342/341/341 each give up 86/85/85.
    assert_eq!(moved(&before, &latest(&c)), 256);
    let before = latest(&c);
    ck.leave(&mut c, &[2]).unwrap();
    assert_eq!(moved(&before, &latest(&c)), 256);
}

#[test]
fn more_groups_than_shards() {
    let mut c = Controller::with_shards(4).unwrap();
    let mut ck = Clerk::new(1);
    ck.join(&mut c, &[1, 2, 3]).unwrap();
    ck.join(&mut c, &[4, 5, 6]).unwrap();
    let cfg = latest(&c);
    check_balanced(&cfg, &[1, 2, 3, 4, 5, 6]);
    // The three holders keep theirs; of the empty newcomers the lowest gid gets the spare.
    let counts = support::counts(&cfg);
    assert_eq!(
        counts,
        BTreeMap::from([(1, 1), (2, 1), (3, 1), (4, 1), (5, 0), (6, 0)])
    );
    // Leaving a holder hands its shard to the lowest idle gid and moves nothing else.
    let holder = cfg.shards[0];
    ck.leave(&mut c, &[holder]).unwrap();
    let after = latest(&c);
    assert_eq!(after.shards[0], 5);
    assert_eq!(moved(&cfg, &after), 1);
    // Leaving an idle group moves nothing.
    ck.leave(&mut c, &[6]).unwrap();
    assert_eq!(latest(&c).shards, after.shards);
    let remaining: Vec<u64> = [1, 2, 3, 4, 5]
        .into_iter()
        .filter(|g| *g != holder)
        .collect();
    check_balanced(&latest(&c), &remaining);

    // Replaying the same sequence elsewhere chooses the same idle groups.
    let mut d = Controller::with_shards(4).unwrap();
    let mut ck = Clerk::new(1);
    ck.join(&mut d, &[1, 2, 3]).unwrap();
    ck.join(&mut d, &[4, 5, 6]).unwrap();
    assert_eq!(latest(&d), cfg);
}

#[test]
fn every_validation_error_changes_nothing() {
    let mut c = Controller::with_shards(10).unwrap();
    let mut ck = Clerk::new(1);
    ck.join(&mut c, &[1, 2]).unwrap();
    let history = c.history().to_vec();

    let g = |pairs: &[(u64, &[&str])]| -> BTreeMap<u64, Vec<String>> {
        pairs
            .iter()
            .map(|(gid, s)| (*gid, s.iter().map(|a| a.to_string()).collect()))
            .collect()
    };
    let cases: Vec<(Command, &str)> = vec![
        (
            Command::Join {
                id: ck.next(),
                groups: g(&[]),
            },
            "join names no groups",
        ),
        (
            Command::Join {
                id: ck.next(),
                groups: g(&[(0, &["a:1"])]),
            },
            "gid 0 is reserved",
        ),
        (
            Command::Join {
                id: ck.next(),
                groups: g(&[(2, &["a:1"])]),
            },
            "group 2 is already in configuration 1",
        ),
        (
            Command::Join {
                id: ck.next(),
                groups: g(&[(3, &[])]),
            },
            "group 3 lists no servers",
        ),
        (
            Command::Join {
                id: ck.next(),
                groups: g(&[(3, &["a:1", "A:1"])]),
            },
            "lists server \"A:1\" more than once",
        ),
        (
            Command::Join {
                id: ck.next(),
                groups: g(&[(3, &["a:1"]), (4, &["a:1"])]),
            },
            "server \"a:1\" already belongs to group 3",
        ),
        (
            Command::Join {
                id: ck.next(),
                groups: g(&[(3, &["g1-r0.kv:7000"])]),
            },
            "already belongs to group 1",
        ),
        (
            Command::Join {
                id: ck.next(),
                groups: g(&[(3, &["nohost"])]),
            },
            "\"nohost\" expected host:port",
        ),
        (
            Command::Join {
                id: ck.next(),
                groups: g(&[(3, &["h:0"])]),
            },
            "port 0",
        ),
        (
            Command::Join {
                id: ck.next(),
                groups: g(&[(3, &["h:70000"])]),
            },
            "out of range 1..=65535",
        ),
        (
            Command::Join {
                id: ck.next(),
                groups: g(&[(3, &["h@x:80"])]),
            },
            "character '@'",
        ),
        (
            Command::Join {
                id: ck.next(),
                groups: g(&[(3, &["::1:80"])]),
            },
            "must be bracketed",
        ),
        (
            Command::Join {
                id: ck.next(),
                groups: g(&[(3, &["a:1"]), (4, &["bad"])]),
            },
            "group 4",
        ),
        (
            Command::Leave {
                id: ck.next(),
                gids: vec![],
            },
            "leave names no groups",
        ),
        (
            Command::Leave {
                id: ck.next(),
                gids: vec![9],
            },
            "group 9 is not in configuration 1",
        ),
        (
            Command::Leave {
                id: ck.next(),
                gids: vec![0],
            },
            "gid 0 is reserved",
        ),
        (
            Command::Leave {
                id: ck.next(),
                gids: vec![1, 1],
            },
            "group 1 is listed more than once",
        ),
        (
            Command::Leave {
                id: ck.next(),
                gids: vec![1, 9],
            },
            "group 9 is not in",
        ),
        (
            Command::Move {
                id: ck.next(),
                shard: 10,
                gid: 1,
            },
            "shard 10 is out of range 0..10",
        ),
        (
            Command::Move {
                id: ck.next(),
                shard: u64::MAX,
                gid: 1,
            },
            "out of range",
        ),
        (
            Command::Move {
                id: ck.next(),
                shard: 0,
                gid: 9,
            },
            "group 9 is not in configuration 1",
        ),
        (
            Command::Move {
                id: ck.next(),
                shard: 0,
                gid: 0,
            },
            "gid 0 is reserved",
        ),
    ];
    for (cmd, want) in cases {
        let id = cmd.id();
        match c.apply(cmd.clone()) {
            Err(CtrlError::InvalidArgument(msg)) => {
                assert!(msg.contains(want), "{cmd:?}: {msg:?} lacks {want:?}")
            }
            other => panic!("{cmd:?} gave {other:?}"),
        }
        assert_eq!(c.history(), &history[..], "{cmd:?} changed history");
        // Recorded for dedup: the retry gets the identical refusal.
        let session = c.session(id.client).unwrap().clone();
        assert_eq!(session.last_seq, id.seq);
        assert_eq!(c.apply(cmd.clone()), session.last_result.clone());
    }
    // Join validation is all-or-nothing: the valid group 3 in a rejected join was not added.
    assert!(!latest(&c).groups.contains_key(&3));
    assert!(Controller::with_shards(0).is_err());
}

#[test]
fn retried_commands_apply_once() {
    let mut c = Controller::with_shards(10).unwrap();
    let a = RequestId { client: 7, seq: 1 };
    let join = |id, gid: u64| Command::Join {
        id,
        groups: BTreeMap::from([(gid, servers(gid))]),
    };
    assert_eq!(c.apply(join(a, 1)), Ok(Applied { num: 1 }));
    // Raft committed it again: same answer, no new configuration.
    assert_eq!(c.apply(join(a, 1)), Ok(Applied { num: 1 }));
    assert_eq!(c.history().len(), 2);

    // Another client's Join of that gid with other servers is refused; with the same
    // servers it is a no-op that names the latest configuration (scripts repeat joins).
    let b = RequestId { client: 8, seq: 1 };
    let other = Command::Join {
        id: b,
        groups: BTreeMap::from([(1, servers(9))]),
    };
    let refused = c.apply(other.clone());
    assert!(matches!(refused, Err(CtrlError::InvalidArgument(_))));
    let again = RequestId { client: 9, seq: 1 };
    assert_eq!(c.apply(join(again, 1)), Ok(Applied { num: 1 }));
    assert_eq!(c.history().len(), 2);

    // A refusal stays final for that request id even once the command would succeed.
    c.apply(join(RequestId { client: 7, seq: 2 }, 2)).unwrap();
    c.apply(Command::Leave {
        id: RequestId { client: 7, seq: 3 },
        gids: vec![1],
    })
    .unwrap();
    assert_eq!(c.apply(other), refused);
    assert_eq!(c.history().len(), 4);

    // A delayed duplicate of an older request is superseded, and changes nothing.
    let a4 = RequestId { client: 7, seq: 4 };
    assert_eq!(c.apply(join(a4, 3)), Ok(Applied { num: 4 }));
    let before = c.clone();
    assert_eq!(
        c.apply(join(a, 5)),
        Err(CtrlError::Superseded {
            client: 7,
            seq: 1,
            last_seq: 4
        })
    );
    assert_eq!(c, before);
    // Sequence numbers may skip; only order matters.
    let a9 = RequestId { client: 7, seq: 9 };
    assert_eq!(c.apply(join(a9, 4)), Ok(Applied { num: 5 }));
}

#[test]
fn idle_sessions_expire_by_the_log_clock_and_the_same_on_every_replica() {
    use quorumkv_shardctrler::SESSION_TTL_MS;
    let mut a = Controller::with_shards(4).unwrap();
    let join = |client, seq, gid: u64| Command::Join {
        id: RequestId { client, seq },
        groups: BTreeMap::from([(gid, servers(gid))]),
    };
    let t0 = 1_000_000;
    a.apply_at(join(1, 1, 1), t0).unwrap();
    a.apply_at(join(2, 1, 2), t0 + SESSION_TTL_MS / 2).unwrap();
    assert_eq!(a.session_count(), 2);
    // A replica restored from a snapshot taken now sweeps at the same points of the log.
    let mut b = Controller::restore(a.snapshot()).unwrap();
    // Client 1 is idle past the TTL when client 3 writes: swept; client 2 is not yet.
    for c in [&mut a, &mut b] {
        c.apply_at(join(3, 1, 3), t0 + SESSION_TTL_MS + 61_000)
            .unwrap();
        assert_eq!(c.session_count(), 2, "client 1's idle session was kept");
        assert!(c.session(1).is_none() && c.session(2).is_some());
    }
    assert_eq!(a, b);
}

#[test]
fn snapshot_round_trips_and_corruption_is_refused() {
    let mut c = Controller::with_shards(8).unwrap();
    let mut ck = Clerk::new(3);
    ck.join(&mut c, &[1, 2, 3]).unwrap();
    ck.mov(&mut c, 0, 3).unwrap();
    ck.leave(&mut c, &[9]).unwrap_err();
    let snap = c.snapshot();
    assert_eq!(Controller::restore(snap.clone()).unwrap(), c);

    let corrupt = |f: &dyn Fn(&mut Snapshot)| {
        let mut s = snap.clone();
        f(&mut s);
        assert!(matches!(
            Controller::restore(s),
            Err(CtrlError::CorruptSnapshot(_))
        ));
    };
    corrupt(&|s| s.num_shards = 0);
    corrupt(&|s| s.history.clear());
    corrupt(&|s| s.history[1].num = 5);
    corrupt(&|s| s.history[2].shards[0] = 42);
    corrupt(&|s| {
        s.history[2].shards.pop();
    });
    corrupt(&|s| {
        s.history[1].groups.insert(4, servers(1));
    });
    corrupt(&|s| {
        s.sessions.get_mut(&3).unwrap().last_result = Ok(Applied { num: 99 });
    });
    check_owners(&latest(&c));
}
