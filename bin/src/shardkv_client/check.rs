//! `shardkv-client check`: a linearizability check a user runs against their own cluster.
//!
//! `--clients` tasks, each a [`KvClient::fork`] issuing one operation at a time, run gets
//! (half of the operations), appends, puts and deletes on `--keys` fresh keys under a prefix
//! no one else uses (`check-<random>:k<i>`), for `--duration` seconds, and record every call:
//! when it was invoked, when its answer arrived, and what a get returned. The history is then
//! checked key by key with `quorumkv-lincheck`; for every key that is not linearizable, the
//! report shows the smallest sub-history that proves it ([`quorumkv_lincheck::shrink`]).
//! Every written value is unique (`<client>.<n>;`), so a read names the writes it saw.
//!
//! A write that fails for any reason but `invalid argument` (above all, a timeout) has an
//! unknown outcome: it is recorded as such (the checker lets it take effect at any time after
//! its call, or never) and the client goes on with a new operation. It is never retried here:
//! the client numbers every call afresh, so a retry would be a second write, not the same one.
//! A get that fails observed nothing and is left out. At the end the keys are deleted.
//!
//! Exit status: 0 when the history is linearizable; 1 when it is not (or, rarely, when the
//! checker ran out of its step budget on a key: "undecided"); 2 for bad flags or when no
//! operation could be run (the cluster is unreachable).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quorumkv_lincheck::{
    check_each, shrink, CheckResult, History, KeyReport, KvOp, Operation, DEFAULT_STEPS_PER_KEY,
};
use quorumkv_shardkv_client::{KvClient, KvError};
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// The most concurrent clients: the checker's search grows exponentially with the operations
/// in flight at once on one key.
const MAX_CLIENTS: usize = 32;
/// The most keys (each checked on its own).
const MAX_KEYS: usize = 10_000;
/// Failing keys whose smallest history is searched for and printed (JSON lists them all).
const SHOWN_FAILURES: usize = 3;
/// Operations with unknown outcome listed one by one in the text report.
const SHOWN_UNKNOWN: usize = 10;

/// Flags of `check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Run the workload this long, then check the history: `60s`, `2m`, or bare seconds.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = quorumkv_bin::parse_duration)]
    duration: Duration,
    /// Concurrent clients, each issuing one operation at a time (at most 32: the check's cost
    /// grows quickly with the operations in flight on one key).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Fresh keys the clients share (under a random prefix; deleted at the end). Fewer keys
    /// mean more contention on each.
    #[arg(long, default_value_t = 10)]
    keys: usize,
    /// Also write the recorded history to FILE: JSON lines, one operation per line (client,
    /// key, op, value, output, call_ns, ret_ns; ret_ns null when the outcome is unknown).
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
}

/// A validated check plan.
#[derive(Debug, Clone)]
pub struct Plan {
    duration: Duration,
    clients: usize,
    keys: usize,
    save: Option<PathBuf>,
}

impl CheckArgs {
    /// Checks every flag and names the one that is wrong.
    pub fn validate(&self) -> Result<Plan, String> {
        if self.clients == 0 || self.clients > MAX_CLIENTS {
            return Err(format!(
                "--clients {} must be between 1 and {MAX_CLIENTS}",
                self.clients
            ));
        }
        if self.keys == 0 || self.keys > MAX_KEYS {
            return Err(format!(
                "--keys {} must be between 1 and {MAX_KEYS}",
                self.keys
            ));
        }
        Ok(Plan {
            duration: if self.duration.is_zero() {
                return Err("--duration must be longer than zero".into());
            } else {
                self.duration
            },
            clients: self.clients,
            keys: self.keys,
            save: self.save.clone(),
        })
    }
}

/// Why a check could not give a verdict (exit status 2).
#[derive(Debug)]
pub struct CannotRun(pub String);

