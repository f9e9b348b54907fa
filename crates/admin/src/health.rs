//! The liveness and readiness decisions, as pure functions of a member's status (unit-tested
//! without a cluster; the HTTP layer only renders them).

use std::time::Duration;

use quorumkv_raft_core::{Role, Status};

/// Why a member is not alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dead {
    /// `raft_driver_stopped` or `raft_driver_stuck`.
    pub reason: &'static str,
    pub detail: String,
}

/// Alive while the driver has not stopped and beat within `stuck_after`. Quorum plays no part:
/// a member cut off from its group is alive, and restarting it would not help.
pub fn liveness(
    status: &Status,
    heartbeat_age: Duration,
    stuck_after: Duration,
) -> Result<(), Dead> {
    if status.stopped {
        return Err(Dead {
            reason: "raft_driver_stopped",
            detail: match &status.fatal {
                Some(why) => format!("the raft driver stopped: {why}"),
                None => "the raft driver stopped (shutdown)".into(),
            },
        });
    }
    if heartbeat_age >= stuck_after {
        return Err(Dead {
            reason: "raft_driver_stuck",
            detail: format!(
                "the raft driver has not run for {:.1} s",
                heartbeat_age.as_secs_f64()
            ),
        });
    }
    Ok(())
}

/// Why a member cannot serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    /// `storage_error`, `raft_not_ready`, `no_quorum` or `catching_up`.
    pub failed: &'static str,
    pub detail: String,
}

fn not_ready(failed: &'static str, detail: impl Into<String>) -> Result<(), NotReady> {
    Err(NotReady {
        failed,
        detail: detail.into(),
    })
}

/// Ready when the member can serve: its storage works, its driver runs, it is not stopping,
/// it is a member of a configured group, the group has a leader it knows (and, when it leads,
/// a quorum of voters heard from within an election timeout), and it has applied everything
/// committed that it knows of. The first failing check is reported.
pub fn readiness(
    status: &Status,
    heartbeat_age: Duration,
    stuck_after: Duration,
    shutting_down: bool,
) -> Result<(), NotReady> {
    if let Some(why) = &status.fatal {
        return not_ready("storage_error", format!("storage failed: {why}"));
    }
    if let Err(dead) = liveness(status, heartbeat_age, stuck_after) {
        return not_ready("raft_not_ready", dead.detail);
    }
    if shutting_down {
        return not_ready("raft_not_ready", "the server is shutting down");
    }
    if status.removed {
        return not_ready(
            "raft_not_ready",
            format!("member {} was removed from the group", status.id),
        );
    }
    if status.voters.is_empty() && status.learners.is_empty() {
        return not_ready(
            "raft_not_ready",
            "no group configuration yet (waiting to be added by the leader)",
        );
    }
    match (status.role, status.leader_id) {
        (Role::PreCandidate | Role::Candidate, _) | (_, None) => {
            return not_ready(
                "no_quorum",
                format!(
                    "no known leader (this member is a {}, term {})",
                    status.role, status.term
                ),
            );
        }
        _ => {}
    }
    if status.quorum_active() == Some(false) {
        let active: Vec<u64> = status
            .voters
            .iter()
            .copied()
            .filter(|id| {
                *id == status.id || status.progress.get(id).is_some_and(|p| p.recent_active)
            })
            .collect();
        return not_ready(
            "no_quorum",
            format!(
                "leader hears from voters {active:?} of {:?}, not a quorum",
                status.voters
            ),
        );
    }
    if status.applied_index < status.commit_index {
        return not_ready(
            "catching_up",
            format!(
                "applied {} of {} committed entries",
                status.applied_index, status.commit_index
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumkv_raft_core::PeerProgress;

    const STUCK: Duration = Duration::from_secs(5);
    const FRESH: Duration = Duration::from_millis(10);

    fn follower() -> Status {
        Status {
            id: 2,
            group_id: 1,
            role: Role::Follower,
            term: 3,
            leader_id: Some(1),
            commit_index: 10,
            applied_index: 10,
            voters: vec![1, 2, 3],
            ..Status::default()
        }
    }

    fn leader(active: &[u64]) -> Status {
        let progress = [1, 2, 3]
            .into_iter()
            .map(|id| {
                (
                    id,
                    PeerProgress {
                        matched: 10,
                        next_index: 11,
                        state: "Replicate".into(),
                        recent_active: active.contains(&id),
                    },
                )
            })
            .collect();
        Status {
            id: 1,
            role: Role::Leader,
            leader_id: Some(1),
            progress,
            ..follower()
        }
    }

    fn failed(s: &Status) -> Option<&'static str> {
        readiness(s, FRESH, STUCK, false).err().map(|e| e.failed)
    }

    #[test]
    fn liveness_needs_a_running_beating_driver_only() {
        let s = Status {
            leader_id: None,
            role: Role::PreCandidate,
            ..follower()
        };
        assert!(liveness(&s, FRESH, STUCK).is_ok(), "quorum must not matter");
        let stuck = liveness(&s, Duration::from_secs(6), STUCK).unwrap_err();
        assert_eq!(stuck.reason, "raft_driver_stuck");
        let stopped = Status {
            stopped: true,
            ..follower()
        };
        assert_eq!(
            liveness(&stopped, FRESH, STUCK).unwrap_err().reason,
            "raft_driver_stopped"
        );
    }

    #[test]
    fn readiness_names_the_first_failing_check() {
        assert_eq!(failed(&follower()), None);
        assert_eq!(
            failed(&leader(&[2])),
            None,
            "leader plus one of two peers is a quorum"
        );
        assert_eq!(failed(&leader(&[])), Some("no_quorum"));
        let fatal = Status {
            stopped: true,
            fatal: Some("disk full".into()),
            ..follower()
        };
        assert_eq!(failed(&fatal), Some("storage_error"));
        let stopped = Status {
            stopped: true,
            ..follower()
        };
        assert_eq!(failed(&stopped), Some("raft_not_ready"));
        let removed = Status {
            removed: true,
            ..follower()
        };
        assert_eq!(failed(&removed), Some("raft_not_ready"));
        let joining = Status {
            voters: vec![],
            leader_id: None,
            ..follower()
        };
        assert_eq!(failed(&joining), Some("raft_not_ready"));
        let leaderless = Status {
            leader_id: None,
            ..follower()
        };
        assert_eq!(failed(&leaderless), Some("no_quorum"));
        let campaigning = Status {
            role: Role::PreCandidate,
            ..follower()
        };
        assert_eq!(failed(&campaigning), Some("no_quorum"));
        let behind = Status {
            applied_index: 7,
            ..follower()
        };
        assert_eq!(failed(&behind), Some("catching_up"));
        assert_eq!(
            readiness(&follower(), FRESH, STUCK, true)
                .unwrap_err()
                .failed,
            "raft_not_ready"
        );
        assert_eq!(
            readiness(&follower(), Duration::from_secs(9), STUCK, false)
                .unwrap_err()
                .failed,
            "raft_not_ready"
        );
    }

    #[test]
    fn joint_configurations_need_a_quorum_of_both() {
        let mut s = leader(&[2, 3]);
        s.voters_outgoing = vec![1, 4, 5];
        assert_eq!(failed(&s), Some("no_quorum"));
        s.progress.insert(
            4,
            PeerProgress {
                matched: 10,
                next_index: 11,
                state: "Replicate".into(),
                recent_active: true,
            },
        );
        assert_eq!(failed(&s), None);
    }
}
