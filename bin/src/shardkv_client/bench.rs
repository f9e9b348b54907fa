//! `shardkv-client bench`: closed-loop load from concurrent clients, reported honestly.
//!
//! Each of `--clients` tasks owns a [`KvClient::fork`] of one client (own id, shared
//! connections) and issues one operation at a time: a `get` with probability `--read-ratio`,
//! else a `put` of a `--value-size` value, on a key drawn uniformly from `--keys` keys. Latency
//! is measured per operation, from just before the call to its acknowledgement, and recorded in
//! an HDR histogram (microseconds). A failed operation is counted by kind and never as a
//! success, and never enters the latency histograms.
//!
//! Everything is bounded: every operation by the client timeout, and a `--duration` run by its
//! end time, whatever the servers do. Operations still in flight when the run ends are
//! abandoned and reported as such (neither success nor failure). With `--ops`, the run ends
//! when that many operations have finished (each bounded by the timeout).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use quorumkv_bin::parse_duration;
use quorumkv_shardkv_client::{KvClient, KvError, MAX_VALUE_BYTES};

use crate::etcd::{Etcd, EtcdKv};
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// The largest `--clients`: every client is a task with its own session on the servers.
const MAX_CLIENTS: usize = 10_000;

/// Flags of `bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Concurrent clients, each issuing one operation at a time.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Measure for this long (after the warm-up): `10s`, `2m`, `500ms`, or bare seconds.
    /// Default 10 s unless --ops is given.
    #[arg(long, value_name = "DURATION", conflicts_with = "ops", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Measure this many operations (after the warm-up) instead of a fixed duration.
    #[arg(long, value_name = "N")]
    ops: Option<u64>,
    /// Size of the key space: keys `bench:00000000` to `bench:<N-1>`, drawn uniformly.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    keys: u64,
    /// Bytes per value written by puts.
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    value_size: usize,
    /// Fraction of operations that are gets (linearizable reads), from 0 to 1; the rest are
    /// puts.
    #[arg(long, default_value_t = 0.5, value_name = "0..1")]
    read_ratio: f64,
    /// Run the load this long before measuring (not reported): `5s`, `1m`, or bare seconds.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Load data instead of measuring a mix: put every key of `--keys` exactly once, in order
    /// (shared among the clients), then stop. Loads keys × value-size bytes; the report is
    /// the load's throughput and latency. Not with --duration, --ops, --warmup or
    /// --read-ratio.
    #[arg(long, conflicts_with_all = ["duration", "ops", "read_ratio"])]
    fill: bool,
    /// Put the same load on an etcd cluster instead, through etcd's KV API (plaintext gRPC;
    /// comma-separated endpoints such as `http://127.0.0.1:2379`): puts are `Put`s and gets
    /// linearizable `Range`s. For side-by-side measurements (scripts/bench-vs-etcd.sh).
    #[arg(long, value_name = "ENDPOINTS")]
    etcd: Option<String>,
}

/// What a bench drives.
pub enum Target {
    QuorumKv(KvClient),
    Etcd(Arc<Etcd>),
}

/// One closed-loop client of a [`Target`].
enum Client {
    QuorumKv(KvClient),
    Etcd(EtcdKv),
}

impl Target {
    fn client(&self) -> Client {
        match self {
            Target::QuorumKv(c) => Client::QuorumKv(c.fork()),
            Target::Etcd(e) => Client::Etcd(e.client()),
        }
    }
}

impl Client {
    /// A read; whether the key exists.
    async fn get(&mut self, k: &[u8]) -> Result<bool, KvError> {
        match self {
            Client::QuorumKv(c) => c.get(k).await.map(|v| v.is_some()),
            Client::Etcd(c) => c.get(k).await,
        }
    }

    async fn put(&mut self, k: &[u8], v: &[u8]) -> Result<(), KvError> {
        match self {
            Client::QuorumKv(c) => c.put(k, v).await,
            Client::Etcd(c) => c.put(k, v).await,
        }
    }
}

/// When the measured part of a run ends.
#[derive(Debug, Clone, Copy)]
enum Stop {
    After(Duration),
    Ops(u64),
}

