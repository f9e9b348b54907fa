//! A minimal writer of the Prometheus text exposition format (version 0.0.4), and the
//! rendering of a member's Raft status and [`RaftMetrics`]; and the reading side the
//! dashboard needs: picking families out of a rendered text ([`select_families`]) and parsing
//! samples back ([`parse`]).
//!
//! The format's rules this writer keeps: one `# HELP` and one `# TYPE` line per family, all
//! samples of a family right after them, label values escaped (`\\`, `\"`, `\n`), histograms
//! as cumulative `_bucket{le=..}` samples ending with `+Inf`, then `_sum` and `_count`.

use std::fmt::Write as _;
use std::time::Instant;

use quorumkv_raft_core::{HistogramSnapshot, RaftMetrics, Role, Status};

/// The content type of the format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Writes families whose samples all carry the same base labels (`group`, `node`).
pub struct MetricsWriter {
    out: String,
    /// Rendered base labels, `group="1",node="2"`.
    base: String,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

impl MetricsWriter {
    /// A writer whose every sample carries `base` labels.
    pub fn new(base: &[(&str, &str)]) -> Self {
        let base = base
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect::<Vec<_>>()
            .join(",");
        MetricsWriter {
            out: String::new(),
            base,
        }
    }

    /// Starts a family: its `HELP` and `TYPE` lines. `name` must start with `quorumkv_`.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(name.starts_with("quorumkv_"), "{name}");
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn labels(&self, extra: &[(&str, &str)]) -> String {
        let mut l = self.base.clone();
        for (k, v) in extra {
            if !l.is_empty() {
                l.push(',');
            }
            let _ = write!(l, "{k}=\"{}\"", escape(v));
        }
        l
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let l = self.labels(labels);
        let _ = writeln!(self.out, "{name}{{{l}}} {}", number(value));
    }

    /// A family with a single, unlabelled (besides the base labels) counter sample.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, Kind::Counter, help);
        self.sample(name, &[], value as f64);
    }

    /// A family with a single, unlabelled (besides the base labels) gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, Kind::Gauge, help);
        self.sample(name, &[], value);
    }

    /// The samples of one histogram of the current family (`_bucket`, `_sum`, `_count`).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        for (bound, count) in &h.buckets {
            let le = number(*bound);
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &l, *count as f64);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// One parsed sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The family a sample or comment line belongs to is one of `families` (a histogram family
/// owns its `_bucket`, `_sum` and `_count` samples).
fn in_families(name: &str, families: &[String]) -> bool {
    families.iter().any(|f| {
        name.strip_prefix(f.as_str())
            .is_some_and(|rest| ["", "_bucket", "_sum", "_count"].contains(&rest))
    })
}

