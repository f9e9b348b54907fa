//! Cluster tests of the raft core: real members on 127.0.0.1, real gRPC over mutual TLS, sled
//! storage, faults injected by the test network. Every wait is bounded and awaits a condition.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use quorumkv_raft_core::{RaftError, Role};
use quorumkv_testkit::cluster::WAIT;
use quorumkv_testkit::{ClusterOptions, KvCommand, TestCluster};

fn append(key: &str, value: &str) -> KvCommand {
    KvCommand::Append {
        key: key.into(),
        value: value.into(),
    }
}

/// Small snapshots so that tests exercise snapshotting and compaction.
fn snapshotting(bytes: u64, keep: u64) -> ClusterOptions {
    ClusterOptions {
        tweak: std::sync::Arc::new(move |c| {
            c.snapshot_log_bytes = bytes;
            c.keep_entries_after_snapshot = keep;
        }),
    }
}

fn assert_same_state(c: &TestCluster, ids: &[u64]) {
    let first = c.state(ids[0]);
    assert!(first.violations.is_empty(), "{:?}", first.violations);
    for id in &ids[1..] {
        let s = c.state(*id);
        assert!(s.violations.is_empty(), "member {id}: {:?}", s.violations);
        assert_eq!(s.data, first.data, "member {id} diverged from {}", ids[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elects_one_leader_and_replicates() {
    let c = TestCluster::start(3, ClusterOptions::default()).await;
    let leader = c.wait_leader(WAIT).await;
    c.wait_until(WAIT, "every member to know the leader", |st| {
        st.values()
            .all(|s| s.leader_id == Some(leader))
            .then_some(())
    })
    .await;
    for i in 0..50 {
        c.put(&format!("k{i}"), &format!("v{i}")).await;
    }
    assert_eq!(c.get("k49").await.as_deref(), Some("v49"));
    let commit = c.node(leader).status().commit_index;
    c.wait_applied(&[1, 2, 3], commit).await;
    assert_same_state(&c, &[1, 2, 3]);
    assert_eq!(c.state(2).data.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_on_a_follower_name_the_leader() {
    let c = TestCluster::start(3, ClusterOptions::default()).await;
    let leader = c.wait_leader(WAIT).await;
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    c.wait_until(WAIT, "the follower to know the leader", |st| {
        (st[&follower].leader_id == Some(leader)).then_some(())
    })
    .await;
    let err = c
        .node(follower)
        .propose(KvCommand::Pad(1).encode())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        RaftError::NotLeader {
            leader_id: Some(leader),
            leader_addr: Some(c.addr(leader).to_string())
        }
    );
    // A follower can still serve a linearizable read: raft-rs forwards its ReadIndex.
    c.put("a", "1").await;
    let v = c
        .node(follower)
        .read(|sm| sm.get("a").cloned())
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_elects_a_new_leader_and_the_old_one_catches_up() {
    let mut c = TestCluster::start(3, ClusterOptions::default()).await;
    c.put("before", "1").await;
    let old = c.wait_leader(WAIT).await;
    c.stop(old).await;
    let new = c.wait_leader(WAIT).await;
    assert_ne!(new, old);
    for i in 0..20 {
        c.put(&format!("after{i}"), "x").await;
    }
    c.restart(old).await;
    let commit = c.node(new).status().commit_index;
    c.wait_applied(&[1, 2, 3], commit).await;
    assert_same_state(&c, &[1, 2, 3]);
    assert_eq!(c.state(old).get("after19").map(String::as_str), Some("x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_follower_catches_up_from_its_data_dir() {
    let mut c = TestCluster::start(3, ClusterOptions::default()).await;
    for i in 0..10 {
        c.put(&format!("a{i}"), "1").await;
    }
    let leader = c.wait_leader(WAIT).await;
    let f = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let applied_before = c.node(f).status().applied_index;
    c.stop(f).await;
    for i in 0..100 {
        c.put(&format!("b{i}"), "2").await;
    }
    c.restart(f).await;
    // It resumes from what it persisted (its log was not lost) and then catches up.
    let st = c.node(f).status();
    assert!(st.last_index >= applied_before, "{st:?}");
    let commit = c.node(leader).status().commit_index;
    c.wait_applied(&[f], commit).await;
    assert_same_state(&c, &[leader, f]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_recovers_everything_and_applies_nothing_twice() {
    // Snapshots every ~512 bytes so recovery combines a snapshot with log replay.
    let mut c = TestCluster::start(3, snapshotting(512, 5)).await;
    let mut expected = String::new();
    for i in 0..120 {
        let token = format!("<{i}>");
        c.propose_within(append("log", &token), WAIT).await.unwrap();
        expected.push_str(&token);
    }
    let leader = c.wait_leader(WAIT).await;
    let commit = c.node(leader).status().commit_index;
    c.wait_applied(&[1, 2, 3], commit).await;
    assert!(
        c.node(leader).status().snapshot_index > 0,
        "no snapshot taken"
    );
    for id in 1..=3 {
        assert_eq!(
            c.state(id).get("log"),
            Some(&expected),
            "member {id} before restart"
        );
    }
    c.shutdown().await;
    for id in 1..=3 {
        c.restart(id).await;
    }
    c.wait_applied(&[1, 2, 3], commit).await;
    for id in 1..=3 {
        let s = c.state(id);
        assert_eq!(s.get("log"), Some(&expected), "member {id}");
        assert!(s.violations.is_empty(), "member {id}: {:?}", s.violations);
    }
    // And the group still works.
    c.propose_within(append("log", "<end>"), WAIT)
        .await
        .unwrap();
    assert!(c.get("log").await.unwrap().ends_with("<119><end>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_down_during_compaction_catches_up_by_snapshot() {
    let mut c = TestCluster::start(3, snapshotting(4096, 0)).await;
    c.put("k", "v").await;
    let leader = c.wait_leader(WAIT).await;
    let lagging = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let lagging_applied = c.node(lagging).status().applied_index;
    c.stop(lagging).await;
    for _ in 0..60 {
        c.propose_within(KvCommand::Pad(512), WAIT).await.unwrap();
    }
    c.put("last", "yes").await;
    let leader = c.wait_leader(WAIT).await;
    let st = c.node(leader).status();
    assert!(
        st.first_index > lagging_applied + 1,
        "the leader's log should be compacted past what the lagging member has: {st:?}"
    );
    c.restart(lagging).await;
    c.wait_applied(&[lagging], st.commit_index).await;
    let lst = c.node(lagging).status();
    assert!(
        lst.snapshot_index > lagging_applied,
        "caught up without a snapshot: {lst:?}"
    );
    assert_eq!(
        c.state(lagging).get("last").map(String::as_str),
        Some("yes")
    );
    assert_same_state(&c, &[leader, lagging]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_add_remove_replace_keeps_serving() {
    let mut c = TestCluster::start(3, ClusterOptions::default()).await;
    c.put("k0", "v").await;

    // Add a fresh member: learner first, then promoted once caught up.
    let addr4 = c.start_joining(4).await;
    let leader = c.wait_leader(WAIT).await;
    let cs = c.node(leader).add_learner(4, addr4).await.unwrap();
    assert_eq!(cs.learners, vec![4]);
    let cs = c.node(leader).promote(4).await.unwrap();
    assert!(cs.voters.contains(&4) && cs.learners.is_empty(), "{cs:?}");
    c.put("k1", "v").await;
    let commit = c.node(c.wait_leader(WAIT).await).status().commit_index;
    c.wait_applied(&[4], commit).await;
    assert_eq!(c.state(4).get("k1").map(String::as_str), Some("v"));
    assert_eq!(
        c.node(4).status().members.len(),
        4,
        "member 4 learned the address book"
    );

    // Remove a member (the leader itself if need be: the group elects another).
    let leader = c.wait_leader(WAIT).await;
    let cs = c.node(leader).remove_member(1).await.unwrap();
    assert!(!cs.voters.contains(&1));
    c.stop(1).await;
    c.put("k2", "v").await;

    // Replace member 2 with a new member 5 through joint consensus.
    let addr5 = c.start_joining(5).await;
    let leader = c.wait_leader(WAIT).await;
    let cs = c.node(leader).replace_member(2, 5, addr5).await.unwrap();
    let voters: BTreeSet<u64> = cs.voters.iter().copied().collect();
    assert_eq!(
        voters,
        [3, 4, 5].into_iter().collect::<BTreeSet<_>>(),
        "{cs:?}"
    );
    c.stop(2).await;
    c.put("k3", "v").await;
    let leader = c.wait_leader(WAIT).await;
    assert!([3, 4, 5].contains(&leader));
    // Repeated once done (a client that lost the answer, on whichever member now leads): it
    // succeeds, changing nothing. (It failed with "member 2 is not a voter".)
    let addr5 = c.addr(5).to_string();
    let again = c.node(leader).replace_member(2, 5, addr5).await.unwrap();
    assert_eq!(
        again.voters.iter().copied().collect::<BTreeSet<_>>(),
        voters
    );
    // So does removing a member that is gone already.
    let gone = c.node(leader).remove_member(1).await.unwrap();
    assert_eq!(gone.voters.iter().copied().collect::<BTreeSet<_>>(), voters);
    let st = c.node(leader).status();
    assert!(
        st.voters_outgoing.is_empty(),
        "left joint consensus: {st:?}"
    );
    c.wait_applied(&[3, 4, 5], st.commit_index).await;
    assert_same_state(&c, &[3, 4, 5]);

    // Bad requests are refused without side effects.
    let leader_node = c.node(leader);
    assert!(matches!(
        leader_node.add_learner(3, "127.0.0.1:1".into()).await,
        Err(RaftError::InvalidArgument(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_transfer_moves_leadership_to_the_named_member() {
    let c = TestCluster::start(3, ClusterOptions::default()).await;
    c.put("k", "v").await;
    let leader = c.wait_leader(WAIT).await;
    let target = c.ids().into_iter().find(|i| *i != leader).unwrap();
    c.node(leader).transfer_leader(target).await.unwrap();
    assert_eq!(c.wait_leader(WAIT).await, target);
    c.put("k2", "v2").await;
    assert_eq!(c.get("k2").await.as_deref(), Some("v2"));
    // Transfer to a non-member is refused.
    assert!(matches!(
        c.node(target).transfer_leader(99).await,
        Err(RaftError::InvalidArgument(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_off_picks_a_caught_up_voter_and_skips_a_lagging_one() {
    let c = TestCluster::start(3, ClusterOptions::default()).await;
    c.put("k", "v").await;
    let leader = c.wait_leader(WAIT).await;
    let others: Vec<u64> = c.ids().into_iter().filter(|i| *i != leader).collect();
    // A follower that cannot hear the leader falls behind; the other one must be chosen.
    let (lagging, caught_up) = (others[0], others[1]);
    c.net.partition(&[&[leader, caught_up], &[lagging]]);
    for i in 0..5 {
        c.put(&format!("k{i}"), "v").await;
    }
    let term = c.node(leader).status().term;
    let to = c
        .node(leader)
        .hand_off_leadership(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(to, Some(caught_up));
    // The new leader tells the old one before it publishes its own status: wait for it.
    let st = c
        .wait_until(WAIT, "the new leader's status", |st| {
            st.get(&caught_up).filter(|s| s.is_leader()).cloned()
        })
        .await;
    assert_eq!(st.term, term + 1, "{st:?}");
    // Not leading any more: nothing to hand off.
    assert_eq!(
        c.node(leader)
            .hand_off_leadership(Duration::from_secs(1))
            .await,
        Ok(None)
    );
    c.net.heal();
    c.put("after", "v").await;
    let node = c.node(leader);
    let m = node.metrics();
    assert!(m.proposals.total() >= 6, "{}", m.proposals.total());
    assert!(m.proposals.latency.count() >= 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_minority_cannot_commit_majority_serves_then_all_converge() {
    let c = TestCluster::start(5, ClusterOptions::default()).await;
    // Record every (term, leader) any member ever reports, to check election safety.
    let seen: std::sync::Arc<parking_lot::Mutex<BTreeMap<u64, BTreeSet<u64>>>> = Default::default();
    let mut observers = Vec::new();
    for id in c.ids() {
        let mut rx = c.node(id).watch_status();
        let seen = seen.clone();
        observers.push(tokio::spawn(async move {
            loop {
                {
                    let s = rx.borrow_and_update();
                    if s.role == Role::Leader {
                        seen.lock().entry(s.term).or_default().insert(s.id);
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }));
    }
    c.put("k", "before").await;
    let old = c.wait_leader(WAIT).await;
    let others: Vec<u64> = c.ids().into_iter().filter(|i| *i != old).collect();
    let minority = [old, others[0]];
    let majority = [others[1], others[2], others[3]];
    c.net.partition(&[&minority, &majority]);

    // The old leader steps down (check_quorum) or at least cannot commit or serve reads.
    let r = c
        .node(old)
        .propose_with_timeout(KvCommand::Pad(1).encode(), Duration::from_secs(1))
        .await;
    assert!(
        matches!(
            r,
            Err(RaftError::NotLeader { .. }) | Err(RaftError::Timeout(_))
        ),
        "minority committed: {r:?}"
    );
    let r = c.node(minority[1]).read_index().await;
    assert!(r.is_err(), "minority served a linearizable read: {r:?}");

    // The majority elects a leader and serves.
    let new = c
        .wait_until(WAIT, "a majority leader", |st| {
            st.values()
                .find(|s| s.is_leader() && majority.contains(&s.id))
                .map(|s| s.id)
        })
        .await;
    c.node(new)
        .propose(
            KvCommand::Put {
                key: "k".into(),
                value: "during".into(),
            }
            .encode(),
        )
        .await
        .unwrap();
    let v = c.node(new).read(|sm| sm.get("k").cloned()).await.unwrap();
    assert_eq!(v.as_deref(), Some("during"));
    assert!(c.state(old).get("k").map(String::as_str) == Some("before"));

    // Heal: everyone converges on the majority's history.
    c.net.heal();
    c.put("k2", "after").await;
    let leader = c.wait_leader(WAIT).await;
    let commit = c.node(leader).status().commit_index;
    c.wait_applied(&c.ids(), commit).await;
    assert_same_state(&c, &c.ids());
    assert_eq!(c.state(old).get("k").map(String::as_str), Some("during"));

    for o in observers {
        o.abort();
    }
    for (term, leaders) in seen.lock().iter() {
        assert_eq!(leaders.len(), 1, "two leaders in term {term}: {leaders:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreliable_network_still_converges() {
    let c = TestCluster::start(3, snapshotting(8192, 10)).await;
    c.net.set_unreliable(0.1, Duration::from_millis(15));
    let mut expected = String::new();
    for i in 0..60 {
        let token = format!("[{i}]");
        c.propose_within(append("x", &token), WAIT).await.unwrap();
        expected.push_str(&token);
    }
    assert!(c.net.dropped() > 0, "the network dropped nothing");
    c.net.heal();
    let leader = c.wait_leader(WAIT).await;
    let commit = c.node(leader).status().commit_index;
    c.wait_applied(&[1, 2, 3], commit).await;
    assert_same_state(&c, &[1, 2, 3]);
    // Each acknowledged append applied exactly once (proposals that timed out would have
    // panicked above).
    assert_eq!(c.state(1).get("x"), Some(&expected));
}
