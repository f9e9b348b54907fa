//! # QuorumKV linearizability checker
//!
//! A linearizability checker for key/value histories, in the manner of porcupine.
//!
//! Cluster tests (migrations, leader kills, partitions) and `shardkv-client check` (run by a
//! user against a real cluster) let several clients hammer the store concurrently and record
//! every request as an [`Operation`]: when it was invoked, when its response arrived, and what
//! a `Get` returned. [`check`] then decides whether some total order
//! of those operations exists that (a) respects real time — an operation that returned before
//! another was invoked comes first — and (b) explains every `Get` by a single copy of the map
//! (Herlihy & Wing's linearizability). A stale read, a lost acknowledged write or a write
//! applied twice all make such an order impossible.
//!
//! # How
//!
//! Keys are independent in this model, so the history is partitioned by key and each key is
//! checked alone (linearizability is compositional; porcupine's KV model does the same), which
//! keeps each search small. Per key the search is Wing & Gong's, with Lowe's just-in-time
//! linearization and memoization, as in porcupine's `checkSingle`: the invocation and response
//! events are sorted by time into a doubly linked list; a depth-first search repeatedly picks an
//! invoked-but-not-yet-linearized operation whose invocation precedes the earliest pending
//! response, applies it to the model if that is legal, and removes it from the list (undone in
//! place on backtrack, dancing-links style). Reaching a response whose operation has not been
//! linearized means the current prefix is a dead end. A cache of `(set of linearized
//! operations, model state)` pairs prunes prefixes already shown to be dead ends — the same
//! set of operations leading to the same value behaves the same from there on. Three dominance
//! rules prune further, each argued where it is applied: a read that is legal and may go next
//! is taken without branching; a prefix that has used more timed-out writes than a visited one
//! with the same completed operations and state is skipped; and a timed-out write is tried only
//! while some pending read could observe it.
//!
//! The search is exponential in the number of operations in flight at once on one key. In
//! practice a few hundred operations per key from up to about eight concurrent clients check
//! in milliseconds to seconds (debug build); spread heavier workloads over more keys.
//!
//! # Operations without a response
//!
//! A client that timed out cannot know whether its write happened. Such an operation has
//! [`Operation::ret`] `None`: it may take effect at any moment after its invocation, or never.
//! The checker treats its response as arriving at +infinity, so it never forces a choice, and
//! the search succeeds once every completed operation is placed: leaving a timed-out write out
//! is indistinguishable from placing it last, where nothing observes it. Each one takes effect
//! at most once, so a write applied twice is still caught. A `Get` without a response observed
//! nothing and is dropped. A request that failed *definitely* before taking effect (e.g.
//! rejected as `WrongGroup` before being proposed) should not be recorded at all.
//!
//! # Per key, and the smallest failing history
//!
//! [`check_each`] gives the verdict on every key (a tool reports how many keys failed, not
//! only the first). [`shrink`] turns one key's failing history into a smallest sub-history
//! that still fails, and that is a proof on its own: it only drops a write when no read it
//! keeps could have observed that write, so a linearization of the whole history would
//! restrict to one of the sub-history (see the `shrink` module).
//!
//! # What it leaves out
//!
//! Since the search can blow up, each key gets a step budget; exhausting it yields
//! [`CheckResult::Unknown`] rather than a guess. Times are plain nanosecond counts so the
//! checker itself is deterministic; [`History`] is only the thread-safe recorder that stamps
//! them from a monotonic clock. Multi-key operations and transactions are not modelled. The
//! crate does no I/O: saving or loading histories is the caller's business.

mod shrink;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

pub use shrink::shrink;

/// A budget that covers per-key histories of a few hundred operations from a handful of
/// concurrent clients (a few seconds per key at most in a debug build).
pub const DEFAULT_STEPS_PER_KEY: u64 = 20_000_000;

/// What an operation did to its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvOp {
    /// Read the key; the value seen is [`Operation::output`].
    Get,
    /// Set the key to the value.
    Put(Vec<u8>),
    /// Append the bytes to the key's value (to the empty value if the key is absent).
    Append(Vec<u8>),
    /// Remove the key.
    Delete,
}

/// One client request as seen by the client: what it asked, when, and what came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The client that issued it (only used in explanations).
    pub client: u64,
    /// The key it touched.
    pub key: Vec<u8>,
    /// What it did.
    pub op: KvOp,
    /// For a completed `Get`, the value returned (`None` = key absent). Ignored for writes.
    pub output: Option<Vec<u8>>,
    /// Invocation time in nanoseconds, taken before the request was sent.
    pub call: u64,
    /// Response time in nanoseconds, taken after the response arrived; `None` if no response
    /// was seen (timed out), meaning a write may have taken effect at any time after `call`,
    /// or never. Invariant: `call <= ret`.
    pub ret: Option<u64>,
}

impl Operation {
    /// An operation whose response arrived at `ret`; `output` is what a `Get` returned.
    pub fn completed(
        client: u64,
        key: impl Into<Vec<u8>>,
        op: KvOp,
        output: Option<Vec<u8>>,
        call: u64,
        ret: u64,
    ) -> Self {
        Operation {
            client,
            key: key.into(),
            op,
            output,
            call,
            ret: Some(ret),
        }
    }

    /// An operation whose outcome is unknown: no response was seen (e.g. the client timed out).
    pub fn timed_out(client: u64, key: impl Into<Vec<u8>>, op: KvOp, call: u64) -> Self {
        Operation {
            client,
            key: key.into(),
            op,
            output: None,
            call,
            ret: None,
        }
    }
}

