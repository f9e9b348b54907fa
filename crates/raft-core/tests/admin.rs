//! `RaftAdmin` over real gRPC and mutual TLS on a test group: list, add (learner → caught up →
//! voter in one call), remove (the leader itself included), replace, transfer, the NotLeader
//! hint from a follower, refusals, and repeating a call that already took effect.

use std::collections::BTreeSet;
use std::time::Duration;

use quorumkv_common::rpc::{ErrorKind, RpcError};
use quorumkv_common::HostPort;
use quorumkv_proto::raft::raft_admin_client::RaftAdminClient;
use quorumkv_proto::raft::{
    AddMemberRequest, MemberRole, MembersReply, MembersRequest, RemoveMemberRequest,
    ReplaceMemberRequest, TransferLeaderRequest,
};
use quorumkv_testkit::cluster::{ClusterOptions, TestCluster, WAIT};
use tonic::transport::{Channel, Endpoint};

async fn admin(c: &TestCluster, id: u64) -> RaftAdminClient<Channel> {
    let addr = c.addr(id);
    let hp = HostPort::parse(addr).unwrap();
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(c.pki.admin.client_config(hp.tls_name()))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    RaftAdminClient::new(channel)
}

fn voters(r: &MembersReply) -> BTreeSet<u64> {
    r.members
        .iter()
        .filter(|m| m.role == MemberRole::Voter as i32)
        .map(|m| m.id)
        .collect()
}

fn set(ids: &[u64]) -> BTreeSet<u64> {
    ids.iter().copied().collect()
}

fn err(status: tonic::Status) -> RpcError {
    RpcError::from_status(&status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_admin_lists_adds_removes_replaces_and_transfers_over_grpc() {
    let mut c = TestCluster::start(3, ClusterOptions::default()).await;
    c.put("k0", "v").await;
    let leader = c.wait_leader(WAIT).await;
    let follower = *c.ids().iter().find(|id| **id != leader).unwrap();

    // List: any member answers with its view; only the leader's carries progress.
    let mut l = admin(&c, leader).await;
    let view = l
        .members(MembersRequest { leader_only: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(voters(&view), set(&[1, 2, 3]));
    assert_eq!((view.leader_id, view.answered_by), (leader, leader));
    assert_eq!(view.group_id, c.group_id);
    assert!(view.members.iter().all(|m| m.matched.is_some()), "{view:?}");
    assert!(view.members.iter().all(|m| m.addr == c.addr(m.id)));
    let mut f = admin(&c, follower).await;
    let local = f
        .members(MembersRequest { leader_only: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((local.answered_by, local.leader_id), (follower, leader));
    assert!(local.members.iter().all(|m| m.matched.is_none()));

    // A follower refuses changes with the leader's address as a hint.
    let e = err(f
        .members(MembersRequest { leader_only: true })
        .await
        .unwrap_err());
    assert_eq!(
        e.kind,
        ErrorKind::NotLeader {
            leader: Some(c.addr(leader).to_string())
        }
    );
    let e = err(f
        .remove_member(RemoveMemberRequest { id: leader })
        .await
        .unwrap_err());
    assert!(matches!(e.kind, ErrorKind::NotLeader { leader: Some(_) }));

    // Add member 4 in one call: it is a voter when the call returns; repeating is success.
    let addr4 = c.start_joining(4).await;
    let add4 = AddMemberRequest {
        id: 4,
        addr: addr4.clone(),
    };
    let after = l.add_member(add4.clone()).await.unwrap().into_inner();
    assert_eq!(voters(&after), set(&[1, 2, 3, 4]), "{after:?}");
    let again = l.add_member(add4).await.unwrap().into_inner();
    assert_eq!(voters(&again), set(&[1, 2, 3, 4]));
    // The same id at another address, a malformed address, id 0: refused.
    for bad in [
        AddMemberRequest {
            id: 4,
            addr: "127.0.0.1:1".into(),
        },
        AddMemberRequest {
            id: 9,
            addr: "nohost".into(),
        },
        AddMemberRequest {
            id: 0,
            addr: "127.0.0.1:1".into(),
        },
    ] {
        let e = err(l.add_member(bad).await.unwrap_err());
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    }
    c.put("k1", "v").await;

    // Transfer leadership to member 4; the reply names it.
    let moved = l
        .transfer_leader(TransferLeaderRequest { to: 4 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.leader_id, 4);
    assert_eq!(c.wait_leader(WAIT).await, 4);
    let e = err(l
        .transfer_leader(TransferLeaderRequest { to: 1 })
        .await
        .unwrap_err());
    assert!(matches!(e.kind, ErrorKind::NotLeader { .. }), "{e}");

    // The leader removes itself: the call succeeds, another member leads, writes go on.
    let mut l4 = admin(&c, 4).await;
    let after = l4
        .remove_member(RemoveMemberRequest { id: 4 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(voters(&after), set(&[1, 2, 3]));
    let new_leader = c
        .wait_until(WAIT, "a leader other than the removed member", |st| {
            st.values()
                .find(|s| s.is_leader() && s.id != 4)
                .map(|s| s.id)
        })
        .await;
    c.stop(4).await;
    c.put("k2", "v").await;
    // Removing it again (a retried call) succeeds and changes nothing.
    let again = admin(&c, new_leader)
        .await
        .remove_member(RemoveMemberRequest { id: 4 })
        .await
        .unwrap()
        .into_inner();
    assert!(again.members.iter().all(|m| m.id != 4), "{again:?}");

    // Replace member 2 (whoever leads) with member 5 through the leader.
    let addr5 = c.start_joining(5).await;
    let mut nl = admin(&c, new_leader).await;
    let replace = ReplaceMemberRequest {
        old_id: 2,
        new_id: 5,
        new_addr: addr5,
    };
    let after = nl
        .replace_member(replace.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(voters(&after), set(&[1, 3, 5]), "{after:?}");
    assert!(after.voters_outgoing.is_empty());
    // Repeating a replacement that took effect succeeds without changing anything (member 2
    // may have been the leader: ask whoever leads now).
    let leader = c
        .wait_until(WAIT, "a leader among 1, 3, 5", |st| {
            st.values()
                .find(|s| s.is_leader() && s.id != 2)
                .map(|s| s.id)
        })
        .await;
    let again = admin(&c, leader)
        .await
        .replace_member(replace)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(voters(&again), set(&[1, 3, 5]));
    c.stop(2).await;
    c.put("k3", "v").await;
    assert_eq!(c.get("k0").await.as_deref(), Some("v"));
}
