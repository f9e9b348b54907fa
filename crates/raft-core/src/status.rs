//! A member's observable state, published by the driver after every step for health checks,
//! metrics, the `status` commands and tests (which await conditions on it instead of sleeping).

use std::collections::BTreeMap;

/// The Raft role of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        })
    }
}

/// Replication progress of one member, as seen by the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProgress {
    /// Highest log index known to be replicated on the member.
    pub matched: u64,
    /// Next index the leader will send.
    pub next_index: u64,
    /// raft-rs's replication state: `Probe`, `Replicate` or `Snapshot`.
    pub state: String,
    /// Whether the member was heard from within the last election timeout (always true for
    /// the leader itself).
    pub recent_active: bool,
}

/// Snapshot of a member's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub id: u64,
    pub group_id: u64,
    pub role: Role,
    pub term: u64,
    /// The leader this member believes in, if any.
    pub leader_id: Option<u64>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    /// Voters of the current (incoming) configuration.
    pub voters: Vec<u64>,
    /// Voters of the outgoing configuration while a joint change is in progress, else empty.
    pub voters_outgoing: Vec<u64>,
    pub learners: Vec<u64>,
    /// The address book: member id -> `host:port`.
    pub members: BTreeMap<u64, String>,
    /// Per-member progress; filled on the leader only.
    pub progress: BTreeMap<u64, PeerProgress>,
    /// This member was removed from the group's configuration.
    pub removed: bool,
    /// The driver has stopped (shutdown or fatal storage error); see `fatal`.
    pub stopped: bool,
    /// Why the driver stopped, if it stopped on an error.
    pub fatal: Option<String>,
}

impl Status {
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// On the leader: whether a quorum of voters (of both configurations during a joint
    /// change) was heard from within the last election timeout, counting the leader itself.
    /// `None` on any other member. A leader without one steps down at its next quorum check.
    pub fn quorum_active(&self) -> Option<bool> {
        if !self.is_leader() {
            return None;
        }
        let active =
            |id: &u64| *id == self.id || self.progress.get(id).is_some_and(|p| p.recent_active);
        let majority = |voters: &[u64]| {
            voters.is_empty() || voters.iter().filter(|id| active(id)).count() * 2 > voters.len()
        };
        Some(majority(&self.voters) && majority(&self.voters_outgoing))
    }

    /// Address of the believed leader, if known.
    pub fn leader_addr(&self) -> Option<&str> {
        self.leader_id
            .and_then(|id| self.members.get(&id))
            .map(String::as_str)
    }
}