/// A validated bench plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `--etcd` endpoints, when etcd is the target.
    pub etcd: Option<String>,
    clients: usize,
    stop: Stop,
    keys: u64,
    value_size: usize,
    read_ratio: f64,
    warmup: Duration,
    /// `--fill`: every key once, in order.
    fill: bool,
}

impl BenchArgs {
    /// Checks every flag and names the one that is wrong.
    pub fn validate(&self) -> Result<Plan, String> {
        if self.clients == 0 || self.clients > MAX_CLIENTS {
            return Err(format!(
                "--clients {} must be between 1 and {MAX_CLIENTS}",
                self.clients
            ));
        }
        if self.fill && !self.warmup.is_zero() {
            return Err("--fill loads every key once: it takes no --warmup".into());
        }
        let stop = match (self.duration, self.ops) {
            _ if self.fill => Stop::Ops(self.keys),
            (_, Some(0)) => return Err("--ops must be at least 1".into()),
            (_, Some(n)) => Stop::Ops(n),
            (Some(d), None) if d.is_zero() => return Err("--duration must be positive".into()),
            (Some(d), None) => Stop::After(d),
            (None, None) => Stop::After(Duration::from_secs(10)),
        };
        if self.keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        if self.value_size > MAX_VALUE_BYTES {
            return Err(format!(
                "--value-size {} exceeds the value limit of {MAX_VALUE_BYTES} bytes",
                self.value_size
            ));
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err(format!(
                "--read-ratio {} must be between 0 and 1",
                self.read_ratio
            ));
        }
        Ok(Plan {
            etcd: self.etcd.clone(),
            clients: self.clients,
            stop,
            keys: self.keys,
            value_size: self.value_size,
            read_ratio: if self.fill { 0.0 } else { self.read_ratio },
            warmup: self.warmup,
            fill: self.fill,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
}

/// Failures by kind (the variants of [`KvError`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct Errors {
    timeout: u64,
    invalid_argument: u64,
    permission_denied: u64,
    tls: u64,
    internal: u64,
}

impl Errors {
    fn count(&mut self, e: &KvError) {
        match e {
            KvError::Timeout { .. } => self.timeout += 1,
            KvError::InvalidArgument(_) => self.invalid_argument += 1,
            KvError::PermissionDenied(_) => self.permission_denied += 1,
            KvError::Tls(_) => self.tls += 1,
            KvError::Internal(_) => self.internal += 1,
        }
    }

    fn total(&self) -> u64 {
        self.timeout + self.invalid_argument + self.permission_denied + self.tls + self.internal
    }

    fn add(&mut self, o: &Errors) {
        self.timeout += o.timeout;
        self.invalid_argument += o.invalid_argument;
        self.permission_denied += o.permission_denied;
        self.tls += o.tls;
        self.internal += o.internal;
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "total": self.total(),
            "timeout": self.timeout,
            "invalid_argument": self.invalid_argument,
            "permission_denied": self.permission_denied,
            "tls": self.tls,
            "internal": self.internal,
        })
    }
}

/// What one operation type did during the measured window.
pub struct OpStats {
    /// Latencies of successful operations, in microseconds.
    latency: Histogram<u64>,
    errors: Errors,
    /// Gets only: successful reads of a key that did not exist.
    missing: u64,
    /// One error message of each kind, to tell the user what went wrong.
    samples: Vec<String>,
}

impl OpStats {
    fn new(max_us: u64) -> Self {
        OpStats {
            latency: Histogram::new_with_bounds(1, max_us.max(2), 3)
                .expect("valid histogram bounds"),
            errors: Errors::default(),
            missing: 0,
            samples: Vec::new(),
        }
    }

    fn ok(&self) -> u64 {
        self.latency.len()
    }

    fn merge(&mut self, o: &OpStats) {
        self.latency
            .add(&o.latency)
            .expect("histograms of equal bounds");
        self.errors.add(&o.errors);
        self.missing += o.missing;
        for s in &o.samples {
            if self.samples.len() < 3 && !self.samples.contains(s) {
                self.samples.push(s.clone());
            }
        }
    }