/// The lines of `text` (as [`MetricsWriter`] renders it) that belong to `families`, comments
/// included; every line when `families` is empty.
pub fn select_families(text: &str, families: &[String]) -> String {
    if families.is_empty() {
        return text.to_string();
    }
    let mut out = String::new();
    for line in text.lines() {
        let name = match line.strip_prefix("# ") {
            Some(comment) => comment.split(' ').nth(1).unwrap_or_default(),
            None => line.split(['{', ' ']).next().unwrap_or_default(),
        };
        if in_families(name, families) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The samples of a text in the exposition format (comments and malformed lines skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let Some(open) = line.find('{') else {
        let (name, value) = line.split_once(' ')?;
        return Some(Sample {
            name: name.to_string(),
            labels: Vec::new(),
            value: parse_number(value.trim())?,
        });
    };
    let mut rest = &line[open + 1..];
    let mut labels = Vec::new();
    while !rest.starts_with('}') {
        let (key, quoted) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i + 1,
                (_, c) => value.push(c),
            }
        };
        labels.push((key.to_string(), value));
        rest = &quoted[end..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Some(Sample {
        name: line[..open].to_string(),
        labels,
        value: parse_number(rest[1..].trim())?,
    })
}

fn parse_number(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        v => v.parse().ok(),
    }
}

fn role_label(r: Role) -> &'static str {
    match r {
        Role::Follower => "follower",
        Role::PreCandidate => "pre_candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

/// Renders the Raft families of one member.
pub fn render_raft(w: &mut MetricsWriter, s: &Status, m: &RaftMetrics, started: Instant) {
    w.gauge(
        "quorumkv_uptime_seconds",
        "Seconds since the server started.",
        started.elapsed().as_secs_f64(),
    );
    w.family(
        "quorumkv_raft_role",
        Kind::Gauge,
        "1 for the member's current Raft role, 0 for the others.",
    );
    for r in [
        Role::Follower,
        Role::PreCandidate,
        Role::Candidate,
        Role::Leader,
    ] {
        let v = if s.role == r { 1.0 } else { 0.0 };
        w.sample("quorumkv_raft_role", &[("role", role_label(r))], v);
    }
    let gauges: [(&str, &str, u64); 9] = [
        ("quorumkv_raft_term", "Current Raft term.", s.term),
        (
            "quorumkv_raft_leader_id",
            "Id of the leader this member knows, 0 when none.",
            s.leader_id.unwrap_or(0),
        ),
        (
            "quorumkv_raft_commit_index",
            "Highest log index known committed.",
            s.commit_index,
        ),
        (
            "quorumkv_raft_applied_index",
            "Highest log index applied to the state machine.",
            s.applied_index,
        ),
        (
            "quorumkv_raft_first_index",
            "First log index still stored.",
            s.first_index,
        ),
        (
            "quorumkv_raft_last_index",
            "Last log index stored.",
            s.last_index,
        ),
        (
            "quorumkv_raft_snapshot_index",
            "Log index of the latest snapshot.",
            s.snapshot_index,
        ),
        (
            "quorumkv_raft_voters",
            "Voters in the current configuration.",
            s.voters.len() as u64,
        ),
        (
            "quorumkv_raft_learners",
            "Learners in the current configuration.",
            s.learners.len() as u64,
        ),
    ];
    for (name, help, v) in gauges {
        w.gauge(name, help, v as f64);
    }
    w.gauge(
        "quorumkv_raft_driver_heartbeat_age_seconds",
        "Seconds since the Raft driver's latest loop iteration.",
        m.driver_heartbeat_age().as_secs_f64(),
    );
    w.gauge(
        "quorumkv_raft_stopped",
        "1 when the Raft driver has stopped.",
        if s.stopped { 1.0 } else { 0.0 },
    );

    for (what, one, req, desc) in [
        ("proposals", "proposal", &m.proposals, "Proposals"),
        (
            "read_index",
            "read_index",
            &m.read_index,
            "ReadIndex requests (linearizable reads)",
        ),
    ] {
        let total = format!("quorumkv_raft_{what}_total");
        w.counter(&total, &format!("{desc} made on this member."), req.total());
        let failed = format!("quorumkv_raft_{what}_failed_total");
        w.family(
            &failed,
            Kind::Counter,
            &format!("{desc} that failed, by error kind."),
        );
        for (kind, n) in req.failed() {
            w.sample(&failed, &[("error", kind.as_str())], n as f64);
        }
        let latency = format!("quorumkv_raft_{one}_duration_seconds");
        w.family(
            &latency,
            Kind::Histogram,
            &format!("{desc}: seconds from the call to the result."),
        );
        w.histogram(&latency, &[], &req.latency.snapshot());
    }

    let stages = "quorumkv_raft_proposal_stage_duration_seconds";
    w.family(
        stages,
        Kind::Histogram,
        "Where this member's proposals spend their time, stage by stage: queued (inbox to \
         driver), persisted (own log fsync), committed (quorum durable), applied, replied \
         (reply handed back); each from the previous stage.",
    );
    for (stage, h) in m.proposal_stages.all() {
        w.histogram(stages, &[("stage", stage)], &h.snapshot());
    }
    w.family(
        "quorumkv_raft_log_write_duration_seconds",
        Kind::Histogram,
        "Raft log writes (entries or a new term/vote, fdatasync included).",
    );
    w.histogram(
        "quorumkv_raft_log_write_duration_seconds",
        &[],
        &m.log_write.snapshot(),
    );

    let peers = m.peers();
    w.family(
        "quorumkv_raft_messages_sent_total",
        Kind::Counter,
        "Raft messages handed to the peer's stream.",
    );
    for (peer, sent, _) in &peers {
        w.sample(
            "quorumkv_raft_messages_sent_total",
            &[("peer", &peer.to_string())],
            *sent as f64,
        );
    }
    w.family(
        "quorumkv_raft_messages_dropped_total",
        Kind::Counter,
        "Raft messages to the peer discarded (queue full, no address, connection failed).",
    );
    for (peer, _, dropped) in &peers {
        w.sample(
            "quorumkv_raft_messages_dropped_total",
            &[("peer", &peer.to_string())],
            *dropped as f64,
        );
    }
    use std::sync::atomic::Ordering::Relaxed;
    let snaps: [(&str, &str, u64); 6] = [
        (
            "quorumkv_raft_store_syncs_total",
            "Syncs of the state machine's own store that let the log be compacted.",
            m.store_syncs.load(Relaxed),
        ),
        (
            "quorumkv_raft_snapshot_failures_total",
            "Snapshot writes or store syncs that failed (retried later).",
            m.snapshot_failures.load(Relaxed),
        ),
        (
            "quorumkv_raft_snapshots_sent_total",
            "Snapshot transfers to peers that completed.",
            m.snapshots_sent.load(Relaxed),
        ),
        (
            "quorumkv_raft_snapshots_send_failed_total",
            "Snapshot transfers to peers that failed.",
            m.snapshots_send_failed.load(Relaxed),
        ),
        (
            "quorumkv_raft_snapshots_taken_total",
            "Snapshot files written of the local state machine (log compaction, or to send).",
            m.snapshots_taken.load(Relaxed),
        ),
        (
            "quorumkv_raft_snapshots_installed_total",
            "Snapshots received from a leader and installed.",
            m.snapshots_installed.load(Relaxed),
        ),
    ];
    for (name, help, v) in snaps {
        w.counter(name, help, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumkv_raft_core::Histogram;
    use std::time::Duration;

    #[test]
    fn renders_families_with_base_labels_and_escapes() {
        let mut w = MetricsWriter::new(&[("group", "1"), ("node", "2")]);
        w.counter("quorumkv_x_total", "An x.", 3);
        w.family("quorumkv_y", Kind::Gauge, "A y.");
        w.sample("quorumkv_y", &[("k", "a\"b\\c\nd")], 0.5);
        let h = Histogram::new();
        h.observe(Duration::from_millis(2));
        w.family("quorumkv_z_seconds", Kind::Histogram, "A z.");
        w.histogram("quorumkv_z_seconds", &[("op", "get")], &h.snapshot());
        let text = w.finish();
        assert!(text.contains("# HELP quorumkv_x_total An x.\n# TYPE quorumkv_x_total counter\nquorumkv_x_total{group=\"1\",node=\"2\"} 3\n"), "{text}");
        assert!(
            text.contains(r#"quorumkv_y{group="1",node="2",k="a\"b\\c\nd"} 0.5"#),
            "{text}"
        );
        assert!(
            text.contains(r#"quorumkv_z_seconds_bucket{group="1",node="2",op="get",le="0.001"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"quorumkv_z_seconds_bucket{group="1",node="2",op="get",le="0.0025"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"quorumkv_z_seconds_bucket{group="1",node="2",op="get",le="+Inf"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"quorumkv_z_seconds_count{group="1",node="2",op="get"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn parses_back_what_it_writes() {
        let mut w = MetricsWriter::new(&[("group", "1"), ("node", "2")]);
        w.counter("quorumkv_x_total", "An x.", 3);
        w.family("quorumkv_y", Kind::Gauge, "A y.");
        w.sample("quorumkv_y", &[("k", "a\"b\\c\nd,e}")], 0.5);
        let h = Histogram::new();
        h.observe(Duration::from_millis(2));
        w.family("quorumkv_z_seconds", Kind::Histogram, "A z.");
        w.histogram("quorumkv_z_seconds", &[("op", "get")], &h.snapshot());
        let text = w.finish();
        let samples = parse(&text);
        assert_eq!(samples[0].name, "quorumkv_x_total");
        assert_eq!(samples[0].label("node"), Some("2"));
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[1].label("k"), Some("a\"b\\c\nd,e}"));
        let inf = samples
            .iter()
            .find(|s| s.label("le") == Some("+Inf"))
            .unwrap();
        assert_eq!(
            (inf.name.as_str(), inf.value),
            ("quorumkv_z_seconds_bucket", 1.0)
        );

        let picked = select_families(&text, &["quorumkv_z_seconds".into()]);
        assert!(
            picked.starts_with("# HELP quorumkv_z_seconds A z.\n"),
            "{picked}"
        );
        assert!(picked.contains("quorumkv_z_seconds_count{"), "{picked}");
        assert!(!picked.contains("quorumkv_x_total") && !picked.contains("quorumkv_y"));
        assert_eq!(select_families(&text, &[]), text);
    }

    #[test]
    fn raft_families_are_complete_and_typed_once() {
        let m = RaftMetrics::new();
        m.peer(3)
            .sent
            .fetch_add(5, std::sync::atomic::Ordering::Relaxed);
        let s = Status {
            id: 1,
            role: Role::Leader,
            leader_id: Some(1),
            voters: vec![1, 2, 3],
            ..Status::default()
        };
        let mut w = MetricsWriter::new(&[("group", "7"), ("node", "1")]);
        render_raft(&mut w, &s, &m, Instant::now());
        let text = w.finish();
        assert!(text.contains(r#"quorumkv_raft_role{group="7",node="1",role="leader"} 1"#));
        assert!(text.contains(r#"quorumkv_raft_role{group="7",node="1",role="follower"} 0"#));
        assert!(text.contains(r#"quorumkv_raft_voters{group="7",node="1"} 3"#));
        assert!(
            text.contains(r#"quorumkv_raft_messages_sent_total{group="7",node="1",peer="3"} 5"#)
        );
        let mut typed = std::collections::BTreeSet::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(typed.insert(name.to_string()), "{name} typed twice");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("quorumkv_"), "{line}");
        }
    }
}