/// What a finished check found.
pub struct Report {
    plan: Plan,
    prefix: String,
    /// The shards of the keys (in the configuration at the start).
    shards: BTreeSet<usize>,
    elapsed: Duration,
    history: Vec<Operation>,
    keys: Vec<KeyReport>,
    /// Smallest failing histories of the first failing keys.
    witnesses: Vec<Witness>,
    /// Gets that failed (they observed nothing and are not in the history).
    failed_gets: u64,
    /// Writes refused as invalid (definitely not applied; not in the history).
    refused: u64,
    /// Keys whose deletion at the end failed.
    cleanup_failures: usize,
    saved: Option<PathBuf>,
}

struct Witness {
    key: Vec<u8>,
    operations: usize,
    ops: Vec<Operation>,
    explanation: String,
}

/// The verdict on a whole history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Linearizable,
    Violation,
    Undecided,
}

impl Report {
    fn verdict(&self) -> Verdict {
        if self.violations() > 0 {
            Verdict::Violation
        } else if self.keys.iter().any(|k| k.result != CheckResult::Ok) {
            Verdict::Undecided
        } else {
            Verdict::Linearizable
        }
    }

    fn violations(&self) -> usize {
        self.keys.iter().filter(|k| k.result.is_illegal()).count()
    }

    /// Exit status: 0 when linearizable, else 1.
    pub fn exit_code(&self) -> u8 {
        match self.verdict() {
            Verdict::Linearizable => 0,
            Verdict::Violation | Verdict::Undecided => 1,
        }
    }

    fn unknown(&self) -> impl Iterator<Item = &Operation> {
        self.history.iter().filter(|o| o.ret.is_none())
    }

    /// The report: text for people, or one JSON object.
    pub fn render(&self, json: bool) -> String {
        if json {
            return format!("{}\n", self.to_json());
        }
        let mut out = String::new();
        let count = |what: fn(&KvOp) -> bool| self.history.iter().filter(|o| what(&o.op)).count();
        let _ = writeln!(
            out,
            "check: {} clients on {} fresh keys ({}k0..k{}, in shards {}) for {:.1} s",
            self.plan.clients,
            self.plan.keys,
            self.prefix,
            self.plan.keys - 1,
            list(&self.shards),
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "history: {} gets, {} puts, {} appends, {} deletes; {} with unknown outcome",
            thousands(count(|o| *o == KvOp::Get)),
            thousands(count(|o| matches!(o, KvOp::Put(_)))),
            thousands(count(|o| matches!(o, KvOp::Append(_)))),
            thousands(count(|o| *o == KvOp::Delete)),
            thousands(self.unknown().count()),
        );
        if self.failed_gets + self.refused > 0 {
            let _ = writeln!(
                out,
                "not in the history: {} failed gets (they observed nothing), {} writes refused \
                 as invalid",
                thousands(self.failed_gets as usize),
                thousands(self.refused as usize)
            );
        }
        let violations = self.violations();
        let verdict = match self.verdict() {
            Verdict::Linearizable => "linearizable",
            Verdict::Violation => "NOT linearizable",
            Verdict::Undecided => "undecided",
        };
        let _ = writeln!(
            out,
            "{verdict}: {}, {}, {}",
            counted(self.keys.len(), "key"),
            counted(self.history.len(), "operation"),
            counted(violations, "violation"),
        );
        for k in self.keys.iter() {
            if let CheckResult::Unknown { .. } = k.result {
                let _ = writeln!(
                    out,
                    "  key {}: the checker's step budget ran out ({} operations); fewer \
                     clients or more keys make each key's history easier to check",
                    show(&k.key),
                    thousands(k.operations)
                );
            }
        }
        let unknown: Vec<&Operation> = self.unknown().collect();
        if !unknown.is_empty() {
            let _ = writeln!(
                out,
                "operations with unknown outcome (no answer in time; each may have taken effect \
                 or not, and the check allowed both):"
            );
            for o in unknown.iter().take(SHOWN_UNKNOWN) {
                let _ = writeln!(out, "  {}", line(o));
            }
            if unknown.len() > SHOWN_UNKNOWN {
                let _ = writeln!(out, "  ... and {} more", unknown.len() - SHOWN_UNKNOWN);
            }
        }
        for w in &self.witnesses {
            let _ = writeln!(
                out,
                "\nviolation on key {} ({} operations); the smallest history that shows it \
                 ({} operations, times from the start of the check):",
                show(&w.key),
                thousands(w.operations),
                w.ops.len()
            );
            for o in &w.ops {
                let _ = writeln!(out, "  {}", line(o));
            }
            let _ = writeln!(
                out,
                "  (no order of these operations respects their times and explains every read; \
                 none of the operations left out could have given one of these reads its value; \
                 --json adds the checker's reasoning)"
            );
        }
        if violations > self.witnesses.len() {
            let _ = writeln!(
                out,
                "\n{} more keys are not linearizable (--json lists them)",
                violations - self.witnesses.len()
            );
        }
        if self.cleanup_failures > 0 {
            let _ = writeln!(
                out,
                "cleanup: {} of the keys could not be deleted (prefix {})",
                self.cleanup_failures, self.prefix
            );
        }
        if let Some(path) = &self.saved {
            let _ = writeln!(out, "history saved to {}", path.display());
        }
        out
    }