    fn fail(&mut self, e: &KvError) {
        self.errors.count(e);
        if self.samples.len() < 3 {
            let s = e.to_string();
            if !self.samples.contains(&s) {
                self.samples.push(s);
            }
        }
    }
}

/// Counters the progress line reads while the run goes on.
#[derive(Default)]
struct Live {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Operations started in the measured window (the `--ops` budget).
    started: AtomicU64,
}

/// The final report.
pub struct Report {
    plan: Plan,
    /// Length of the measured window.
    elapsed: Duration,
    put: OpStats,
    get: OpStats,
    /// Operations abandoned in flight when the window closed.
    unfinished: u64,
}

impl Report {
    pub fn succeeded(&self) -> u64 {
        self.put.ok() + self.get.ok()
    }

    fn all(&self) -> OpStats {
        let mut all = OpStats::new(self.put.latency.high());
        all.merge(&self.put);
        all.merge(&self.get);
        all
    }

    fn rate(&self, n: u64) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            n as f64 / secs
        } else {
            0.0
        }
    }

    /// The report: text for people, or one JSON object.
    pub fn render(&self, json: bool) -> String {
        use std::fmt::Write;
        let all = self.all();
        let percentiles = [50.0, 90.0, 99.0, 99.9];
        let ms = |us: u64| us as f64 / 1000.0;
        if json {
            let lat = |s: &OpStats| {
                let h = &s.latency;
                if h.is_empty() {
                    return serde_json::json!({ "count": 0 });
                }
                serde_json::json!({
                    "count": h.len(),
                    "p50": ms(h.value_at_quantile(0.50)),
                    "p90": ms(h.value_at_quantile(0.90)),
                    "p99": ms(h.value_at_quantile(0.99)),
                    "p99_9": ms(h.value_at_quantile(0.999)),
                    "max": ms(h.max()),
                    "mean": h.mean() / 1000.0,
                })
            };
            let v = serde_json::json!({
                "target": if self.plan.etcd.is_some() { "etcd" } else { "quorumkv" },
                "clients": self.plan.clients,
                "keys": self.plan.keys,
                "value_size": self.plan.value_size,
                "read_ratio": self.plan.read_ratio,
                "warmup_s": self.plan.warmup.as_secs_f64(),
                "duration_s": self.elapsed.as_secs_f64(),
                "ops": all.ok() + all.errors.total(),
                "succeeded": all.ok(),
                "failed": all.errors.total(),
                "unfinished_at_end": self.unfinished,
                "throughput": {
                    "ops_per_s": self.rate(all.ok()),
                    "puts_per_s": self.rate(self.put.ok()),
                    "gets_per_s": self.rate(self.get.ok()),
                },
                "gets_missing": self.get.missing,
                "latency_ms": { "all": lat(&all), "put": lat(&self.put), "get": lat(&self.get) },
                "errors": {
                    "all": all.errors.json(),
                    "put": self.put.errors.json(),
                    "get": self.get.errors.json(),
                },
                "error_samples": all.samples,
            });
            return format!("{v}\n");
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "bench{}: {} clients, {} keys, {}-byte values, read ratio {}, warm-up {:.1} s",
            if self.plan.fill {
                " (fill: every key once)"
            } else {
                ""
            },
            self.plan.clients,
            self.plan.keys,
            self.plan.value_size,
            self.plan.read_ratio,
            self.plan.warmup.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "ops:        {} ({} succeeded, {} failed), {} unfinished at the end, in {:.3} s",
            all.ok() + all.errors.total(),
            all.ok(),
            all.errors.total(),
            self.unfinished,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "throughput: {:.0} ops/s (puts {:.0}/s, gets {:.0}/s; {} gets found no key)",
            self.rate(all.ok()),
            self.rate(self.put.ok()),
            self.rate(self.get.ok()),
            self.get.missing
        );
        let _ = writeln!(
            out,
            "errors:     {} timeout, {} invalid argument, {} permission denied, {} TLS, {} internal",
            all.errors.timeout,
            all.errors.invalid_argument,
            all.errors.permission_denied,
            all.errors.tls,
            all.errors.internal
        );
        for s in &all.samples {
            let _ = writeln!(out, "  e.g. {s}");
        }
        let _ = writeln!(
            out,
            "latency ms  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}",
            "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, s) in [("all", &all), ("put", &self.put), ("get", &self.get)] {
            let h = &s.latency;
            if h.is_empty() {
                let _ = writeln!(out, "  {name:<9} {:>9}", 0);
                continue;
            }
            let mut line = format!("  {name:<9} {:>9}", h.len());
            for p in percentiles {
                line.push_str(&format!("  {:>9.3}", ms(h.value_at_quantile(p / 100.0))));
            }
            line.push_str(&format!("  {:>9.3}", ms(h.max())));
            let _ = writeln!(out, "{line}");
        }
        out
    }
}

