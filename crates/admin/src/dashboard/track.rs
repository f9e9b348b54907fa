//! From observations to what the page shows: the cluster now, plus what only a sequence of
//! observations tells — throughput and p99 latency per group (from the deltas of each member's
//! cumulative counters and histogram buckets), leader changes, members going down or coming
//! back, new configurations. Pure and deterministic: time comes in as milliseconds.
//!
//! Memory is bounded: [`WINDOW_MS`] of points per group, the last [`MAX_EVENTS`] events, and
//! the last counters of each member.

use std::collections::{BTreeMap, HashMap, VecDeque};

use quorumkv_proto::admin as pb;
use quorumkv_shardctrler_client::Config;
use serde::Serialize;

use super::gather::{Answer, Observation, CONTROLLER};
use crate::prom::{parse, Sample};

/// How far back the throughput and latency series go.
pub const WINDOW_MS: u64 = 5 * 60 * 1000;
/// Events kept (newest first on the page).
pub const MAX_EVENTS: usize = 100;
/// Counters older than this are not used for a rate: after a long gap (no one looking) a rate
/// would average over the whole gap.
const MAX_GAP_MS: u64 = 10_000;

/// The JSON of `GET /api/cluster`.
#[derive(Debug, Serialize)]
pub struct ClusterJson {
    /// The member that gathered this: its group (0 = controller) and id.
    pub served_by: Served,
    /// When (Unix milliseconds).
    pub now_ms: u64,
    pub window_ms: u64,
    /// What went wrong gathering, if anything (e.g. the controller did not answer).
    pub error: Option<String>,
    /// The latest configuration; `stale` when it is the last one seen, not a fresh answer.
    pub config: Option<ConfigJson>,
    /// Shards not simply served by their owner: arriving, arrived but not cleaned up, leaving.
    pub migrations: Vec<MigrationJson>,
    /// The controller first, then the replica groups by gid.
    pub groups: Vec<GroupJson>,
    /// Newest first.
    pub events: Vec<Event>,
}

#[derive(Debug, Serialize)]
pub struct Served {
    pub group: u64,
    pub node: u64,
}