    fn to_json(&self) -> serde_json::Value {
        let verdict = match self.verdict() {
            Verdict::Linearizable => "linearizable",
            Verdict::Violation => "violation",
            Verdict::Undecided => "undecided",
        };
        let failing: Vec<serde_json::Value> = self
            .keys
            .iter()
            .filter(|k| k.result != CheckResult::Ok)
            .map(|k| {
                let witness = self.witnesses.iter().find(|w| w.key == k.key);
                serde_json::json!({
                    "key": show_raw(&k.key),
                    "operations": k.operations,
                    "result": if k.result.is_illegal() { "violation" } else { "undecided" },
                    "witness": witness.map(|w| w.ops.iter().map(op_json).collect::<Vec<_>>()),
                    "explanation": witness.map(|w| w.explanation.clone()),
                })
            })
            .collect();
        serde_json::json!({
            "verdict": verdict,
            "keys": self.keys.len(),
            "operations": self.history.len(),
            "violations": self.violations(),
            "clients": self.plan.clients,
            "duration_s": self.elapsed.as_secs_f64(),
            "prefix": self.prefix,
            "shards": self.shards,
            "unknown_outcome": self.unknown().map(op_json).collect::<Vec<_>>(),
            "failed_gets": self.failed_gets,
            "refused_writes": self.refused,
            "failing_keys": failing,
            "cleanup_failures": self.cleanup_failures,
            "saved": self.saved.as_ref().map(|p| p.display().to_string()),
        })
    }
}

/// `9812` → `9,812`.
pub(crate) fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `3, 17, 40`.
fn list(shards: &BTreeSet<usize>) -> String {
    let shown: Vec<String> = shards.iter().map(ToString::to_string).collect();
    shown.join(", ")
}

/// `1 key`, `9,812 operations`.
fn counted(n: usize, what: &str) -> String {
    let s = if n == 1 { "" } else { "s" };
    format!("{} {what}{s}", thousands(n))
}

