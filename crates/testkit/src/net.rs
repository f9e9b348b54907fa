//! A fault-injecting network for raft-core tests: partitions, drops, delays.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use quorumkv_raft_core::Transport;
use raft::eraftpb::Message;
use rand::Rng;

#[derive(Default)]
struct Rules {
    /// Pairs (from, to) whose messages are cut.
    cut: BTreeSet<(u64, u64)>,
    /// Probability of dropping any message.
    drop_rate: f64,
    /// Maximum random delay of any message (0 = none); random delays reorder messages.
    max_delay: Duration,
    /// Messages dropped so far (for assertions that faults really happened).
    dropped: u64,
}

/// The shared rules of one test network.
#[derive(Default)]
pub struct FaultNet {
    rules: Mutex<Rules>,
}

impl FaultNet {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Splits the members into the given sides; members on different sides cannot talk.
    pub fn partition(&self, sides: &[&[u64]]) {
        let mut r = self.rules.lock();
        r.cut.clear();
        for (i, a) in sides.iter().enumerate() {
            for (j, b) in sides.iter().enumerate() {
                if i != j {
                    for x in a.iter() {
                        for y in b.iter() {
                            r.cut.insert((*x, *y));
                        }
                    }
                }
            }
        }
    }

    /// Cuts `id` off from `others`, both ways.
    pub fn isolate(&self, id: u64, others: &[u64]) {
        let mut r = self.rules.lock();
        for o in others {
            if *o != id {
                r.cut.insert((id, *o));
                r.cut.insert((*o, id));
            }
        }
    }

    /// Cuts messages from `from` to `to` only: a one-way partition (`to` still reaches
    /// `from`).
    pub fn cut_one_way(&self, from: u64, to: u64) {
        self.rules.lock().cut.insert((from, to));
    }

    /// Removes every partition, drop rate and delay.
    pub fn heal(&self) {
        let mut r = self.rules.lock();
        r.cut.clear();
        r.drop_rate = 0.0;
        r.max_delay = Duration::ZERO;
    }

    /// Drops each message with probability `rate` and delays each by up to `max_delay`.
    pub fn set_unreliable(&self, rate: f64, max_delay: Duration) {
        let mut r = self.rules.lock();
        r.drop_rate = rate;
        r.max_delay = max_delay;
    }

    pub fn dropped(&self) -> u64 {
        self.rules.lock().dropped
    }

    /// Decides the fate of one message: `None` to drop, `Some(delay)` to deliver.
    fn route(&self, from: u64, to: u64) -> Option<Duration> {
        let mut r = self.rules.lock();
        let mut rng = rand::thread_rng();
        if r.cut.contains(&(from, to)) || (r.drop_rate > 0.0 && rng.gen_bool(r.drop_rate)) {
            r.dropped += 1;
            return None;
        }
        if r.max_delay.is_zero() {
            Some(Duration::ZERO)
        } else {
            Some(rng.gen_range(Duration::ZERO..r.max_delay))
        }
    }
}

/// Wraps a member's real transport and applies the network's rules to what it sends.
pub struct FaultyTransport<T: Transport> {
    /// Added to raft member ids to make the network's ids.
    base: u64,
    from: u64,
    inner: Arc<T>,
    net: Arc<FaultNet>,
    runtime: tokio::runtime::Handle,
}

impl<T: Transport> FaultyTransport<T> {
    pub fn new(from: u64, inner: T, net: Arc<FaultNet>, runtime: tokio::runtime::Handle) -> Self {
        Self::in_group(0, from, inner, net, runtime)
    }

    /// For member `id` of a group whose members are known to the network as `base + id`
    /// (several groups on one network: each its own `base`, so that ids stay distinct).
    /// Rules name members by those network ids, senders and receivers alike.
    pub fn in_group(
        base: u64,
        id: u64,
        inner: T,
        net: Arc<FaultNet>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        FaultyTransport {
            base,
            from: base + id,
            inner: Arc::new(inner),
            net,
            runtime,
        }
    }
}

impl<T: Transport> Transport for FaultyTransport<T> {
    fn send(&self, msgs: Vec<Message>) {
        let mut now = Vec::new();
        let mut later: BTreeMap<Duration, Vec<Message>> = BTreeMap::new();
        for m in msgs {
            match self.net.route(self.from, self.base + m.to) {
                None => {}
                Some(d) if d.is_zero() => now.push(m),
                Some(d) => later.entry(d).or_default().push(m),
            }
        }
        if !now.is_empty() {
            self.inner.send(now);
        }
        for (delay, msgs) in later {
            let inner = self.inner.clone();
            self.runtime.spawn(async move {
                tokio::time::sleep(delay).await;
                inner.send(msgs);
            });
        }
    }

    fn set_members(&self, members: &BTreeMap<u64, String>) {
        self.inner.set_members(members)
    }
}