/// Records operations from many tasks at once; clones share one history.
///
/// ```ignore
/// let call = history.now();
/// match client.put(&key, &value).await {
///     Ok(()) => {
///         let ret = history.now();
///         history.record(Operation::completed(id, key, KvOp::Put(value), None, call, ret));
///     }
///     // The write may or may not have happened.
///     Err(e) if e.is_ambiguous() => {
///         history.record(Operation::timed_out(id, key, KvOp::Put(value), call));
///     }
///     Err(_) => {} // definitely not applied: nothing to record
/// }
/// ```
#[derive(Clone)]
pub struct History {
    inner: Arc<HistoryInner>,
}

struct HistoryInner {
    /// Time zero of [`History::now`].
    epoch: Instant,
    ops: Mutex<Vec<Operation>>,
}

impl History {
    pub fn new() -> Self {
        History {
            inner: Arc::new(HistoryInner {
                epoch: Instant::now(),
                ops: Mutex::default(),
            }),
        }
    }

    /// Nanoseconds since this history was created, from a monotonic clock. Take it before
    /// sending a request (for [`Operation::call`]) and after its response (for `ret`).
    pub fn now(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn record(&self, op: Operation) {
        self.inner.ops.lock().push(op);
    }

    /// A copy of everything recorded so far, in recording order.
    pub fn operations(&self) -> Vec<Operation> {
        self.inner.ops.lock().clone()
    }

    pub fn len(&self) -> usize {
        self.inner.ops.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`check`] on what has been recorded so far.
    pub fn check(&self, steps_per_key: u64) -> CheckResult {
        check(&self.operations(), steps_per_key)
    }
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

/// The verdict on a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// Every key's operations are linearizable.
    Ok,
    /// No linearization exists for `key`; `explanation` shows the longest legal prefix found
    /// and the reads that could not come next.
    Illegal { key: Vec<u8>, explanation: String },
    /// The search for `key` ran out of steps before reaching a verdict (no key was found
    /// illegal). Try a larger budget or a less concurrent workload.
    Unknown { key: Vec<u8> },
}

impl CheckResult {
    pub fn is_ok(&self) -> bool {
        matches!(self, CheckResult::Ok)
    }

    pub fn is_illegal(&self) -> bool {
        matches!(self, CheckResult::Illegal { .. })
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckResult::Ok => write!(f, "linearizable"),
            CheckResult::Illegal { key, explanation } => {
                write!(
                    f,
                    "not linearizable on key {}: {explanation}",
                    show_bytes(key)
                )
            }
            CheckResult::Unknown { key } => {
                write!(
                    f,
                    "unknown: step budget exhausted on key {}",
                    show_bytes(key)
                )
            }
        }
    }
}

/// Checks that `history` is linearizable with respect to a map of keys to byte values (all
/// keys initially absent), searching at most `steps_per_key` steps per key.
///
/// Keys are checked in byte order; the first illegal key is reported, or else the first key
/// whose budget ran out.
///
/// # Panics
///
/// If a completed operation's `ret` precedes its `call` (a recording bug).
pub fn check(history: &[Operation], steps_per_key: u64) -> CheckResult {
    let mut unknown = None;
    for (key, ops) in by_key(history) {
        match check_key(&ops, steps_per_key) {
            KeyVerdict::Linearizable => {}
            KeyVerdict::Illegal(explanation) => {
                return CheckResult::Illegal {
                    key: key.to_vec(),
                    explanation,
                };
            }
            KeyVerdict::OutOfSteps => {
                unknown.get_or_insert_with(|| key.to_vec());
            }
        }
    }
    match unknown {
        Some(key) => CheckResult::Unknown { key },
        None => CheckResult::Ok,
    }
}

/// The verdict on one key of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReport {
    pub key: Vec<u8>,
    /// The operations checked: every operation on the key but the `Get`s without a response.
    pub operations: usize,
    /// [`CheckResult::Ok`], or this key's [`CheckResult::Illegal`] or [`CheckResult::Unknown`].
    pub result: CheckResult,
}

/// Like [`check`], but goes on after a failing key: the verdict on every key, in byte order.
///
/// # Panics
///
/// If a completed operation's `ret` precedes its `call` (a recording bug).
pub fn check_each(history: &[Operation], steps_per_key: u64) -> Vec<KeyReport> {
    by_key(history)
        .into_iter()
        .map(|(key, ops)| {
            let result = match check_key(&ops, steps_per_key) {
                KeyVerdict::Linearizable => CheckResult::Ok,
                KeyVerdict::Illegal(explanation) => CheckResult::Illegal {
                    key: key.to_vec(),
                    explanation,
                },
                KeyVerdict::OutOfSteps => CheckResult::Unknown { key: key.to_vec() },
            };
            KeyReport {
                key: key.to_vec(),
                operations: ops.len(),
                result,
            }
        })
        .collect()
}

/// The operations of `history` by key, without the `Get`s that got no response (they observed
/// nothing). Panics on a completed operation that returned before it was called.
fn by_key(history: &[Operation]) -> BTreeMap<&[u8], Vec<&Operation>> {
    let mut by_key: BTreeMap<&[u8], Vec<&Operation>> = BTreeMap::new();
    for op in history {
        if let Some(ret) = op.ret {
            assert!(
                op.call <= ret,
                "operation returned before it was called: {op}"
            );
        } else if op.op == KvOp::Get {
            continue; // observed nothing
        }
        by_key.entry(&op.key).or_default().push(op);
    }
    by_key
}

enum KeyVerdict {
    Linearizable,
    Illegal(String),
    OutOfSteps,
}