/// Keys and values are ASCII here (the check writes them); anything else is shown lossily.
fn show_raw(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(b: &[u8]) -> String {
    format!("{:?}", show_raw(b))
}

fn secs(ns: u64) -> String {
    format!("{:.6} s", ns as f64 / 1e9)
}

/// One operation on one line: `[1.201000 s, 1.203114 s] client 2: append "check-…:k3" "2.41;"`.
fn line(o: &Operation) -> String {
    let span = match o.ret {
        Some(ret) => format!("[{}, {}]", secs(o.call), secs(ret)),
        None => format!("[{}, no answer]", secs(o.call)),
    };
    let what = match &o.op {
        KvOp::Get if o.ret.is_some() => match &o.output {
            Some(v) => format!("get {} -> {}", show(&o.key), show(v)),
            None => format!("get {} -> not found", show(&o.key)),
        },
        KvOp::Get => format!("get {}", show(&o.key)),
        KvOp::Put(v) => format!("put {} {}", show(&o.key), show(v)),
        KvOp::Append(v) => format!("append {} {}", show(&o.key), show(v)),
        KvOp::Delete => format!("delete {}", show(&o.key)),
    };
    format!("{span} client {}: {what}", o.client)
}

fn op_json(o: &Operation) -> serde_json::Value {
    let (name, value) = match &o.op {
        KvOp::Get => ("get", None),
        KvOp::Put(v) => ("put", Some(show_raw(v))),
        KvOp::Append(v) => ("append", Some(show_raw(v))),
        KvOp::Delete => ("delete", None),
    };
    let output = (o.op == KvOp::Get && o.ret.is_some()).then(|| o.output.as_deref().map(show_raw));
    serde_json::json!({
        "client": o.client,
        "key": show_raw(&o.key),
        "op": name,
        "value": value,
        // A completed get: the value, or null for "not found"; absent otherwise.
        "output": output,
        "call_ns": o.call,
        "ret_ns": o.ret,
    })
}

/// What one client did besides the history.
#[derive(Default)]
struct Tally {
    failed_gets: AtomicU64,
    refused: AtomicU64,
    /// Operations finished (for the progress line).
    done: AtomicU64,
}

/// One client's loop: an operation at a time on a random key until `end`.
async fn client_loop(
    id: u64,
    mut client: KvClient,
    keys: Arc<Vec<Vec<u8>>>,
    history: History,
    tally: Arc<Tally>,
    timeout: Duration,
    end: Instant,
) {
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut n = 0u64;
    while Instant::now() < end {
        let key = keys[rng.gen_range(0..keys.len())].clone();
        n += 1;
        let token = format!("{id}.{n};").into_bytes();
        let op = match rng.gen_range(0..20) {
            0..=9 => KvOp::Get,
            10..=12 => KvOp::Put(token),
            13..=17 => KvOp::Append(token),
            _ => KvOp::Delete,
        };
        let call = history.now();
        // The library bounds its retries by the same timeout; this bounds the call even if a
        // server stops answering mid-request.
        let result = tokio::time::timeout(timeout, async {
            match &op {
                KvOp::Get => client.get(&key).await.map(|v| v.map(|v| v.to_vec())),
                KvOp::Put(v) => client.put(&key, v).await.map(|()| None),
                KvOp::Append(v) => client.append(&key, v).await.map(|()| None),
                KvOp::Delete => client.delete(&key).await.map(|()| None),
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(KvError::Timeout {
                after: timeout,
                last_error: Some("the call itself did not return".into()),
            })
        });
        let ret = history.now();
        tally.done.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(output) => history.record(Operation::completed(id, key, op, output, call, ret)),
            // Refused before anything was applied.
            Err(KvError::InvalidArgument(_)) => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) if op == KvOp::Get => {
                tally.failed_gets.fetch_add(1, Ordering::Relaxed);
            }
            // Timed out (or failed in a way that does not say whether it was applied): it may
            // take effect at any time after `call`, or never.
            Err(_) => history.record(Operation::timed_out(id, key, op, call)),
        }
    }
}

/// Prints the progress on stderr every five seconds until `stop` resolves.
async fn progress(tally: Arc<Tally>, start: Instant, stop: tokio::sync::oneshot::Receiver<()>) {
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(5), Duration::from_secs(5));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        eprintln!(
            "check: {:.0} s, {} operations",
            start.elapsed().as_secs_f64(),
            thousands(tally.done.load(Ordering::Relaxed) as usize)
        );
    }
}