#[derive(Debug, Serialize)]
pub struct ConfigJson {
    pub num: u64,
    /// `shards[s]` is the gid owning shard `s`, 0 for none.
    pub shards: Vec<u64>,
    pub stale: bool,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct MigrationJson {
    pub shard: u64,
    /// Its owner in the latest configuration.
    pub to: u64,
    /// The group still holding the previous copy (`handing_off` there), when one does.
    pub from: Option<u64>,
    /// The state the owner reports (`pulling`, `collecting`), or `handing_off` when only the
    /// previous owner has it yet.
    pub state: String,
    /// Keys arrived at the owner, and keys at the previous owner.
    pub keys: Option<u64>,
    pub of_keys: Option<u64>,
    /// Arrived keys over the previous owner's, from 0 to 1, when both are known.
    pub progress: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct GroupJson {
    pub gid: u64,
    pub name: String,
    /// The leader as the answering member with the highest term knows it.
    pub leader: Option<u64>,
    pub term: u64,
    /// Shards the latest configuration gives the group.
    pub shards: usize,
    /// Keys and bytes held (as the leader, or the most advanced member, reports them).
    pub keys: u64,
    pub bytes: u64,
    /// The configuration the group has reached (replica groups).
    pub reached_config: Option<u64>,
    pub members: Vec<MemberJson>,
    /// Client requests served per second and their p99 latency, one point per observation.
    pub series: Vec<Point>,
}

#[derive(Debug, Serialize)]
pub struct MemberJson {
    /// From its answer, or from another member's address book when it did not answer.
    pub id: Option<u64>,
    pub addr: String,
    pub up: bool,
    /// Why it did not answer.
    pub error: Option<String>,
    pub role: Option<String>,
    pub term: Option<u64>,
    pub commit: Option<u64>,
    pub applied: Option<u64>,
    pub ready: Option<bool>,
    /// The failed readiness check and why.
    pub not_ready: Option<String>,
    pub not_ready_detail: Option<String>,
    pub uptime_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// Unix milliseconds.
    pub t: u64,
    /// Successful client requests per second.
    pub ops: f64,
    /// Their 99th percentile latency in milliseconds; `None` when there were none.
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    pub t: u64,
    pub gid: u64,
    pub text: String,
}

/// A member's cumulative request counters at one observation.
#[derive(Debug, Clone)]
struct Counters {
    at_ms: u64,
    ok: f64,
    /// Cumulative histogram buckets of successful requests: (upper bound in seconds, count).
    buckets: Vec<(f64, f64)>,
}

/// What one member's metrics say.
#[derive(Debug, Default)]
struct Parsed {
    ok: f64,
    buckets: Vec<(f64, f64)>,
    /// shard -> (state, keys, bytes)
    shards: BTreeMap<u64, (String, u64, u64)>,
    config_num: Option<u64>,
}

fn parse_member(gid: u64, view: &pb::MemberView) -> Parsed {
    let (requests, latency) = if gid == CONTROLLER {
        (
            "quorumkv_ctrler_requests_total",
            "quorumkv_ctrler_request_duration_seconds_bucket",
        )
    } else {
        (
            "quorumkv_kv_requests_total",
            "quorumkv_kv_request_duration_seconds_bucket",
        )
    };
    let ok = |s: &Sample| s.label("result").is_none_or(|r| r == "ok");
    let shard = |s: &Sample| s.label("shard").and_then(|v| v.parse::<u64>().ok());
    let mut p = Parsed::default();
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for s in parse(&view.metrics) {
        match s.name.as_str() {
            n if n == requests && ok(&s) => p.ok += s.value,
            n if n == latency && ok(&s) => {
                let Some(le) = s.label("le").and_then(|v| v.parse::<f64>().ok()) else {
                    continue;
                };
                buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += s.value;
            }
            "quorumkv_shard_state" if s.value == 1.0 => {
                if let (Some(id), Some(state)) = (shard(&s), s.label("state")) {
                    p.shards.entry(id).or_default().0 = state.to_string();
                }
            }
            "quorumkv_shard_keys" => {
                if let Some(id) = shard(&s) {
                    p.shards.entry(id).or_default().1 = s.value as u64;
                }
            }
            "quorumkv_shard_bytes" => {
                if let Some(id) = shard(&s) {
                    p.shards.entry(id).or_default().2 = s.value as u64;
                }
            }
            "quorumkv_shardkv_config_num" => p.config_num = Some(s.value as u64),
            _ => {}
        }
    }
    p.buckets = buckets.into_values().collect();
    p.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    p
}

/// The `q` quantile of cumulative `buckets` (sorted, the last one `+Inf`), interpolated
/// linearly within its bucket as Prometheus' `histogram_quantile` does.
fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            let frac = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some(lower + (le - lower) * frac);
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

/// What a member did between two observations; a restarted member (counters went down)
/// counts from zero.
fn delta(prev: &Counters, now: &Parsed) -> (f64, Vec<(f64, f64)>) {
    let restarted = now.ok < prev.ok
        || now.buckets.len() != prev.buckets.len()
        || now
            .buckets
            .iter()
            .zip(&prev.buckets)
            .any(|(n, p)| n.1 < p.1);
    if restarted {
        return (now.ok, now.buckets.clone());
    }
    let buckets = now
        .buckets
        .iter()
        .zip(&prev.buckets)
        .map(|(n, p)| (n.0, n.1 - p.1))
        .collect();
    (now.ok - prev.ok, buckets)
}

fn group_name(gid: u64) -> String {
    if gid == CONTROLLER {
        "controller".into()
    } else {
        format!("group {gid}")
    }
}

/// Keeps what the page needs across observations.
#[derive(Default)]
pub struct Tracker {
    counters: HashMap<(u64, u64), Counters>,
    series: BTreeMap<u64, VecDeque<Point>>,
    /// The (leader, term) of each group at the last observation.
    leaders: BTreeMap<u64, (Option<u64>, u64)>,
    /// Whether each (group, address) answered at the last observation.
    up: BTreeMap<(u64, String), bool>,
    events: VecDeque<Event>,
    config: Option<Config>,
}

impl Tracker {
    /// The last configuration seen.
    pub fn config(&self) -> Option<&Config> {
        self.config.as_ref()
    }

    fn event(&mut self, t: u64, gid: u64, text: String) {
        self.events.push_front(Event { t, gid, text });
        self.events.truncate(MAX_EVENTS);
    }

    /// Takes in one observation made at `now_ms` by member `served_by`; returns the page's
    /// data.
    pub fn update(&mut self, now_ms: u64, served_by: Served, obs: Observation) -> ClusterJson {
        let mut error = None;
        let stale = match obs.config {
            Ok(c) => {
                self.note_config(now_ms, &c);
                self.config = Some(c);
                false
            }
            Err(e) => {
                error = Some(e);
                true
            }
        };
        let mut groups = Vec::new();
        let mut held: BTreeMap<u64, BTreeMap<u64, (String, u64, u64)>> = BTreeMap::new();
        for (gid, answers) in &obs.groups {
            let (group, shards) = self.group(now_ms, *gid, answers);
            held.insert(*gid, shards);
            groups.push(group);
        }
        self.series.retain(|gid, _| obs.groups.contains_key(gid));
        let config = self.config.as_ref();
        for g in &mut groups {
            g.shards = config.map_or(0, |c| c.shards.iter().filter(|o| **o == g.gid).count());
        }
        ClusterJson {
            served_by,
            now_ms,
            window_ms: WINDOW_MS,
            error,
            migrations: config.map(|c| migrations(c, &held)).unwrap_or_default(),
            config: config.map(|c| ConfigJson {
                num: c.num,
                shards: c.shards.clone(),
                stale,
            }),
            groups,
            events: self.events.iter().cloned().collect(),
        }
    }

    fn note_config(&mut self, now_ms: u64, new: &Config) {
        let Some(old) = &self.config else {
            return;
        };
        if new.num <= old.num {
            return;
        }
        let mut changes: Vec<String> = Vec::new();
        for gid in new.groups.keys().filter(|g| !old.groups.contains_key(g)) {
            changes.push(format!("group {gid} joined"));
        }
        for gid in old.groups.keys().filter(|g| !new.groups.contains_key(g)) {
            changes.push(format!("group {gid} left"));
        }
        let moved: Vec<(usize, u64)> = new
            .shards
            .iter()
            .zip(&old.shards)
            .enumerate()
            .filter(|(_, (n, o))| n != o)
            .map(|(s, (n, _))| (s, *n))
            .collect();
        match moved.len() {
            0 => {}
            1..=4 => changes.extend(
                moved
                    .iter()
                    .map(|(s, to)| format!("shard {s} → group {to}")),
            ),
            n => changes.push(format!("{n} shards moved")),
        }
        for (gid, servers) in &new.groups {
            if old.groups.get(gid).is_some_and(|s| s != servers) {
                changes.push(format!("group {gid}'s servers changed"));
            }
        }
        if changes.is_empty() {
            changes.push("no shard moved".into());
        }
        let text = format!("configuration {}: {}", new.num, changes.join(", "));
        self.event(now_ms, CONTROLLER, text);
    }

    /// One group's members and series; also the shards its most authoritative member holds.
    fn group(
        &mut self,
        now_ms: u64,
        gid: u64,
        answers: &[Answer],
    ) -> (GroupJson, BTreeMap<u64, (String, u64, u64)>) {
        let views: Vec<&pb::MemberView> = answers
            .iter()
            .filter_map(|a| a.view.as_ref().ok())
            .collect();
        let newest = views.iter().max_by_key(|v| (v.term, v.applied_index));
        let term = newest.map_or(0, |v| v.term);
        let leader = newest.map(|v| v.leader_id).filter(|id| *id != 0);
        let source = views
            .iter()
            .find(|v| v.role == "leader" && v.term == term)
            .or_else(|| views.iter().max_by_key(|v| v.applied_index));

        // Leader changes.
        let name = group_name(gid);
        if let Some((was, _)) = self.leaders.insert(gid, (leader, term)) {
            if was != leader {
                let text = match (leader, was) {
                    (Some(l), Some(w)) => {
                        format!("{name}: member {l} leads (term {term}), was {w}")
                    }
                    (Some(l), None) => format!("{name}: member {l} leads (term {term})"),
                    (None, _) => format!("{name}: no leader (term {term})"),
                };
                self.event(now_ms, gid, text);
            }
        }

        // Members, with ids for those that did not answer from the others' address books.
        let id_of = |addr: &str| {
            views
                .iter()
                .flat_map(|v| &v.members)
                .find(|m| m.addr == addr)
                .map(|m| m.id)
        };
        let mut members = Vec::new();
        let mut throughput = 0.0;
        let mut merged: Vec<(f64, f64)> = Vec::new();
        let mut measured = false;
        for a in answers {
            let up = a.view.is_ok();
            let was_up = self.up.insert((gid, a.addr.clone()), up);
            let id = match &a.view {
                Ok(v) => Some(v.node_id),
                Err(_) => id_of(&a.addr),
            };
            if was_up.is_some_and(|w| w != up) {
                let who = match id {
                    Some(id) => format!("member {id} ({})", a.addr),
                    None => a.addr.clone(),
                };
                let text = match &a.view {
                    Ok(_) => format!("{name}: {who} is back"),
                    Err(e) => format!("{name}: {who} is down: {e}"),
                };
                self.event(now_ms, gid, text);
            }
            let Ok(v) = &a.view else {
                members.push(MemberJson {
                    id,
                    addr: a.addr.clone(),
                    up: false,
                    error: a.view.as_ref().err().cloned(),
                    role: None,
                    term: None,
                    commit: None,
                    applied: None,
                    ready: None,
                    not_ready: None,
                    not_ready_detail: None,
                    uptime_secs: None,
                });
                continue;
            };
            let parsed = parse_member(gid, v);
            let key = (gid, v.node_id);
            if let Some(prev) = self.counters.get(&key) {
                let gap = now_ms.saturating_sub(prev.at_ms);
                if gap > 0 && gap <= MAX_GAP_MS {
                    let (ok, buckets) = delta(prev, &parsed);
                    throughput += ok * 1000.0 / gap as f64;
                    if merged.is_empty() {
                        merged = buckets;
                    } else if merged.len() == buckets.len() {
                        for (m, b) in merged.iter_mut().zip(&buckets) {
                            m.1 += b.1;
                        }
                    }
                    measured = true;
                }
            }
            self.counters.insert(
                key,
                Counters {
                    at_ms: now_ms,
                    ok: parsed.ok,
                    buckets: parsed.buckets,
                },
            );
            members.push(MemberJson {
                id,
                addr: a.addr.clone(),
                up: true,
                error: None,
                role: Some(v.role.clone()),
                term: Some(v.term),
                commit: Some(v.commit_index),
                applied: Some(v.applied_index),
                ready: Some(v.ready),
                not_ready: (!v.ready).then(|| v.not_ready.clone()),
                not_ready_detail: (!v.ready).then(|| v.not_ready_detail.clone()),
                uptime_secs: Some(v.uptime_secs),
            });
        }
        // A member reached at two addresses (a seed such as a load-balanced name, and its
        // own) is listed once, at the address its group's address book records.
        let booked = |addr: &str| {
            views
                .iter()
                .flat_map(|v| &v.members)
                .any(|m| m.addr == addr)
        };
        let twice: Vec<u64> = members
            .iter()
            .filter(|m| m.up && booked(&m.addr))
            .filter_map(|m| m.id)
            .collect();
        members.retain(|m| booked(&m.addr) || !m.up || m.id.is_none_or(|id| !twice.contains(&id)));
        members.sort_by_key(|m| (m.id.is_none(), m.id, m.addr.clone()));

        let series = self.series.entry(gid).or_default();
        if measured {
            series.push_back(Point {
                t: now_ms,
                ops: throughput,
                p99_ms: quantile(0.99, &merged).map(|s| s * 1000.0),
            });
        }
        while series.front().is_some_and(|p| p.t + WINDOW_MS < now_ms) {
            series.pop_front();
        }

        let parsed = source.map(|v| parse_member(gid, v)).unwrap_or_default();
        let (keys, bytes) = parsed
            .shards
            .values()
            .fold((0, 0), |(k, b), s| (k + s.1, b + s.2));
        let group = GroupJson {
            gid,
            name,
            leader,
            term,
            shards: 0,
            keys,
            bytes,
            reached_config: parsed.config_num,
            members,
            series: series.iter().cloned().collect(),
        };
        (group, parsed.shards)
    }
}

/// The shards in migration: those some group holds in a state other than `serving`.
fn migrations(
    config: &Config,
    held: &BTreeMap<u64, BTreeMap<u64, (String, u64, u64)>>,
) -> Vec<MigrationJson> {
    let mut out: BTreeMap<u64, MigrationJson> = BTreeMap::new();
    let holding_off = |shard: u64| {
        held.iter().find_map(|(gid, shards)| {
            shards
                .get(&shard)
                .filter(|s| s.0 == "handing_off")
                .map(|s| (*gid, s.1))
        })
    };
    for shards in held.values() {
        for (shard, (state, _, _)) in shards {
            if state == "serving" || out.contains_key(shard) {
                continue;
            }
            let to = config.shards.get(*shard as usize).copied().unwrap_or(0);
            let from = holding_off(*shard);
            let at_owner = held
                .get(&to)
                .and_then(|s| s.get(shard))
                .filter(|s| s.0 != "handing_off");
            let (state, keys) = match at_owner {
                Some((state, keys, _)) => (state.clone(), Some(*keys)),
                None => ("handing_off".to_string(), None),
            };
            let of_keys = from.map(|f| f.1);
            let progress = match (state.as_str(), keys, of_keys) {
                ("collecting", _, _) => Some(1.0),
                (_, Some(k), Some(of)) if of > 0 => Some((k as f64 / of as f64).min(1.0)),
                _ => None,
            };
            out.insert(
                *shard,
                MigrationJson {
                    shard: *shard,
                    to,
                    from: from.map(|f| f.0),
                    state,
                    keys,
                    of_keys,
                    progress,
                },
            );
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prom::{Kind, MetricsWriter};
    use quorumkv_raft_core::{Histogram, HistogramSnapshot};
    use std::time::Duration;

    /// The metrics of a replica group member that served `served` requests: (how many, each
    /// taking how long).
    fn kv_metrics(
        gid: u64,
        node: u64,
        served: &[(u64, Duration)],
        shards: &[(u64, &str, u64)],
    ) -> String {
        let ok: u64 = served.iter().map(|(n, _)| n).sum();
        let (g, n) = (gid.to_string(), node.to_string());
        let mut w = MetricsWriter::new(&[("group", &g), ("node", &n)]);
        w.family("quorumkv_kv_requests_total", Kind::Counter, "x");
        w.sample(
            "quorumkv_kv_requests_total",
            &[("op", "get"), ("result", "ok")],
            ok as f64,
        );
        w.sample(
            "quorumkv_kv_requests_total",
            &[("op", "get"), ("result", "wrong_group")],
            7.0,
        );
        w.family("quorumkv_kv_request_duration_seconds", Kind::Histogram, "x");
        let h = Histogram::new();
        for (n, each) in served {
            for _ in 0..*n {
                h.observe(*each);
            }
        }
        let snap: HistogramSnapshot = h.snapshot();
        w.histogram(
            "quorumkv_kv_request_duration_seconds",
            &[("op", "get"), ("result", "ok")],
            &snap,
        );
        w.gauge("quorumkv_shardkv_config_num", "x", 3.0);
        w.family("quorumkv_shard_state", Kind::Gauge, "x");
        for (shard, state, _) in shards {
            for s in ["serving", "pulling", "collecting", "handing_off"] {
                let v = if s == *state { 1.0 } else { 0.0 };
                w.sample(
                    "quorumkv_shard_state",
                    &[("shard", &shard.to_string()), ("state", s)],
                    v,
                );
            }
        }
        w.family("quorumkv_shard_keys", Kind::Gauge, "x");
        for (shard, _, keys) in shards {
            w.sample(
                "quorumkv_shard_keys",
                &[("shard", &shard.to_string())],
                *keys as f64,
            );
        }
        w.finish()
    }

    fn view(
        gid: u64,
        node: u64,
        role: &str,
        term: u64,
        leader: u64,
        metrics: String,
    ) -> pb::MemberView {
        pb::MemberView {
            group_id: gid,
            node_id: node,
            role: role.into(),
            term,
            leader_id: leader,
            ready: true,
            members: (1..=3)
                .map(|id| pb::Member {
                    id,
                    addr: format!("g{gid}:{id}"),
                    learner: false,
                })
                .collect(),
            metrics,
            ..Default::default()
        }
    }

    fn config(num: u64, shards: Vec<u64>) -> Config {
        let groups = shards
            .iter()
            .filter(|g| **g != 0)
            .map(|g| (*g, (1..=3).map(|id| format!("g{g}:{id}")).collect()))
            .collect();
        Config {
            num,
            shards,
            groups,
        }
    }

    /// Group 1 with its leader (`leader`) answering `ok` requests so far, the others down
    /// or following.
    fn observe(
        num: u64,
        shards: Vec<u64>,
        members: Vec<(u64, Result<pb::MemberView, String>)>,
    ) -> Observation {
        let answers = members
            .into_iter()
            .map(|(id, view)| Answer {
                addr: format!("g1:{id}"),
                view,
            })
            .collect();
        Observation {
            config: Ok(config(num, shards)),
            groups: [(1, answers)].into_iter().collect(),
        }
    }

    fn served() -> Served {
        Served { group: 1, node: 1 }
    }

    /// Group 1's leader, having served `served` requests (how many, each taking how many ms).
    fn leader_of_1(served: &[(u64, u64)]) -> Result<pb::MemberView, String> {
        let served: Vec<(u64, Duration)> = served
            .iter()
            .map(|(n, ms)| (*n, Duration::from_millis(*ms)))
            .collect();
        Ok(view(
            1,
            1,
            "leader",
            2,
            1,
            kv_metrics(1, 1, &served, &[(0, "serving", 5)]),
        ))
    }

    #[test]
    fn throughput_and_p99_come_from_counter_deltas() {
        let mut t = Tracker::default();
        let first = t.update(
            1_000,
            served(),
            observe(1, vec![1, 1], vec![(1, leader_of_1(&[(100, 1)]))]),
        );
        assert!(
            first.groups[0].series.is_empty(),
            "one observation has no rate"
        );
        // 200 more requests of 4 ms in 2 s.
        let second = t.update(
            3_000,
            served(),
            observe(1, vec![1, 1], vec![(1, leader_of_1(&[(100, 1), (200, 4)]))]),
        );
        let p = &second.groups[0].series[0];
        assert_eq!(p.t, 3_000);
        assert!((p.ops - 100.0).abs() < 1e-9, "{p:?}");
        let p99 = p.p99_ms.unwrap();
        assert!(p99 > 2.5 && p99 <= 5.0, "the 4 ms requests' bucket: {p99}");

        // A restarted member counts from zero instead of going negative.
        let third = t.update(
            4_000,
            served(),
            observe(1, vec![1, 1], vec![(1, leader_of_1(&[(50, 1)]))]),
        );
        assert!((third.groups[0].series[1].ops - 50.0).abs() < 1e-9);
        // After a long gap (no one looking) no rate is drawn over the gap.
        let later = t.update(
            60_000,
            served(),
            observe(1, vec![1, 1], vec![(1, leader_of_1(&[(60, 1)]))]),
        );
        assert_eq!(later.groups[0].series.len(), 2);
        // Points older than the window go.
        let much_later = t.update(
            WINDOW_MS + 10_000,
            served(),
            observe(1, vec![1, 1], vec![(1, leader_of_1(&[(70, 1)]))]),
        );
        assert!(much_later.groups[0].series.is_empty());
    }

    #[test]
    fn a_member_reached_at_two_addresses_is_listed_once() {
        let mut t = Tracker::default();
        let mut obs = observe(1, vec![1, 1], vec![(1, leader_of_1(&[]))]);
        obs.groups.get_mut(&1).unwrap().push(Answer {
            addr: "kv.example:7000".into(),
            view: leader_of_1(&[]),
        });
        let view = t.update(1_000, served(), obs);
        let addrs: Vec<&str> = view.groups[0]
            .members
            .iter()
            .map(|m| m.addr.as_str())
            .collect();
        assert_eq!(addrs, ["g1:1"]);
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let b = [(0.001, 0.0), (0.01, 100.0), (f64::INFINITY, 100.0)];
        assert!((quantile(0.5, &b).unwrap() - 0.0055).abs() < 1e-12);
        assert_eq!(quantile(0.99, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
        // Past the last finite bound: that bound.
        assert_eq!(
            quantile(0.99, &[(0.1, 1.0), (f64::INFINITY, 100.0)]),
            Some(0.1)
        );
    }

    #[test]
    fn leader_changes_down_members_and_new_configurations_are_events() {
        let mut t = Tracker::default();
        let follower = |node, leader, term| {
            Ok(view(
                1,
                node,
                "follower",
                term,
                leader,
                kv_metrics(1, node, &[], &[]),
            ))
        };
        t.update(
            1_000,
            served(),
            observe(
                1,
                vec![1, 1],
                vec![
                    (1, leader_of_1(&[])),
                    (2, follower(2, 1, 2)),
                    (3, follower(3, 1, 2)),
                ],
            ),
        );
        let after = t.update(
            2_000,
            served(),
            observe(
                2,
                vec![1, 2],
                vec![
                    (1, Err("tcp connect error".into())),
                    (2, Ok(view(1, 2, "leader", 3, 2, String::new()))),
                    (3, follower(3, 2, 3)),
                ],
            ),
        );
        let texts: Vec<&str> = after.events.iter().map(|e| e.text.as_str()).collect();
        assert!(
            texts.contains(&"configuration 2: group 2 joined, shard 1 → group 2"),
            "{texts:?}"
        );
        assert!(
            texts.contains(&"group 1: member 2 leads (term 3), was 1"),
            "{texts:?}"
        );
        assert!(
            texts.contains(&"group 1: member 1 (g1:1) is down: tcp connect error"),
            "{texts:?}"
        );
        let g = &after.groups[0];
        assert_eq!((g.leader, g.term), (Some(2), 3));
        let down = &g.members[0];
        assert_eq!(
            (down.id, down.up, down.error.as_deref()),
            (Some(1), false, Some("tcp connect error"))
        );
        assert_eq!(after.config.as_ref().map(|c| c.num), Some(2));

        // The controller is unreachable: the last configuration, marked stale, and why.
        let mut obs = observe(
            2,
            vec![1, 2],
            vec![(2, Ok(view(1, 2, "leader", 3, 2, String::new())))],
        );
        obs.config = Err("the controller did not answer".into());
        let stale = t.update(3_000, served(), obs);
        assert_eq!(
            stale.error.as_deref(),
            Some("the controller did not answer")
        );
        assert!(stale.config.unwrap().stale);
    }

    #[test]
    fn migrations_show_the_state_and_progress_of_arriving_shards() {
        let mut t = Tracker::default();
        let g1 = view(
            1,
            1,
            "leader",
            2,
            1,
            kv_metrics(1, 1, &[], &[(0, "serving", 10), (1, "handing_off", 40)]),
        );
        let g2 = view(
            2,
            1,
            "leader",
            2,
            1,
            kv_metrics(2, 1, &[], &[(1, "pulling", 10), (2, "collecting", 3)]),
        );
        let obs = Observation {
            config: Ok(config(3, vec![1, 2, 2])),
            groups: [
                (
                    1,
                    vec![Answer {
                        addr: "g1:1".into(),
                        view: Ok(g1),
                    }],
                ),
                (
                    2,
                    vec![Answer {
                        addr: "g2:1".into(),
                        view: Ok(g2),
                    }],
                ),
            ]
            .into_iter()
            .collect(),
        };
        let view = t.update(1_000, served(), obs);
        assert_eq!(
            view.migrations,
            vec![
                MigrationJson {
                    shard: 1,
                    to: 2,
                    from: Some(1),
                    state: "pulling".into(),
                    keys: Some(10),
                    of_keys: Some(40),
                    progress: Some(0.25),
                },
                MigrationJson {
                    shard: 2,
                    to: 2,
                    from: None,
                    state: "collecting".into(),
                    keys: Some(3),
                    of_keys: None,
                    progress: Some(1.0),
                },
            ]
        );
        assert_eq!((view.groups[0].shards, view.groups[1].shards), (1, 2));
        assert_eq!(view.groups[0].keys, 50);
        assert_eq!(view.groups[1].reached_config, Some(3));
    }
}