/// The sequential specification of one key. States are interned as `u32` ids (0 = absent) so
/// that the search and its cache handle small integers rather than values.
struct Model<'a> {
    ops: &'a [&'a Operation],
    values: Vec<Option<Vec<u8>>>,
    ids: HashMap<Option<Vec<u8>>, u32>,
    /// Memoized `(state, op) -> state` for `Put` and `Append`, which allocate.
    transitions: HashMap<(u32, usize), u32>,
}

impl<'a> Model<'a> {
    fn new(ops: &'a [&'a Operation]) -> Self {
        let mut model = Model {
            ops,
            values: Vec::new(),
            ids: HashMap::new(),
            transitions: HashMap::new(),
        };
        model.intern(None);
        model
    }

    fn intern(&mut self, value: Option<Vec<u8>>) -> u32 {
        if let Some(&id) = self.ids.get(&value) {
            return id;
        }
        let id = u32::try_from(self.values.len()).expect("fewer than 2^32 distinct values");
        self.values.push(value.clone());
        self.ids.insert(value, id);
        id
    }

    fn value(&self, state: u32) -> &Option<Vec<u8>> {
        &self.values[state as usize]
    }

    /// The state after operation `i` in `state`, or `None` if `i` is illegal there.
    fn step(&mut self, state: u32, i: usize) -> Option<u32> {
        let op = self.ops[i];
        match &op.op {
            KvOp::Get => (*self.value(state) == op.output).then_some(state),
            KvOp::Delete => Some(0),
            KvOp::Put(_) | KvOp::Append(_) => {
                if let Some(&next) = self.transitions.get(&(state, i)) {
                    return Some(next);
                }
                let value = match &op.op {
                    KvOp::Put(v) => v.clone(),
                    KvOp::Append(v) => {
                        let mut value = self.value(state).clone().unwrap_or_default();
                        value.extend_from_slice(v);
                        value
                    }
                    KvOp::Get | KvOp::Delete => unreachable!(),
                };
                let next = self.intern(Some(value));
                self.transitions.insert((state, i), next);
                Some(next)
            }
        }
    }
}

/// The event list of the completed operations: entry 0 is the head sentinel, the last entry the
/// tail sentinel, and the entries between are invocations and responses sorted by time
/// (invocations first on ties, so operations that merely touch count as concurrent).
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The operation of each event.
    op: Vec<usize>,
    /// The time of each event.
    time: Vec<u64>,
    /// For an invocation, its response's entry; `None` for a response.
    response: Vec<Option<usize>>,
    /// The invocation entry of each operation.
    call_of: Vec<usize>,
}

const HEAD: usize = 0;

impl Events {
    fn new(completed: &[&Operation]) -> Self {
        // (time, 0 = invocation | 1 = response, op)
        let mut sorted: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * completed.len());
        for (i, op) in completed.iter().enumerate() {
            sorted.push((op.call, 0, i));
            sorted.push((op.ret.expect("a completed operation"), 1, i));
        }
        sorted.sort_unstable();
        let len = sorted.len() + 2;
        let mut events = Events {
            next: (1..=len).collect(),
            prev: (0..len).map(|e| e.saturating_sub(1)).collect(),
            op: vec![usize::MAX; len],
            time: vec![u64::MAX; len],
            response: vec![None; len],
            call_of: vec![0; completed.len()],
        };
        for (pos, &(time, kind, i)) in sorted.iter().enumerate() {
            let entry = pos + 1;
            events.op[entry] = i;
            events.time[entry] = time;
            if kind == 0 {
                events.call_of[i] = entry;
            } else {
                events.response[events.call_of[i]] = Some(entry);
            }
        }
        events
    }

    fn tail(&self) -> usize {
        self.next.len() - 1
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    /// Undoes `unlink(e)`; valid only in the reverse order of unlinking.
    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        self.prev[n] = e;
    }

    /// Removes operation `i`'s invocation and response from the list.
    fn lift(&mut self, i: usize) {
        let call = self.call_of[i];
        let ret = self.response[call].expect("an invocation");
        self.unlink(call);
        self.unlink(ret);
    }

    fn unlift(&mut self, i: usize) {
        let call = self.call_of[i];
        let ret = self.response[call].expect("an invocation");
        self.relink(ret);
        self.relink(call);
    }

    /// The time of the earliest pending response: every operation that may go next was
    /// invoked by then.
    fn deadline(&self) -> u64 {
        let mut e = self.next[HEAD];
        while self.response[e].is_some() {
            e = self.next[e];
        }
        self.time[e]
    }
}

fn set_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

fn clear_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] &= !(1 << (i % 64));
}

fn is_subset(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(a, b)| a & !b == 0)
}

/// The prefixes visited so far, each as (completed operations linearized, state, timed-out
/// writes linearized).
///
/// Besides exact repeats it prunes dominated prefixes: with the same completed operations and
/// the same state, a prefix that has used up a superset of the timed-out writes can do nothing
/// the other cannot (those writes never constrain anything and may be left out), so once the
/// smaller one has been visited the larger need not be.
#[derive(Default)]
struct Cache {
    buckets: HashMap<u64, Vec<Visited>>,
}

struct Visited {
    done: Box<[u64]>,
    state: u32,
    late: Box<[u64]>,
}