/// Runs the workload with forks of `client` (each operation bounded by `timeout`), deletes
/// the keys, checks the history.
pub async fn run(plan: Plan, client: KvClient, timeout: Duration) -> Result<Report, CannotRun> {
    let config = match tokio::time::timeout(timeout, client.refresh_config()).await {
        Ok(Ok(config)) if config.groups.is_empty() => {
            return Err(CannotRun(format!(
                "configuration {} has no replica group (join one first)",
                config.num
            )))
        }
        Ok(Ok(config)) => config,
        Ok(Err(e)) => return Err(CannotRun(format!("cannot reach the controller: {e}"))),
        Err(_) => {
            return Err(CannotRun(format!(
                "cannot reach the controller within {timeout:?}"
            )))
        }
    };
    let prefix = format!("check-{:08x}:", rand::random::<u32>());
    let keys: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..plan.keys)
            .map(|i| format!("{prefix}k{i}").into_bytes())
            .collect(),
    );
    let shards: BTreeSet<usize> = keys
        .iter()
        .map(|k| quorumkv_common::shard_of(k, config.shards.len()))
        .collect();
    // Said at once, so that whoever wants to disturb these shards (move them) knows which.
    eprintln!(
        "check: keys {prefix}k0..k{} in shards {}, for {:.1} s",
        plan.keys - 1,
        list(&shards),
        plan.duration.as_secs_f64()
    );
    let history = History::new();
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let end = start + plan.duration;
    let (stop_progress, progress_stopped) = tokio::sync::oneshot::channel();
    let progress = tokio::spawn(progress(tally.clone(), start, progress_stopped));
    let tasks: Vec<_> = (0..plan.clients as u64)
        .map(|id| {
            tokio::spawn(client_loop(
                id,
                client.fork(),
                keys.clone(),
                history.clone(),
                tally.clone(),
                timeout,
                end,
            ))
        })
        .collect();
    for t in tasks {
        t.await
            .map_err(|e| CannotRun(format!("client task: {e}")))?;
    }
    let elapsed = start.elapsed();
    let _ = stop_progress.send(());
    let _ = progress.await;

    let mut ops = history.operations();
    ops.sort_by_key(|o| o.call);
    if !ops.iter().any(|o| o.ret.is_some()) {
        return Err(CannotRun(format!(
            "no operation completed in {:.1} s (is every replica group serving?)",
            elapsed.as_secs_f64()
        )));
    }
    // The keys go at once, so that cleaning up takes one timeout at worst.
    let deletes: Vec<_> = keys
        .iter()
        .map(|key| {
            let (mut c, key) = (client.fork(), key.clone());
            tokio::spawn(async move {
                matches!(
                    tokio::time::timeout(timeout, c.delete(&key)).await,
                    Ok(Ok(()))
                )
            })
        })
        .collect();
    let mut cleanup_failures = 0;
    for d in deletes {
        if !matches!(d.await, Ok(true)) {
            cleanup_failures += 1;
        }
    }
    let saved = match &plan.save {
        Some(path) => {
            save(path, &ops).map_err(|e| CannotRun(format!("--save {}: {e}", path.display())))?;
            Some(path.clone())
        }
        None => None,
    };
    let checked = ops.clone();
    let (keys_checked, witnesses) = tokio::task::spawn_blocking(move || judge(&checked))
        .await
        .map_err(|e| CannotRun(format!("checker: {e}")))?;
    Ok(Report {
        plan,
        prefix,
        shards,
        elapsed,
        history: ops,
        keys: keys_checked,
        witnesses,
        failed_gets: tally.failed_gets.load(Ordering::Relaxed),
        refused: tally.refused.load(Ordering::Relaxed),
        cleanup_failures,
        saved,
    })
}

/// Checks every key, and shrinks the histories of the first failing keys.
fn judge(history: &[Operation]) -> (Vec<KeyReport>, Vec<Witness>) {
    let keys = check_each(history, DEFAULT_STEPS_PER_KEY);
    let witnesses = keys
        .iter()
        .filter(|k| k.result.is_illegal())
        .take(SHOWN_FAILURES)
        .filter_map(|k| {
            let of_key: Vec<Operation> =
                history.iter().filter(|o| o.key == k.key).cloned().collect();
            let ops = shrink(&of_key, DEFAULT_STEPS_PER_KEY)?;
            let explanation = match quorumkv_lincheck::check(&ops, DEFAULT_STEPS_PER_KEY) {
                CheckResult::Illegal { explanation, .. } => explanation,
                other => other.to_string(),
            };
            Some(Witness {
                key: k.key.clone(),
                operations: k.operations,
                ops,
                explanation,
            })
        })
        .collect();
    (keys, witnesses)
}

