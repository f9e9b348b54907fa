//! `RaftAdmin`: membership administration over gRPC, for any group hosting any state machine.
//!
//! A thin edge over [`RaftNode`]'s membership calls: every change is made by the node (one at a
//! time, learner → caught up → voter), and errors become statuses through
//! `impl From<RaftError> for tonic::Status`, so a member that does not lead answers
//! `NotLeader` with the leader's address and clients follow it.
//!
//! Every change call answers with the membership once the change applied here, and is safe to
//! repeat: a client that lost the reply (or whose attempt timed out while the new member
//! caught up) calls again and the call resumes where it stopped, or succeeds at once when the
//! change is already made.

use std::sync::Arc;
use std::time::Duration;

use quorumkv_proto::raft as pb;
use quorumkv_proto::raft::raft_admin_server::{RaftAdmin, RaftAdminServer};
use tonic::{Request, Response, Status};

use crate::error::RaftError;
use crate::node::RaftNode;
use crate::state_machine::StateMachine;
use crate::status::Status as RaftStatus;

/// How long AddMember and ReplaceMember wait for the new member to catch up with the commit
/// index (a new member of a large group first receives a snapshot).
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `RaftAdmin` for one member.
pub struct RaftAdminService<S: StateMachine> {
    node: Arc<RaftNode<S>>,
    catch_up: Duration,
}

impl<S: StateMachine> RaftAdminService<S> {
    pub fn new(node: Arc<RaftNode<S>>) -> Self {
        RaftAdminService {
            node,
            catch_up: CATCH_UP_TIMEOUT,
        }
    }

    /// Sets how long a new member may take to catch up (default [`CATCH_UP_TIMEOUT`]).
    pub fn with_catch_up_timeout(mut self, catch_up: Duration) -> Self {
        self.catch_up = catch_up;
        self
    }

    /// The tonic server wrapper.
    pub fn into_server(self) -> RaftAdminServer<Self> {
        RaftAdminServer::new(self)
    }

    fn require_leader(&self) -> Result<RaftStatus, RaftError> {
        let s = self.node.status();
        if s.is_leader() {
            Ok(s)
        } else {
            Err(not_leader(&s))
        }
    }

    fn reply(&self) -> Response<pb::MembersReply> {
        Response::new(members_reply(&self.node.status()))
    }
}

fn not_leader(s: &RaftStatus) -> RaftError {
    RaftError::NotLeader {
        leader_id: s.leader_id.filter(|l| *l != s.id),
        leader_addr: s
            .leader_id
            .filter(|l| *l != s.id)
            .and_then(|l| s.members.get(&l).cloned()),
    }
}

/// The membership as `s` sees it.
pub fn members_reply(s: &RaftStatus) -> pb::MembersReply {
    let voters = s
        .voters
        .iter()
        .chain(&s.voters_outgoing)
        .map(|id| (*id, pb::MemberRole::Voter));
    let learners = s.learners.iter().map(|id| (*id, pb::MemberRole::Learner));
    // Voters first, so that a member that is both (during a joint change) is listed as one.
    let mut members: std::collections::BTreeMap<u64, pb::MemberRole> = Default::default();
    for (id, role) in voters.chain(learners) {
        members.entry(id).or_insert(role);
    }
    pb::MembersReply {
        answered_by: s.id,
        leader_id: s.leader_id.unwrap_or(0),
        term: s.term,
        commit_index: s.commit_index,
        members: members
            .into_iter()
            .map(|(id, role)| {
                let progress = s.progress.get(&id);
                pb::Member {
                    id,
                    addr: s.members.get(&id).cloned().unwrap_or_default(),
                    role: role as i32,
                    matched: progress.map(|p| p.matched),
                    recently_active: progress.is_some_and(|p| p.recent_active),
                }
            })
            .collect(),
        voters_outgoing: s.voters_outgoing.clone(),
        group_id: s.group_id,
    }
}

fn invalid(msg: String) -> Status {
    RaftError::InvalidArgument(msg).into()
}

/// A member id and address from a request: non-zero id, well-formed `host:port`.
fn check_new(id: u64, addr: &str) -> Result<(), Status> {
    if id == 0 {
        return Err(invalid("member id 0 is reserved".into()));
    }
    quorumkv_common::HostPort::parse(addr).map_err(|e| invalid(e.to_string()))?;
    Ok(())
}

#[tonic::async_trait]
impl<S: StateMachine> RaftAdmin for RaftAdminService<S> {
    async fn members(
        &self,
        request: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersReply>, Status> {
        if request.into_inner().leader_only {
            self.require_leader()?;
        }
        Ok(self.reply())
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembersReply>, Status> {
        let pb::AddMemberRequest { id, addr } = request.into_inner();
        check_new(id, &addr)?;
        let s = self.require_leader()?;
        let known = s.members.get(&id);
        if (s.voters.contains(&id) || s.learners.contains(&id)) && known != Some(&addr) {
            return Err(invalid(format!(
                "member {id} is already in the group at {}",
                known.map_or("an unknown address", String::as_str)
            )));
        }
        if s.voters.contains(&id) {
            return Ok(self.reply());
        }
        if !s.learners.contains(&id) {
            self.node.add_learner(id, addr.clone()).await?;
        }
        self.node.promote_within(id, self.catch_up).await?;
        tracing::info!(id, addr, "member added");
        Ok(self.reply())
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembersReply>, Status> {
        let id = request.into_inner().id;
        self.require_leader()?;
        self.node.remove_member(id).await?;
        tracing::info!(id, "member removed");
        Ok(self.reply())
    }

    async fn replace_member(
        &self,
        request: Request<pb::ReplaceMemberRequest>,
    ) -> Result<Response<pb::MembersReply>, Status> {
        let pb::ReplaceMemberRequest {
            old_id,
            new_id,
            new_addr,
        } = request.into_inner();
        check_new(new_id, &new_addr)?;
        if old_id == new_id {
            return Err(invalid(format!(
                "member {old_id} cannot replace itself; use another id for the new member"
            )));
        }
        self.require_leader()?;
        self.node
            .replace_member_within(old_id, new_id, new_addr.clone(), self.catch_up)
            .await?;
        tracing::info!(old_id, new_id, new_addr, "member replaced");
        Ok(self.reply())
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::MembersReply>, Status> {
        let to = request.into_inner().to;
        let s = self.require_leader()?;
        if !s.voters.contains(&to) {
            return Err(invalid(format!("member {to} is not a voter")));
        }
        self.node.transfer_leader(to).await?;
        // The new leader's status reaches this member with its first message; wait for it
        // briefly so that the reply names the new leader.
        let _ = self
            .node
            .wait_for(Duration::from_secs(1), |st| st.leader_id == Some(to))
            .await;
        Ok(self.reply())
    }
}