impl Cache {
    /// Records the prefix; false if it or one dominating it was visited before.
    fn insert(&mut self, done: &[u64], state: u32, late: &[u64]) -> bool {
        let mut h = u64::from(state).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for &w in done {
            h = (h.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
        let bucket = self.buckets.entry(h).or_default();
        let same = |v: &Visited| v.state == state && *v.done == *done;
        if bucket.iter().any(|v| same(v) && is_subset(&v.late, late)) {
            return false;
        }
        bucket.retain(|v| !(same(v) && is_subset(late, &v.late)));
        bucket.push(Visited {
            done: done.into(),
            state,
            late: late.into(),
        });
        true
    }
}

fn check_key(ops: &[&Operation], max_steps: u64) -> KeyVerdict {
    // Completed operations first, then the timed-out writes by invocation time.
    let mut ordered: Vec<&Operation> = ops.iter().copied().filter(|o| o.ret.is_some()).collect();
    let completed = ordered.len();
    let mut late: Vec<(&Operation, Vec<usize>)> = ops
        .iter()
        .filter(|o| o.ret.is_none())
        .map(|&w| (w, observers(w, &ordered)))
        .filter(|(_, observers)| !observers.is_empty())
        .collect();
    late.sort_by_key(|(w, _)| w.call);
    let observers = late.iter_mut().map(|(_, o)| std::mem::take(o)).collect();
    ordered.extend(late.into_iter().map(|(w, _)| w));
    let mut search = Search {
        ops: &ordered,
        completed,
        model: Model::new(&ordered),
        events: Events::new(&ordered[..completed]),
        cache: Cache::default(),
        observers,
        done: vec![0; completed.div_ceil(64)],
        late: vec![0; (ordered.len() - completed).div_ceil(64)],
        state: 0,
        stack: Vec::new(),
        done_count: 0,
        longest: (0, Vec::new()),
    };
    match search.run(max_steps) {
        Verdict::OutOfSteps => KeyVerdict::OutOfSteps,
        Verdict::Linearizable => KeyVerdict::Linearizable,
        Verdict::Illegal => KeyVerdict::Illegal(explain(&search)),
    }
}

/// The completed reads among `ops` that could observe the timed-out write `w`.
///
/// Only a read in the stretch after `w` and before the next `Put` or `Delete` can tell whether
/// `w` happened, and every value in that stretch starts with a `Put`'s value or contains an
/// `Append`'s bytes. If no such read is pending, `w` can be dropped from any linearization
/// without changing what a read sees (it is then as good as left out), so it need not be
/// tried; one without observers at all is dropped from the search.
fn observers(w: &Operation, ops: &[&Operation]) -> Vec<usize> {
    (0..ops.len())
        .filter(|&i| ops[i].op == KvOp::Get && value_may_show(&w.op, &ops[i].output))
        .collect()
}

/// Whether a read that returned `seen` may have observed the write `w`: a `Put`'s value
/// starts the value, an `Append`'s bytes are in it. Always true for a `Delete` (and a `Get`).
fn value_may_show(w: &KvOp, seen: &Option<Vec<u8>>) -> bool {
    match (w, seen) {
        (KvOp::Put(v), Some(seen)) => seen.starts_with(v),
        (KvOp::Append(b), Some(seen)) => b.is_empty() || seen.windows(b.len()).any(|s| s == b),
        (KvOp::Put(_) | KvOp::Append(_), None) => false,
        (KvOp::Delete | KvOp::Get, _) => true,
    }
}

enum Verdict {
    Linearizable,
    Illegal,
    OutOfSteps,
}

/// Where the search resumes within one prefix: the next list entry to try, or the next
/// timed-out write (tried after every completed operation) with the prefix's deadline.
#[derive(Clone, Copy)]
enum Cursor {
    List(usize),
    Late { index: usize, deadline: u64 },
}

/// The depth-first search over one key.
///
/// Operations without a response are kept out of the event list: their response would come
/// at +infinity, so they never force a choice. The search succeeds once every completed
/// operation is linearized (the list is empty), since the remaining timed-out writes can go
/// last, where nothing observes them. They are tried only after every completed candidate,
/// so that prefixes without them are visited first and dominate (see [`Cache`]).
///
/// One more dominance rule prunes reads (Lowe's observation about operations that leave the
/// state unchanged): if a `Get` is legal in the current state and could go next (invoked
/// before every pending response), some linearization extends the current prefix only if one
/// extends the prefix followed by that `Get` — moving the `Get` to the front of any extension
/// keeps every state the same and breaks no real-time order, since every pending operation
/// returns after the `Get` was invoked. So legal reads are taken first without branching, and
/// failing after one means failing before it.
struct Search<'a> {
    /// Completed operations (indices below `completed`), then timed-out writes by `call`.
    ops: &'a [&'a Operation],
    completed: usize,
    model: Model<'a>,
    events: Events,
    cache: Cache,
    /// For each timed-out write, the reads that might observe it (see [`observers`]).
    observers: Vec<Vec<usize>>,
    /// Bit `i` is set while completed operation `i` is on `stack`.
    done: Vec<u64>,
    /// Bit `i` is set while timed-out write `completed + i` is on `stack`.
    late: Vec<u64>,
    state: u32,
    /// The current prefix: linearized operations, each with the state before it.
    stack: Vec<(usize, u32)>,
    /// How many completed operations are on `stack`.
    done_count: usize,
    /// The prefix with the most completed operations reached (that count, the operations),
    /// kept for the explanation.
    longest: (usize, Vec<usize>),
}

