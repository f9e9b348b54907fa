//! The `member` subcommand that `shardctrler-client` (the controller group) and
//! `shardkv-client` (a replica group) share: list, add, remove and replace the members of a
//! Raft group, and move its leadership, through raft-core's `RaftAdmin` service on the group's
//! leader.
//!
//! How the leader is reached differs (the controller client, or a replica group's servers from
//! the latest configuration), so each CLI passes a function that sends one [`AdminCall`] to
//! the leader, following `NotLeader` hints and retrying within its deadline; everything else
//! (arguments, the pre-flight check of a new member, what is printed) lives here once.

use std::collections::BTreeSet;
use std::future::Future;

use quorumkv_common::HostPort;
use quorumkv_proto::raft as pb;
use quorumkv_proto::raft::raft_admin_client::RaftAdminClient;
use tonic::transport::Channel;

/// The `member` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum MemberCmd {
    /// List the members: id, address, role (voter or learner), each member's replicated
    /// index and whether the leader heard from it recently, the leader, term and commit index
    /// (the leader's view).
    List,
    /// Add a member as a voter: first as a learner, promoted once it has caught up. The new
    /// server must already run, started empty with `--join` (and `--cluster` listing the
    /// current members and itself); otherwise nothing is changed. Waits until the new member
    /// caught up (the server gives it 30 s; raise --timeout accordingly for a large group).
    Add {
        /// The new member: `ID=HOST:PORT` (an id never used in this group; the address the
        /// other members dial).
        #[arg(value_name = "ID=HOST:PORT", value_parser = parse_new_member)]
        member: NewMember,
    },
    /// Remove a member (voter or learner). Removing the leader works: it hands leadership to
    /// another voter. Stop the removed server afterwards.
    Remove {
        /// The member's id.
        id: u64,
    },
    /// Replace voter OLD with a new member without ever having fewer voters: the new member is
    /// added as a learner, caught up, then swapped in by one joint-consensus change. The new
    /// server must already run, started empty with `--join`.
    Replace {
        /// The id of the voter to remove.
        old: u64,
        /// The new member: `ID=HOST:PORT`.
        #[arg(value_name = "NEW=HOST:PORT", value_parser = parse_new_member)]
        new: NewMember,
    },
    /// Move the group's leadership to voter ID.
    Transfer {
        /// The member to lead.
        id: u64,
    },
}

/// An `ID=HOST:PORT` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMember {
    pub id: u64,
    pub addr: String,
}

/// Parses `ID=HOST:PORT` (id non-zero, address well-formed).
pub fn parse_new_member(s: &str) -> Result<NewMember, String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| "expected ID=HOST:PORT".to_string())?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("member id {id:?} is not a number"))?;
    if id == 0 {
        return Err("member id 0 is reserved".into());
    }
    let addr = addr.trim();
    HostPort::parse(addr).map_err(|e| e.to_string())?;
    Ok(NewMember {
        id,
        addr: addr.to_string(),
    })
}

/// One `RaftAdmin` request; every one is answered with the membership.
#[derive(Debug, Clone)]
pub enum AdminCall {
    /// The leader's view of the members.
    Members,
    Add(pb::AddMemberRequest),
    Remove(pb::RemoveMemberRequest),
    Replace(pb::ReplaceMemberRequest),
    Transfer(pb::TransferLeaderRequest),
}

impl AdminCall {
    /// Sends the request on `client`.
    pub async fn send(
        self,
        mut client: RaftAdminClient<Channel>,
    ) -> Result<tonic::Response<pb::MembersReply>, tonic::Status> {
        match self {
            AdminCall::Members => {
                client
                    .members(pb::MembersRequest { leader_only: true })
                    .await
            }
            AdminCall::Add(r) => client.add_member(r).await,
            AdminCall::Remove(r) => client.remove_member(r).await,
            AdminCall::Replace(r) => client.replace_member(r).await,
            AdminCall::Transfer(r) => client.transfer_leader(r).await,
        }
    }

    /// Whether the call changes who is a member (and so the servers the controller records).
    pub fn changes_members(&self) -> bool {
        matches!(
            self,
            AdminCall::Add(_) | AdminCall::Remove(_) | AdminCall::Replace(_)
        )
    }
}

/// What a `member` command did.
pub struct Outcome {
    /// The text (or JSON) to print.
    pub output: String,
    /// The membership afterwards, as the leader reported it.
    pub after: pb::MembersReply,
    /// Whether the set of members changed.
    pub members_changed: bool,
}

