//! The request gate of graceful shutdown: every client request of a gRPC service enters it;
//! a stopping server closes it, so new requests are refused at once (`ShuttingDown`, the client
//! goes to another member) while those already inside run to their end, which
//! [`RequestGate::drained`] awaits with a bound.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// Open until [`RequestGate::close`]; counts the requests inside.
#[derive(Debug, Default)]
pub struct RequestGate {
    closing: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// A request inside the gate; leaving is dropping it.
#[derive(Debug)]
pub struct RequestGuard {
    gate: Arc<RequestGate>,
}

impl RequestGate {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Lets a request in, or `None` once the gate is closing.
    pub fn enter(self: &Arc<Self>) -> Option<RequestGuard> {
        // Count first, then look at the flag: a request that slips in while `close` runs is
        // counted, so `drained` waits for it.
        self.in_flight.fetch_add(1, SeqCst);
        let guard = RequestGuard { gate: self.clone() };
        (!self.closing.load(SeqCst)).then_some(guard)
    }

    /// Refuses every later request. Idempotent.
    pub fn close(&self) {
        self.closing.store(true, SeqCst);
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(SeqCst)
    }

    /// Requests inside the gate now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(SeqCst)
    }

    /// Waits until no request is inside, at most `timeout`; returns whether it drained.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.in_flight() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.gate.in_flight.fetch_sub(1, SeqCst) == 1 {
            self.gate.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closing_refuses_new_requests_and_drains_old_ones() {
        let gate = RequestGate::new();
        let inside = gate.enter().expect("open gate");
        assert_eq!(gate.in_flight(), 1);
        gate.close();
        assert!(gate.enter().is_none(), "a closed gate let a request in");
        assert_eq!(gate.in_flight(), 1);
        assert!(!gate.drained(Duration::from_millis(20)).await);
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.drained(Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        drop(inside);
        assert!(waiter.await.unwrap());
        assert_eq!(gate.in_flight(), 0);
    }
}