impl Search<'_> {
    fn run(&mut self, max_steps: u64) -> Verdict {
        let tail = self.events.tail();
        let mut steps = 0u64;
        let mut cursor = Cursor::List(HEAD);
        // True on reaching a prefix for the first time.
        let mut fresh = true;
        while self.events.next[HEAD] != tail {
            steps += 1;
            if steps > max_steps {
                return Verdict::OutOfSteps;
            }
            if fresh {
                fresh = false;
                cursor = Cursor::List(self.events.next[HEAD]);
                if let Some(read) = self.legal_read(&mut steps) {
                    if self.try_push(read, self.state) {
                        fresh = true;
                        continue;
                    }
                    // Visited before and failed; by dominance so does this prefix.
                    match self.backtrack() {
                        Some(resume) => cursor = resume,
                        None => return Verdict::Illegal,
                    }
                    continue;
                }
            }
            match cursor {
                Cursor::List(e) => {
                    let Some(_) = self.events.response[e] else {
                        // The earliest pending response: the completed candidates are done.
                        let deadline = self.events.time[e];
                        cursor = Cursor::Late { index: 0, deadline };
                        continue;
                    };
                    let i = self.events.op[e];
                    // Reads here are illegal in this state (else one would have been taken).
                    if self.ops[i].op != KvOp::Get {
                        let after = self.model.step(self.state, i).expect("writes are legal");
                        if self.try_push(i, after) {
                            fresh = true;
                            continue;
                        }
                    }
                    cursor = Cursor::List(self.events.next[e]);
                }
                Cursor::Late { index, deadline } => {
                    let i = self.completed + index;
                    if i == self.ops.len() || self.ops[i].call > deadline {
                        match self.backtrack() {
                            Some(resume) => cursor = resume,
                            None => return Verdict::Illegal,
                        }
                        continue;
                    }
                    let observable = self.observers[index]
                        .iter()
                        .any(|&r| self.done[r / 64] & (1 << (r % 64)) == 0);
                    if self.late[index / 64] & (1 << (index % 64)) == 0 && observable {
                        let after = self.model.step(self.state, i).expect("writes are legal");
                        if self.try_push(i, after) {
                            fresh = true;
                            continue;
                        }
                    }
                    cursor = Cursor::Late {
                        index: index + 1,
                        deadline,
                    };
                }
            }
        }
        Verdict::Linearizable
    }

    /// A `Get` that may go next and is legal in the current state.
    fn legal_read(&mut self, steps: &mut u64) -> Option<usize> {
        let mut e = self.events.next[HEAD];
        while self.events.response[e].is_some() {
            *steps += 1;
            let i = self.events.op[e];
            if self.ops[i].op == KvOp::Get && self.model.step(self.state, i).is_some() {
                return Some(i);
            }
            e = self.events.next[e];
        }
        None
    }

    fn mark(&mut self, i: usize, on: bool) {
        let (bits, bit) = match i.checked_sub(self.completed) {
            None => (&mut self.done, i),
            Some(late) => (&mut self.late, late),
        };
        if on {
            set_bit(bits, bit);
        } else {
            clear_bit(bits, bit);
        }
    }

    /// Linearizes operation `i`, which leads to state `after`, unless the resulting prefix was
    /// visited before or is dominated by one that was.
    fn try_push(&mut self, i: usize, after: u32) -> bool {
        self.mark(i, true);
        if !self.cache.insert(&self.done, after, &self.late) {
            self.mark(i, false);
            return false;
        }
        self.stack.push((i, self.state));
        self.state = after;
        if i < self.completed {
            self.events.lift(i);
            self.done_count += 1;
            if self.done_count > self.longest.0 {
                self.longest = (
                    self.done_count,
                    self.stack.iter().map(|&(i, _)| i).collect(),
                );
            }
        }
        true
    }

    /// Undoes the prefix back to and including its last write, and returns where to resume
    /// among the candidates after that write; `None` once the prefix is empty. Reads after that
    /// write go too: by dominance, failing after a legal read means failing before it.
    fn backtrack(&mut self) -> Option<Cursor> {
        while let Some((i, before)) = self.stack.pop() {
            self.mark(i, false);
            self.state = before;
            if i >= self.completed {
                let deadline = self.events.deadline();
                return Some(Cursor::Late {
                    index: i - self.completed + 1,
                    deadline,
                });
            }
            self.events.unlift(i);
            self.done_count -= 1;
            if self.ops[i].op != KvOp::Get {
                return Some(Cursor::List(self.events.next[self.events.call_of[i]]));
            }
        }
        None
    }
}

/// Describes why no linearization exists, from the prefix with the most completed operations
/// that the search reached.
fn explain(search: &Search<'_>) -> String {
    use std::fmt::Write as _;

    let ops = search.ops;
    let longest = &search.longest.1;
    let mut model = Model::new(ops);
    let mut out = format!(
        "no linearization of its {} operations exists; the longest legal prefix found \
         ({} operations):",
        ops.len(),
        longest.len()
    );
    let mut state = 0;
    for (n, &i) in longest.iter().enumerate() {
        state = model.step(state, i).expect("the prefix is legal");
        let _ = write!(
            out,
            "\n  {}. {} => {}",
            n + 1,
            ops[i],
            show_value(model.value(state))
        );
    }
    let mut pending = vec![true; search.completed];
    for &i in longest.iter().filter(|&&i| i < search.completed) {
        pending[i] = false;
    }
    let deadline = (0..search.completed)
        .filter(|&i| pending[i])
        .filter_map(|i| ops[i].ret)
        .min()
        .unwrap_or(u64::MAX);
    let _ = write!(
        out,
        "\nthen the value is {}, and no linearization continues with any of the completed \
         operations that could take effect next (invoked by {deadline}ns):",
        show_value(model.value(state))
    );
    let mut next: Vec<usize> = (0..search.completed)
        .filter(|&i| pending[i] && ops[i].call <= deadline)
        .collect();
    next.sort_by_key(|&i| ops[i].call);
    for i in next {
        let _ = write!(out, "\n  {}", ops[i]);
        if model.step(state, i).is_none() {
            out += " (disagrees)";
        }
    }
    out
}