/// Runs one `member` command on group `group_id` (named `group` in messages): `call` sends a
/// request to the group's leader; `probe` asks one server directly for its own view (used to
/// check that a new member runs before the group is changed). `join_hint` tells the user how to
/// start a new member.
pub async fn run<C, CF, P, PF>(
    cmd: MemberCmd,
    json: bool,
    group: &str,
    group_id: u64,
    join_hint: &str,
    call: C,
    probe: P,
) -> Result<Outcome, String>
where
    C: Fn(AdminCall) -> CF,
    CF: Future<Output = Result<pb::MembersReply, String>>,
    P: Fn(String) -> PF,
    PF: Future<Output = Result<pb::MembersReply, String>>,
{
    let before = call(AdminCall::Members).await?;
    let request = match cmd {
        MemberCmd::List => {
            return Ok(Outcome {
                output: render_list(group, &before, json),
                after: before,
                members_changed: false,
            })
        }
        MemberCmd::Add { member } => {
            check_new_member(&member, &before, group, group_id, join_hint, &probe).await?;
            AdminCall::Add(pb::AddMemberRequest {
                id: member.id,
                addr: member.addr,
            })
        }
        MemberCmd::Remove { id } => AdminCall::Remove(pb::RemoveMemberRequest { id }),
        MemberCmd::Replace { old, new } => {
            check_new_member(&new, &before, group, group_id, join_hint, &probe).await?;
            AdminCall::Replace(pb::ReplaceMemberRequest {
                old_id: old,
                new_id: new.id,
                new_addr: new.addr,
            })
        }
        MemberCmd::Transfer { id } => AdminCall::Transfer(pb::TransferLeaderRequest { to: id }),
    };
    let changes_members = request.changes_members();
    let after = call(request).await.map_err(|e| {
        if changes_members {
            format!("{e} (list the members to see what was done; repeating the command resumes it)")
        } else {
            e
        }
    })?;
    let changes = diff(&before, &after);
    let output = if json {
        let mut v = members_json(group, &after);
        v["changes"] = serde_json::json!(changes);
        format!("{v}\n")
    } else if changes.is_empty() {
        format!("{group}: nothing changed\n")
    } else {
        changes
            .iter()
            .map(|c| format!("{group}: {c}\n"))
            .collect::<String>()
    };
    Ok(Outcome {
        output,
        members_changed: ids(&before) != ids(&after),
        after,
    })
}

/// Refuses to change the group when the new member does not run (yet) or serves another
/// group: adding an unreachable learner would leave the group with a member that never
/// catches up.
async fn check_new_member<P, PF>(
    member: &NewMember,
    before: &pb::MembersReply,
    group: &str,
    group_id: u64,
    join_hint: &str,
    probe: &P,
) -> Result<(), String>
where
    P: Fn(String) -> PF,
    PF: Future<Output = Result<pb::MembersReply, String>>,
{
    if let Some(m) = before.members.iter().find(|m| m.id == member.id) {
        if m.addr != member.addr {
            return Err(format!(
                "{group}: member {} is already in the group at {}",
                member.id, m.addr
            ));
        }
        // Already (being) added at this address: the call resumes or succeeds at once.
        return Ok(());
    }
    let seen = probe(member.addr.clone()).await.map_err(|e| {
        format!(
            "cannot reach the new member {} at {} ({e}); start it first, empty, with --join \
             ({join_hint}), then repeat this command",
            member.id, member.addr
        )
    })?;
    if seen.group_id != group_id {
        return Err(format!(
            "the server at {} belongs to Raft group {}, not to {group}",
            member.addr, seen.group_id
        ));
    }
    if seen.answered_by != member.id {
        return Err(format!(
            "the server at {} is member {}, not {}",
            member.addr, seen.answered_by, member.id
        ));
    }
    Ok(())
}

fn ids(r: &pb::MembersReply) -> BTreeSet<u64> {
    r.members.iter().map(|m| m.id).collect()
}

fn role_name(m: &pb::Member) -> &'static str {
    match pb::MemberRole::try_from(m.role) {
        Ok(pb::MemberRole::Voter) => "voter",
        Ok(pb::MemberRole::Learner) => "learner",
        _ => "unknown",
    }
}

/// One line per difference between two views of the membership.
fn diff(before: &pb::MembersReply, after: &pb::MembersReply) -> Vec<String> {
    let mut out = Vec::new();
    let find = |r: &pb::MembersReply, id: u64| r.members.iter().find(|m| m.id == id).cloned();
    for id in ids(before).union(&ids(after)) {
        match (find(before, *id), find(after, *id)) {
            (None, Some(m)) => out.push(format!(
                "member {id} added at {} as {}",
                m.addr,
                role_name(&m)
            )),
            (Some(m), None) => out.push(format!("member {id} ({}) removed", m.addr)),
            (Some(a), Some(b)) if a.role != b.role => out.push(format!(
                "member {id} is now a {} (was a {})",
                role_name(&b),
                role_name(&a)
            )),
            _ => {}
        }
    }
    if before.leader_id != after.leader_id {
        out.push(format!(
            "leader is now {} (was {})",
            leader_name(after.leader_id),
            leader_name(before.leader_id)
        ));
    }
    if !out.is_empty() {
        let voters: Vec<String> = after
            .members
            .iter()
            .filter(|m| m.role == pb::MemberRole::Voter as i32)
            .map(|m| m.id.to_string())
            .collect();
        out.push(format!("voters now {}", voters.join(", ")));
    }
    out
}

