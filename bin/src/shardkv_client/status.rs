//! `shardkv-client status`: every group of the latest configuration as its members report it
//! (the `Status` RPC of each member; no data is scanned).

use quorumkv_proto::shardkv as pb;

/// One member as the client saw it.
pub struct MemberView {
    /// The address the controller's configuration lists for it.
    pub addr: String,
    /// Its member id: from its own answer, or from another member's address book when it did
    /// not answer.
    pub id: Option<u64>,
    /// Its answer, or why there was none.
    pub reply: Result<pb::StatusReply, String>,
}

/// One group, summarized from its members' answers.
pub struct GroupView {
    pub gid: u64,
    /// The leader's id, as the answering member with the highest term knows it.
    pub leader: Option<u64>,
    /// The highest term any member reported.
    pub term: u64,
    pub members: Vec<MemberView>,
    /// Whose shard list is shown: the leader's when it answered, else the member that applied
    /// the most.
    pub shards_from: Option<u64>,
    pub config_num: u64,
    pub shards: Vec<pb::ShardStatus>,
}

pub struct ClusterView {
    /// The controller's latest configuration.
    pub config_num: u64,
    pub groups: Vec<GroupView>,
}

type Answers = Vec<(u64, Vec<(String, Result<pb::StatusReply, String>)>)>;