impl fmt::Display for KvOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvOp::Get => write!(f, "Get"),
            KvOp::Put(v) => write!(f, "Put {}", show_bytes(v)),
            KvOp::Append(v) => write!(f, "Append {}", show_bytes(v)),
            KvOp::Delete => write!(f, "Delete"),
        }
    }
}

impl fmt::Display for Operation {
    /// E.g. `client 3: Get "k" -> "v" [120ns, 180ns]` or `client 1: Put "k" "v" [10ns, -]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (verb, arg) = match &self.op {
            KvOp::Get => ("Get", None),
            KvOp::Put(v) => ("Put", Some(v)),
            KvOp::Append(v) => ("Append", Some(v)),
            KvOp::Delete => ("Delete", None),
        };
        write!(
            f,
            "client {}: {verb} {}",
            self.client,
            show_bytes(&self.key)
        )?;
        if let Some(v) = arg {
            write!(f, " {}", show_bytes(v))?;
        }
        if self.op == KvOp::Get && self.ret.is_some() {
            write!(f, " -> {}", show_value(&self.output))?;
        }
        match self.ret {
            Some(ret) => write!(f, " [{}ns, {ret}ns]", self.call),
            None => write!(f, " [{}ns, no response]", self.call),
        }
    }
}

fn show_value(v: &Option<Vec<u8>>) -> String {
    match v {
        Some(v) => show_bytes(v),
        None => "absent".to_string(),
    }
}