/// Writes the history as JSON lines.
fn save(path: &std::path::Path, ops: &[Operation]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for o in ops {
        writeln!(f, "{}", op_json(o))?;
    }
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: CheckArgs,
    }

    fn plan(argv: &[&str]) -> Result<Plan, String> {
        Wrap::try_parse_from(std::iter::once("check").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?
            .args
            .validate()
    }

    #[test]
    fn validates_flags() {
        let p = plan(&["--duration", "60", "--clients", "8", "--keys", "10"]).unwrap();
        assert_eq!(
            (p.duration, p.clients, p.keys),
            (Duration::from_secs(60), 8, 10)
        );
        for bad in [
            &["--clients", "0"][..],
            &["--clients", "33"],
            &["--keys", "0"],
            &["--duration", "0"],
            &["--duration", "-3"],
        ] {
            assert!(plan(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formats_counts_with_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(9812), "9,812");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    fn report(history: Vec<Operation>) -> Report {
        let (keys, witnesses) = judge(&history);
        Report {
            plan: plan(&["--clients", "2", "--keys", "1"]).unwrap(),
            prefix: "check-0:".into(),
            shards: [5].into_iter().collect(),
            elapsed: Duration::from_secs(1),
            history,
            keys,
            witnesses,
            failed_gets: 0,
            refused: 0,
            cleanup_failures: 0,
            saved: None,
        }
    }

    #[test]
    fn reports_a_stale_read_with_its_smallest_history() {
        let k = "check-0:k0";
        let mut history = vec![
            Operation::completed(0, k, KvOp::Put(b"0.1;".to_vec()), None, 0, 10),
            Operation::completed(0, k, KvOp::Put(b"0.2;".to_vec()), None, 20, 30),
            Operation::timed_out(1, k, KvOp::Append(b"1.1;".to_vec()), 35),
        ];
        for n in 0..50 {
            let t = 40 + n * 10;
            history.push(Operation::completed(
                1,
                k,
                KvOp::Get,
                Some(b"0.2;".to_vec()),
                t,
                t + 5,
            ));
        }
        // Stale: the put of "0.2;" was acknowledged long before.
        history.push(Operation::completed(
            0,
            k,
            KvOp::Get,
            Some(b"0.1;".to_vec()),
            600,
            610,
        ));
        let r = report(history);
        assert_eq!(r.exit_code(), 1);
        let text = r.render(false);
        assert!(
            text.contains("NOT linearizable: 1 key, 54 operations, 1 violation\n"),
            "{text}"
        );
        assert!(
            text.contains("smallest history that shows it (3 operations"),
            "{text}"
        );
        assert!(
            text.contains("client 0: get \"check-0:k0\" -> \"0.1;\""),
            "{text}"
        );
        assert!(
            text.contains("  [0.000000 s, no answer] client 1: append \"check-0:k0\" \"1.1;\"\n"),
            "{text}"
        );
        let json = r.to_json();
        assert_eq!(json["verdict"], "violation");
        assert_eq!(
            json["failing_keys"][0]["witness"].as_array().unwrap().len(),
            3
        );
        assert_eq!(json["unknown_outcome"][0]["op"], "append");
    }

    #[test]
    fn a_linearizable_history_exits_0() {
        let k = "check-0:k0";
        let r = report(vec![
            Operation::completed(0, k, KvOp::Append(b"0.1;".to_vec()), None, 0, 10),
            Operation::completed(1, k, KvOp::Get, Some(b"0.1;".to_vec()), 5, 15),
            Operation::completed(1, k, KvOp::Delete, None, 20, 25),
            Operation::completed(0, k, KvOp::Get, None, 30, 35),
        ]);
        assert_eq!(r.exit_code(), 0);
        let text = r.render(false);
        assert!(
            text.contains("linearizable: 1 key, 4 operations, 0 violations\n"),
            "{text}"
        );
    }
}