pub fn summarize(config_num: u64, groups: Answers) -> ClusterView {
    let groups = groups
        .into_iter()
        .map(|(gid, members)| {
            let replies: Vec<&pb::StatusReply> = members
                .iter()
                .filter_map(|(_, r)| r.as_ref().ok())
                .collect();
            let newest = replies.iter().max_by_key(|r| (r.term, r.applied_index));
            let term = newest.map_or(0, |r| r.term);
            let leader = newest.map(|r| r.leader_id).filter(|id| *id != 0);
            let source = replies
                .iter()
                .find(|r| r.role == "leader" && r.term == term)
                .or_else(|| replies.iter().max_by_key(|r| r.applied_index))
                .copied();
            let id_of = |addr: &str| {
                replies
                    .iter()
                    .flat_map(|r| &r.members)
                    .find(|m| m.addr == addr)
                    .map(|m| m.id)
            };
            let members = members
                .iter()
                .map(|(addr, reply)| MemberView {
                    addr: addr.clone(),
                    id: match reply {
                        Ok(r) => Some(r.node_id),
                        Err(_) => id_of(addr),
                    },
                    reply: reply.clone(),
                })
                .collect();
            GroupView {
                gid,
                leader,
                term,
                members,
                shards_from: source.map(|r| r.node_id),
                config_num: source.map_or(0, |r| r.config_num),
                shards: source.map(|r| r.shards.clone()).unwrap_or_default(),
            }
        })
        .collect();
    ClusterView { config_num, groups }
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// Writes rows as left-aligned columns, two spaces apart, indented by two.
fn table(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            // A short row's last cell (an unreachable member's error) overflows freely.
            rows.iter()
                .filter(|r| r.len() == cols || i + 1 < r.len())
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::from(" ");
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(&format!(" {c}"));
            } else {
                line.push_str(&format!(" {c:<w$} ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// `[0, 1, 2, 5, 7, 8]` → `0-2,5,7-8`.
fn ranges(shards: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < shards.len() {
        let start = shards[i];
        while i + 1 < shards.len() && shards[i + 1] == shards[i] + 1 {
            i += 1;
        }
        out.push(if start == shards[i] {
            start.to_string()
        } else {
            format!("{start}-{}", shards[i])
        });
        i += 1;
    }
    out.join(",")
}

/// The report: text for people (empty serving shards are listed as ranges, the others one per
/// row), or one JSON object.
pub fn render(view: &ClusterView, json: bool) -> String {
    use std::fmt::Write;
    if json {
        return format!("{}\n", to_json(view));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "configuration {}: {} groups",
        view.config_num,
        view.groups.len()
    );
    for g in &view.groups {
        let leader_addr = g.leader.and_then(|l| {
            g.members
                .iter()
                .find(|m| m.id == Some(l))
                .map(|m| m.addr.clone())
        });
        let leader = match (g.leader, leader_addr) {
            (Some(id), Some(addr)) => format!("leader {id} ({addr})"),
            (Some(id), None) => format!("leader {id}"),
            (None, _) => "no leader".into(),
        };
        let (keys, bytes) = g
            .shards
            .iter()
            .fold((0, 0), |(k, b), s| (k + s.keys, b + s.bytes));
        let _ = writeln!(
            out,
            "\ngroup {}: {leader}, term {}, configuration {}, {} shards, {keys} keys, {bytes} bytes",
            g.gid,
            g.term,
            g.config_num,
            g.shards.len()
        );
        let mut rows = vec![["ID", "ADDRESS", "ROLE", "TERM", "APPLIED", "CONFIG"]
            .map(String::from)
            .to_vec()];
        for m in &g.members {
            rows.push(match &m.reply {
                Ok(r) => vec![
                    r.node_id.to_string(),
                    m.addr.clone(),
                    r.role.clone(),
                    r.term.to_string(),
                    r.applied_index.to_string(),
                    r.config_num.to_string(),
                ],
                Err(e) => vec![
                    opt(m.id),
                    m.addr.clone(),
                    format!("unreachable ({})", e.replace('\n', " ")),
                ],
            });
        }
        table(&mut out, &rows);
        let Some(from) = g.shards_from else {
            out.push_str("  shards: unknown (no member answered)\n");
            continue;
        };
        let _ = writeln!(out, "  shards (as member {from} reports them):");
        let (empty, listed): (Vec<_>, Vec<_>) = g
            .shards
            .iter()
            .partition(|s| s.state == "serving" && s.keys == 0);
        let mut rows = vec![["SHARD", "STATE", "KEYS", "BYTES"]
            .map(String::from)
            .to_vec()];
        for s in listed {
            rows.push(vec![
                s.shard.to_string(),
                s.state.clone(),
                s.keys.to_string(),
                s.bytes.to_string(),
            ]);
        }
        if !empty.is_empty() {
            let ids: Vec<u64> = empty.iter().map(|s| s.shard).collect();
            rows.push(vec![ranges(&ids), "serving".into(), "0".into(), "0".into()]);
        }
        table(&mut out, &rows);
    }
    out
}

fn to_json(view: &ClusterView) -> serde_json::Value {
    let groups: Vec<serde_json::Value> = view
        .groups
        .iter()
        .map(|g| {
            let members: Vec<serde_json::Value> = g
                .members
                .iter()
                .map(|m| match &m.reply {
                    Ok(r) => serde_json::json!({
                        "id": r.node_id,
                        "addr": m.addr,
                        "reachable": true,
                        "role": r.role,
                        "term": r.term,
                        "leader_id": r.leader_id,
                        "commit_index": r.commit_index,
                        "applied_index": r.applied_index,
                        "snapshot_index": r.snapshot_index,
                        "config_num": r.config_num,
                        "sessions": r.sessions,
                    }),
                    Err(e) => serde_json::json!({
                        "id": m.id,
                        "addr": m.addr,
                        "reachable": false,
                        "error": e,
                    }),
                })
                .collect();
            let shards: Vec<serde_json::Value> = g
                .shards
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "shard": s.shard, "state": s.state, "keys": s.keys, "bytes": s.bytes,
                    })
                })
                .collect();
            let leader_addr = g.leader.and_then(|l| {
                g.members
                    .iter()
                    .find(|m| m.id == Some(l))
                    .map(|m| m.addr.clone())
            });
            serde_json::json!({
                "gid": g.gid,
                "leader_id": g.leader,
                "leader_addr": leader_addr,
                "term": g.term,
                "config_num": g.config_num,
                "members": members,
                "shards_from": g.shards_from,
                "shards": shards,
            })
        })
        .collect();
    serde_json::json!({ "config_num": view.config_num, "groups": groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(id: u64, role: &str, term: u64, leader: u64, applied: u64) -> pb::StatusReply {
        pb::StatusReply {
            gid: 1,
            node_id: id,
            role: role.into(),
            term,
            leader_id: leader,
            applied_index: applied,
            members: (1..=3)
                .map(|i| pb::Member {
                    id: i,
                    addr: format!("h:{i}"),
                    role: "voter".into(),
                })
                .collect(),
            config_num: 2,
            shards: vec![pb::ShardStatus {
                shard: id,
                state: "serving".into(),
                keys: 1,
                bytes: 2,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn takes_shards_from_the_leader_and_names_unreachable_members() {
        let view = summarize(
            2,
            vec![(
                1,
                vec![
                    ("h:1".into(), Ok(reply(1, "follower", 3, 2, 10))),
                    ("h:2".into(), Ok(reply(2, "leader", 3, 2, 9))),
                    ("h:3".into(), Err("connection refused".into())),
                ],
            )],
        );
        let g = &view.groups[0];
        assert_eq!((g.leader, g.term, g.shards_from), (Some(2), 3, Some(2)));
        assert_eq!(g.shards[0].shard, 2);
        assert_eq!(g.members[2].id, Some(3));
        let text = render(&view, false);
        assert!(
            text.contains("h:3      unreachable (connection refused)"),
            "{text}"
        );
        let json = to_json(&view);
        assert_eq!(json["groups"][0]["leader_addr"], "h:2");
        assert_eq!(json["groups"][0]["members"][2]["reachable"], false);
    }

    #[test]
    fn compacts_shard_ranges() {
        assert_eq!(ranges(&[]), "");
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }

    #[test]
    fn without_a_leader_shows_the_most_advanced_member() {
        let view = summarize(
            2,
            vec![(
                1,
                vec![
                    ("h:1".into(), Ok(reply(1, "candidate", 4, 0, 10))),
                    ("h:2".into(), Ok(reply(2, "follower", 3, 0, 12))),
                    ("h:3".into(), Err("down".into())),
                ],
            )],
        );
        let g = &view.groups[0];
        assert_eq!((g.leader, g.term, g.shards_from), (None, 4, Some(2)));
    }
}