/// What one client task measured.
struct TaskResult {
    put: OpStats,
    get: OpStats,
    unfinished: u64,
}

fn key(i: u64) -> Vec<u8> {
    format!("bench:{i:08}").into_bytes()
}

/// One client's closed loop. `measure_from` is when the measured window opens; `end` when a
/// `--duration` run closes (`None` with `--ops`).
async fn client_loop(
    plan: Plan,
    mut client: Client,
    timeout: Duration,
    measure_from: Instant,
    end: Option<Instant>,
    live: Arc<Live>,
) -> TaskResult {
    let max_us = (timeout.as_micros() as u64).saturating_mul(2);
    let mut res = TaskResult {
        put: OpStats::new(max_us),
        get: OpStats::new(max_us),
        unfinished: 0,
    };
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut value = vec![0u8; plan.value_size];
    rng.fill(&mut value[..]);
    loop {
        let started = Instant::now();
        let measured = started >= measure_from;
        if end.is_some_and(|e| started >= e) {
            break;
        }
        let mut index = None;
        if let (Stop::Ops(n), true) = (plan.stop, measured) {
            let i = live.started.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            index = Some(i);
        }
        let op = if rng.gen_bool(plan.read_ratio) {
            Op::Get
        } else {
            Op::Put
        };
        let k = match index {
            Some(i) if plan.fill => key(i),
            _ => key(rng.gen_range(0..plan.keys)),
        };
        // The library bounds its retries by the same timeout; this bounds the call even if a
        // server stops answering mid-request.
        let call = async {
            let r = match op {
                Op::Get => client.get(&k).await,
                Op::Put => client.put(&k, &value).await.map(|()| true),
            };
            let at = Instant::now();
            (r, at)
        };
        let bounded = tokio::time::timeout(timeout, call);
        let (result, done) = match end {
            Some(end) => tokio::select! {
                r = bounded => r,
                _ = tokio::time::sleep_until(end) => {
                    if measured { res.unfinished += 1; }
                    break;
                }
            },
            None => bounded.await,
        }
        .unwrap_or_else(|_| {
            let err = KvError::Timeout {
                after: timeout,
                last_error: Some("the call itself did not return".into()),
            };
            (Err(err), Instant::now())
        });
        if !measured || end.is_some_and(|e| done > e) {
            continue;
        }
        let stats = match op {
            Op::Get => &mut res.get,
            Op::Put => &mut res.put,
        };
        match result {
            Ok(found) => {
                let us = (done - started).as_micros().max(1) as u64;
                stats.latency.saturating_record(us);
                if op == Op::Get && !found {
                    stats.missing += 1;
                }
                live.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.fail(&e);
                live.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    res
}

/// Prints `elapsed, ops, ops/s, errors` on stderr once a second until `stop` resolves.
async fn progress(
    live: Arc<Live>,
    measure_from: Instant,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval_at(
        Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut last = 0;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let ok = live.ok.load(Ordering::Relaxed);
        let failed = live.failed.load(Ordering::Relaxed);
        if now >= measure_from && now < measure_from + Duration::from_millis(200) {
            // The warm-up just ended: nothing measured yet.
            continue;
        }
        let line = if now < measure_from {
            format!(
                "warming up, {:.0} s to go",
                (measure_from - now).as_secs_f64()
            )
        } else {
            let secs = (now - measure_from).as_secs_f64().max(1e-3);
            format!(
                "{secs:6.1} s  {ok} ops  {:.0} ops/s (last second {})  errors {failed}",
                ok as f64 / secs,
                ok - last
            )
        };
        last = ok;
        let mut err = std::io::stderr().lock();
        let _ = if tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
    if tty {
        eprintln!();
    }
}

/// Runs the plan with clients of `target`, each operation bounded by `timeout`.
pub async fn run(plan: Plan, target: Target, timeout: Duration) -> Report {
    // Fetch the configuration once up front rather than from every client at once. A failure
    // here is not fatal: the clients retry, and their failures are counted.
    if let Target::QuorumKv(client) = &target {
        let _ = tokio::time::timeout(timeout, client.refresh_config()).await;
    }
    let live = Arc::new(Live::default());
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = match plan.stop {
        Stop::After(d) => Some(measure_from + d),
        Stop::Ops(_) => None,
    };
    let (stop_progress, progress_stopped) = tokio::sync::oneshot::channel();
    let progress = tokio::spawn(progress(live.clone(), measure_from, progress_stopped));
    let tasks: Vec<_> = (0..plan.clients)
        .map(|_| {
            tokio::spawn(client_loop(
                plan.clone(),
                target.client(),
                timeout,
                measure_from,
                end,
                live.clone(),
            ))
        })
        .collect();
    let max_us = (timeout.as_micros() as u64).saturating_mul(2);
    let mut report = Report {
        plan: plan.clone(),
        elapsed: Duration::ZERO,
        put: OpStats::new(max_us),
        get: OpStats::new(max_us),
        unfinished: 0,
    };
    for t in tasks {
        match t.await {
            Ok(r) => {
                report.put.merge(&r.put);
                report.get.merge(&r.get);
                report.unfinished += r.unfinished;
            }
            Err(e) => report
                .put
                .fail(&KvError::Internal(format!("client task: {e}"))),
        }
    }
    let finished = Instant::now();
    report.elapsed = match end {
        Some(end) => end.min(finished).saturating_duration_since(measure_from),
        None => finished.saturating_duration_since(measure_from),
    };
    let _ = stop_progress.send(());
    let _ = progress.await;
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn plan(argv: &[&str]) -> Result<Plan, String> {
        Wrap::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?
            .args
            .validate()
    }

    #[test]
    fn validates_flags() {
        let p = plan(&[]).unwrap();
        assert_eq!(p.clients, 64);
        assert!(matches!(p.stop, Stop::After(d) if d == Duration::from_secs(10)));
        assert!(matches!(plan(&["--ops", "5"]).unwrap().stop, Stop::Ops(5)));
        let p = plan(&["--duration", "5s", "--warmup", "500ms"]).unwrap();
        assert!(matches!(p.stop, Stop::After(d) if d == Duration::from_secs(5)));
        assert_eq!(p.warmup, Duration::from_millis(500));
        assert!(
            matches!(plan(&["--duration", "2"]).unwrap().stop, Stop::After(d) if d == Duration::from_secs(2))
        );
        for bad in [
            &["--clients", "0"][..],
            &["--read-ratio", "1.5"],
            &["--duration", "0"],
            &["--ops", "0"],
            &["--keys", "0"],
            &["--value-size", "2000000"],
            &["--warmup", "-1"],
            &["--duration", "1", "--ops", "3"],
            &["--fill", "--ops", "3"],
            &["--fill", "--warmup", "1s"],
            &["--fill", "--read-ratio", "0.5"],
        ] {
            assert!(plan(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fill_puts_every_key_once() {
        let p = plan(&["--fill", "--keys", "1000"]).unwrap();
        assert!(p.fill);
        assert!(matches!(p.stop, Stop::Ops(1000)));
        assert_eq!(p.read_ratio, 0.0);
    }

    #[test]
    fn failures_are_counted_by_kind_and_kept_out_of_latency() {
        let mut s = OpStats::new(1_000_000);
        s.latency.saturating_record(250);
        s.fail(&KvError::Timeout {
            after: Duration::from_secs(1),
            last_error: None,
        });
        s.fail(&KvError::Internal("x".into()));
        s.fail(&KvError::Internal("x".into()));
        assert_eq!((s.ok(), s.errors.total(), s.errors.internal), (1, 3, 2));
        assert_eq!(s.samples.len(), 2);
    }
}