/// Quoted text if the bytes are UTF-8, else hex; long values are cut short.
fn show_bytes(b: &[u8]) -> String {
    const MAX: usize = 48;
    let shown = &b[..b.len().min(MAX)];
    let mut s = match std::str::from_utf8(shown) {
        Ok(text) => format!("{text:?}"),
        Err(_) => shown
            .iter()
            .fold("0x".to_string(), |s, byte| s + &format!("{byte:02x}")),
    };
    if b.len() > MAX {
        s += &format!("…({} bytes)", b.len());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: u64 = DEFAULT_STEPS_PER_KEY;

    fn put(client: u64, v: &str, call: u64, ret: u64) -> Operation {
        Operation::completed(client, "k", KvOp::Put(v.into()), None, call, ret)
    }

    fn append(client: u64, v: &str, call: u64, ret: u64) -> Operation {
        Operation::completed(client, "k", KvOp::Append(v.into()), None, call, ret)
    }

    fn delete(client: u64, call: u64, ret: u64) -> Operation {
        Operation::completed(client, "k", KvOp::Delete, None, call, ret)
    }

    fn get(client: u64, seen: Option<&str>, call: u64, ret: u64) -> Operation {
        Operation::completed(client, "k", KvOp::Get, seen.map(Into::into), call, ret)
    }

    fn timed_out(client: u64, op: KvOp, call: u64) -> Operation {
        Operation::timed_out(client, "k", op, call)
    }

    #[track_caller]
    fn assert_ok(history: &[Operation]) {
        let result = check(history, STEPS);
        assert!(result.is_ok(), "{result}");
    }

    #[track_caller]
    fn assert_illegal(history: &[Operation]) -> String {
        match check(history, STEPS) {
            CheckResult::Illegal { explanation, .. } => explanation,
            other => panic!("expected illegal, got {other}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_ok(&[]);
    }

    #[test]
    fn sequential_legal() {
        assert_ok(&[
            get(1, None, 0, 1),
            put(1, "a", 2, 3),
            get(2, Some("a"), 4, 5),
            append(1, "b", 6, 7),
            get(2, Some("ab"), 8, 9),
            put(2, "c", 10, 11),
            get(1, Some("c"), 12, 13),
        ]);
    }

    #[test]
    fn sequential_illegal() {
        assert_illegal(&[put(1, "a", 0, 1), get(2, Some("b"), 2, 3)]);
        assert_illegal(&[get(1, Some("a"), 0, 1), put(1, "a", 2, 3)]);
        assert_illegal(&[
            append(1, "a", 0, 1),
            append(1, "b", 2, 3),
            get(1, Some("ba"), 4, 5),
        ]);
    }

    #[test]
    fn concurrent_writes_in_either_order() {
        // Both puts overlap; later reads agree on one order or the other.
        for last in ["a", "b"] {
            assert_ok(&[
                put(1, "a", 0, 10),
                put(2, "b", 5, 15),
                get(3, Some(last), 20, 21),
                get(1, Some(last), 22, 23),
            ]);
        }
        // But not both orders at once.
        assert_illegal(&[
            put(1, "a", 0, 10),
            put(2, "b", 5, 15),
            get(3, Some("a"), 20, 21),
            get(1, Some("b"), 22, 23),
        ]);
    }

    #[test]
    fn read_concurrent_with_write_may_see_either_value() {
        for seen in [None, Some("a")] {
            assert_ok(&[put(1, "a", 0, 10), get(2, seen, 5, 6)]);
        }
    }

    #[test]
    fn rejects_stale_read() {
        let explanation = assert_illegal(&[
            put(1, "old", 0, 10),
            put(1, "new", 20, 30),
            // Strictly after "new" was acknowledged.
            get(2, Some("old"), 40, 50),
        ]);
        assert!(
            explanation.contains("client 2: Get \"k\" -> \"old\" [40ns, 50ns]"),
            "{explanation}"
        );
        assert!(
            explanation.contains("then the value is \"new\""),
            "{explanation}"
        );
    }

    #[test]
    fn rejects_stale_read_after_a_legal_concurrent_read() {
        // Client 2 sees the new value during the put; client 3 later sees the old one: once a
        // read has seen a write, every later read must too.
        assert_illegal(&[
            put(1, "old", 0, 1),
            put(1, "new", 10, 100),
            get(2, Some("new"), 20, 30),
            get(3, Some("old"), 40, 50),
        ]);
    }

    #[test]
    fn concurrent_appends() {
        let writes = [append(1, "x", 0, 10), append(2, "y", 5, 15)];
        for seen in ["xy", "yx"] {
            assert_ok(&[
                writes[0].clone(),
                writes[1].clone(),
                get(3, Some(seen), 20, 21),
            ]);
        }
        for seen in ["x", "xx", "xyx", "y"] {
            assert_illegal(&[
                writes[0].clone(),
                writes[1].clone(),
                get(3, Some(seen), 20, 21),
            ]);
        }
    }

    #[test]
    fn timed_out_write_may_take_effect_late() {
        assert_ok(&[
            put(1, "a", 0, 1),
            timed_out(2, KvOp::Put("b".into()), 5),
            get(3, Some("a"), 10, 11),
            // Applied long after its client gave up.
            get(3, Some("b"), 100, 101),
            get(1, Some("b"), 200, 201),
        ]);
    }

    #[test]
    fn timed_out_write_may_never_take_effect() {
        assert_ok(&[
            put(1, "a", 0, 1),
            timed_out(2, KvOp::Put("b".into()), 5),
            timed_out(2, KvOp::Append("c".into()), 6),
            timed_out(2, KvOp::Delete, 7),
            get(3, Some("a"), 100, 101),
        ]);
    }

    #[test]
    fn timed_out_write_takes_effect_at_most_once() {
        // Seen, then gone again without another write: illegal.
        assert_illegal(&[
            put(1, "a", 0, 1),
            timed_out(2, KvOp::Put("b".into()), 5),
            get(3, Some("b"), 10, 11),
            get(3, Some("a"), 20, 21),
        ]);
        // An append retried by nobody shows up once.
        assert_illegal(&[
            timed_out(2, KvOp::Append("z".into()), 0),
            get(3, Some("zz"), 10, 11),
        ]);
    }

    #[test]
    fn timed_out_write_cannot_precede_its_call() {
        assert_illegal(&[
            get(1, Some("b"), 0, 1),
            timed_out(2, KvOp::Put("b".into()), 5),
        ]);
    }

    #[test]
    fn timed_out_reads_are_dropped() {
        assert_ok(&[
            put(1, "a", 0, 1),
            timed_out(2, KvOp::Get, 5),
            get(3, Some("a"), 10, 11),
        ]);
    }

    #[test]
    fn delete_then_absent() {
        assert_ok(&[
            put(1, "a", 0, 1),
            delete(1, 2, 3),
            get(2, None, 4, 5),
            append(1, "b", 6, 7),
        ]);
        assert_illegal(&[put(1, "a", 0, 1), delete(1, 2, 3), get(2, Some("a"), 4, 5)]);
    }

    #[test]
    fn operations_that_touch_count_as_concurrent() {
        assert_ok(&[put(1, "a", 0, 10), get(2, None, 10, 20)]);
    }

    #[test]
    fn keys_are_checked_separately() {
        let mut history = vec![put(1, "a", 0, 1), get(2, Some("a"), 2, 3)];
        history.push(Operation::completed(
            3,
            "other",
            KvOp::Get,
            Some(b"a".to_vec()),
            4,
            5,
        ));
        match check(&history, STEPS) {
            CheckResult::Illegal { key, .. } => assert_eq!(key, b"other"),
            other => panic!("expected illegal, got {other}"),
        }
    }

    #[test]
    fn exhausted_budget_is_unknown() {
        let history = [
            put(1, "a", 0, 10),
            put(2, "b", 0, 10),
            get(3, Some("b"), 20, 21),
        ];
        assert_eq!(
            check(&history, 2),
            CheckResult::Unknown { key: b"k".to_vec() }
        );
        assert_ok(&history);
    }

    #[test]
    #[should_panic(expected = "returned before it was called")]
    fn inverted_times_are_a_recording_bug() {
        check(&[put(1, "a", 10, 5)], STEPS);
    }

    #[test]
    fn history_records_from_many_threads() {
        let history = History::new();
        std::thread::scope(|s| {
            for client in 0..4 {
                let history = history.clone();
                s.spawn(move || {
                    for n in 0..25 {
                        let call = history.now();
                        let value = format!("{client}-{n}").into_bytes();
                        history.record(Operation::completed(
                            client,
                            format!("k{client}"),
                            KvOp::Put(value),
                            None,
                            call,
                            history.now(),
                        ));
                    }
                });
            }
        });
        assert_eq!(history.len(), 100);
        assert!(history.check(STEPS).is_ok());
    }

    /// SplitMix64: a seeded generator whose sequence never changes with dependency versions.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A history of `clients` clients, each issuing `per_client` requests one after another
    /// over `keys` keys, produced by a real sequential execution: each request takes effect at
    /// a random instant between its call and its return, and the requests are applied to a map
    /// in the order of those instants. One in twenty requests times out; a timed-out write
    /// takes effect (possibly long after its client moved on) or is lost.
    pub(crate) fn random_history(
        seed: u64,
        clients: u64,
        per_client: u64,
        keys: u64,
    ) -> Vec<Operation> {
        struct Planned {
            at: u64,
            client: u64,
            call: u64,
            ret: Option<u64>,
            lost: bool,
        }
        let mut rng = Rng(seed);
        let mut planned = Vec::new();
        for client in 0..clients {
            let mut now = rng.below(100);
            for _ in 0..per_client {
                let call = now;
                let ret = call + 1 + rng.below(1000);
                now = ret + rng.below(100);
                if rng.below(20) == 0 {
                    let at = call + rng.below(5000);
                    let lost = rng.below(2) == 0;
                    planned.push(Planned {
                        at,
                        client,
                        call,
                        ret: None,
                        lost,
                    });
                } else {
                    let at = call + rng.below(ret - call + 1);
                    planned.push(Planned {
                        at,
                        client,
                        call,
                        ret: Some(ret),
                        lost: false,
                    });
                }
            }
        }
        planned.sort_by_key(|p| p.at);
        let mut map: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut history = Vec::with_capacity(planned.len());
        for (n, p) in planned.into_iter().enumerate() {
            let key = format!("k{}", rng.below(keys)).into_bytes();
            let value = format!("{n}.").into_bytes();
            let op = match rng.below(10) {
                0..=3 => KvOp::Get,
                4..=5 => KvOp::Put(value),
                6..=8 => KvOp::Append(value),
                _ => KvOp::Delete,
            };
            let output = map.get(&key).cloned();
            if !p.lost {
                match &op {
                    KvOp::Get => {}
                    KvOp::Put(v) => {
                        map.insert(key.clone(), v.clone());
                    }
                    KvOp::Append(v) => map.entry(key.clone()).or_default().extend_from_slice(v),
                    KvOp::Delete => {
                        map.remove(&key);
                    }
                }
            }
            history.push(match p.ret {
                Some(ret) => Operation::completed(p.client, key, op, output, p.call, ret),
                None => Operation::timed_out(p.client, key, op, p.call),
            });
        }
        // Recording order is not time order.
        for i in (1..history.len()).rev() {
            history.swap(i, rng.below(i as u64 + 1) as usize);
        }
        history
    }

    #[test]
    fn random_linearizable_histories_pass() {
        for seed in 0..20 {
            // 8 clients, 600 operations over 3 keys.
            let history = random_history(seed, 8, 75, 3);
            let result = check(&history, STEPS);
            assert!(result.is_ok(), "seed {seed}: {result}");
        }
    }

    /// Whether some order of all completed operations and some of the timed-out writes is
    /// legal, by trying every permutation.
    fn brute_force(history: &[Operation]) -> bool {
        fn extend(ops: &[&Operation], used: &mut Vec<bool>, value: Option<Vec<u8>>) -> bool {
            let all_done = (0..ops.len()).all(|i| used[i] || ops[i].ret.is_none());
            if all_done {
                return true;
            }
            for i in 0..ops.len() {
                if used[i] {
                    continue;
                }
                // Everything that returned before `i` was called must already be used.
                let blocked = (0..ops.len())
                    .any(|j| !used[j] && j != i && ops[j].ret.is_some_and(|r| r < ops[i].call));
                if blocked {
                    continue;
                }
                let next = match &ops[i].op {
                    KvOp::Get if ops[i].output != value => continue,
                    KvOp::Get => value.clone(),
                    KvOp::Put(v) => Some(v.clone()),
                    KvOp::Append(v) => {
                        Some([value.clone().unwrap_or_default(), v.clone()].concat())
                    }
                    KvOp::Delete => None,
                };
                used[i] = true;
                if extend(ops, used, next) {
                    return true;
                }
                used[i] = false;
            }
            false
        }
        let ops: Vec<&Operation> = history
            .iter()
            .filter(|o| o.ret.is_some() || o.op != KvOp::Get)
            .collect();
        extend(&ops, &mut vec![false; ops.len()], None)
    }

    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        let mut rng = Rng(7);
        let values = ["a", "b", "ab", "ba"];
        let (mut legal, mut illegal) = (0, 0);
        for _ in 0..3000 {
            let n = 1 + rng.below(7);
            let history: Vec<Operation> = (0..n)
                .map(|c| {
                    let call = rng.below(10);
                    let ret = call + rng.below(6);
                    let v = values[rng.below(2) as usize];
                    let op = match rng.below(8) {
                        0..=2 => KvOp::Get,
                        3..=4 => KvOp::Put(v.into()),
                        5..=6 => KvOp::Append(v.into()),
                        _ => KvOp::Delete,
                    };
                    let seen = match rng.below(5) {
                        0 => None,
                        k => Some(values[k as usize - 1].as_bytes().to_vec()),
                    };
                    if rng.below(4) == 0 {
                        Operation::timed_out(c, "k", op, call)
                    } else {
                        Operation::completed(c, "k", op, seen, call, ret)
                    }
                })
                .collect();
            let expected = brute_force(&history);
            let result = check(&history, STEPS);
            assert_eq!(result.is_ok(), expected, "{history:#?}\n{result}");
            if expected {
                legal += 1;
            } else {
                illegal += 1;
            }
        }
        assert!(
            legal > 300 && illegal > 300,
            "{legal} legal, {illegal} illegal"
        );
    }

    #[test]
    fn random_histories_with_a_corrupted_read_fail() {
        for seed in 0..20 {
            let mut history = random_history(seed, 6, 50, 2);
            let read = history
                .iter_mut()
                .find(|op| op.op == KvOp::Get && op.ret.is_some())
                .expect("some completed read");
            read.output = Some(b"never written".to_vec());
            let result = check(&history, STEPS);
            assert!(result.is_illegal(), "seed {seed}: {result}");
        }
    }
}