fn leader_name(id: u64) -> String {
    if id == 0 {
        "unknown".into()
    } else {
        id.to_string()
    }
}

fn members_json(group: &str, r: &pb::MembersReply) -> serde_json::Value {
    let members: Vec<serde_json::Value> = r
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id,
                "addr": m.addr,
                "role": role_name(m),
                "matched": m.matched,
                "recently_active": m.recently_active,
                "leader": m.id == r.leader_id,
            })
        })
        .collect();
    serde_json::json!({
        "group": group,
        "group_id": r.group_id,
        "leader_id": r.leader_id,
        "term": r.term,
        "commit_index": r.commit_index,
        "answered_by": r.answered_by,
        "voters_outgoing": r.voters_outgoing,
        "members": members,
    })
}

/// The `member list` output.
pub fn render_list(group: &str, r: &pb::MembersReply, json: bool) -> String {
    if json {
        return format!("{}\n", members_json(group, r));
    }
    let mut out = format!(
        "{group}: leader {}, term {}, commit {}{}\n",
        leader_name(r.leader_id),
        r.term,
        r.commit_index,
        if r.voters_outgoing.is_empty() {
            String::new()
        } else {
            format!(
                ", joint change in progress (outgoing voters {:?})",
                r.voters_outgoing
            )
        }
    );
    let header = ["ID", "ADDRESS", "ROLE", "MATCHED", "ACTIVE"].map(String::from);
    let rows: Vec<[String; 5]> = r
        .members
        .iter()
        .map(|m| {
            let role = if m.id == r.leader_id {
                format!("{} (leader)", role_name(m))
            } else {
                role_name(m).to_string()
            };
            [
                m.id.to_string(),
                m.addr.clone(),
                role,
                m.matched.map_or("-".into(), |x| x.to_string()),
                if m.recently_active { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    let width = |i: usize| -> usize {
        rows.iter()
            .chain([&header])
            .map(|r| r[i].len())
            .max()
            .unwrap_or(0)
    };
    let w: Vec<usize> = (0..4).map(width).collect();
    for row in std::iter::once(&header).chain(&rows) {
        out.push_str(&format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}\n",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        ));
    }
    out
}

/// The members' addresses in id order: the server list the controller records for a group.
pub fn addresses_in_id_order(r: &pb::MembersReply) -> Vec<String> {
    // `members` is sorted by id (see `MembersReply`); sort anyway rather than rely on it.
    let mut m: Vec<&pb::Member> = r.members.iter().filter(|m| !m.addr.is_empty()).collect();
    m.sort_by_key(|m| m.id);
    m.into_iter().map(|m| m.addr.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, role: pb::MemberRole) -> pb::Member {
        pb::Member {
            id,
            addr: format!("h{id}:1"),
            role: role as i32,
            matched: None,
            recently_active: true,
        }
    }

    fn reply(leader: u64, members: Vec<pb::Member>) -> pb::MembersReply {
        pb::MembersReply {
            answered_by: leader,
            leader_id: leader,
            term: 2,
            commit_index: 10,
            members,
            voters_outgoing: vec![],
            group_id: 1,
        }
    }

    #[test]
    fn parses_new_members() {
        assert_eq!(
            parse_new_member("4=h:7001").unwrap(),
            NewMember {
                id: 4,
                addr: "h:7001".into()
            }
        );
        for bad in ["4", "0=h:1", "x=h:1", "4=h", "4=h:0", "=h:1"] {
            assert!(parse_new_member(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn diff_names_added_removed_promoted_and_the_leader() {
        use pb::MemberRole::{Learner, Voter};
        let before = reply(
            1,
            vec![member(1, Voter), member(2, Voter), member(3, Learner)],
        );
        let after = reply(
            2,
            vec![member(2, Voter), member(3, Voter), member(4, Voter)],
        );
        assert_eq!(
            diff(&before, &after),
            vec![
                "member 1 (h1:1) removed",
                "member 3 is now a voter (was a learner)",
                "member 4 added at h4:1 as voter",
                "leader is now 2 (was 1)",
                "voters now 2, 3, 4",
            ]
        );
        assert!(diff(&before, &before).is_empty());
        assert_eq!(addresses_in_id_order(&after), vec!["h2:1", "h3:1", "h4:1"]);
        let text = render_list("group 1", &after, false);
        assert!(text.contains("voter (leader)"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&render_list("group 1", &after, true)).unwrap();
        assert_eq!(json["members"].as_array().unwrap().len(), 3);
    }
}
