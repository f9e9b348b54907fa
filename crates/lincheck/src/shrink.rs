//! Shrinking a failing history of one key to a smallest one that still fails.
//!
//! A violation found in a history of a thousand operations is shown best by the handful that
//! cause it: the acknowledged write and the read that missed it. Shrinking removes operations
//! for as long as what is left is still not linearizable, delta-debugging style: large chunks
//! first (in invocation order, so that most of the history goes in a few checks), then smaller
//! ones, down to single operations, until no single operation can go.
//!
//! # Why what is left proves the violation
//!
//! Dropping reads only removes constraints, but dropping a write can create a violation of its
//! own: without the `Put` a read observed, that read's value comes from nowhere. So a write is
//! dropped only when no read that stays may have observed it ([`Observers`]). In any
//! linearization of the whole history, what a read returned is decided by the last `Put` or
//! `Delete` before it (none: the key's initial absence) and the `Append`s after that one. Each
//! of those was invoked before the read returned, and:
//! - that `Put`'s value starts the read's value, and those `Append`s' bytes are in it;
//! - that `Delete` comes right before the first of those `Append`s (whose bytes start the
//!   value), or, when the read saw no key, right before the read itself, with no other write in
//!   between. So it was invoked before that operation returned, and no `Put` or `Delete` (any
//!   write, for a read that saw no key) lies wholly between the two in real time (returned
//!   after the `Delete` returned and before that operation was invoked), since such a write
//!   would be linearized between them.
//!
//! A write that may play one of these parts for a read that stays stays too. The linearization
//! restricted to what stays then gives every read the same value, so it is a linearization of
//! what stays. Contrapositive: when what stays has none, the whole history has none either, and
//! what stays proves the violation on its own, in a few lines.

use crate::{check_key, KeyVerdict, KvOp, Operation};

/// The most checks one shrink makes; past it the smallest history found so far is returned
/// (still failing, maybe not minimal).
const MAX_CHECKS: usize = 20_000;

/// A smallest sub-history of `ops` (the operations of one key) that is still not
/// linearizable, sorted by invocation time: no single operation can be removed from it without
/// making it linearizable or dropping a write that one of its reads may have observed. `None`
/// when `ops` itself is not shown illegal within `steps_per_check` steps.
///
/// `Get`s without a response are dropped first (they observed nothing).
pub fn shrink(ops: &[Operation], steps_per_check: u64) -> Option<Vec<Operation>> {
    let mut ops: Vec<&Operation> = ops
        .iter()
        .filter(|o| o.ret.is_some() || o.op != KvOp::Get)
        .collect();
    ops.sort_by_key(|o| (o.call, o.ret));
    let shrinker = Shrinker {
        ops: &ops,
        observers: Observers::of(&ops),
        steps: steps_per_check,
    };
    let mut kept = vec![true; ops.len()];
    if !shrinker.illegal(&kept) {
        return None;
    }
    let mut checks = 1;
    let live = |kept: &[bool]| -> Vec<usize> { (0..kept.len()).filter(|&i| kept[i]).collect() };
    let mut chunk = (ops.len() / 2).max(1);
    'shrinking: loop {
        let mut removed = false;
        for group in live(&kept).chunks(chunk) {
            if checks >= MAX_CHECKS {
                break 'shrinking;
            }
            let Some(next) = shrinker.without(&kept, group) else {
                continue;
            };
            checks += 1;
            if shrinker.illegal(&next) {
                kept = next;
                removed = true;
            }
        }
        let left = kept.iter().filter(|k| **k).count();
        if removed {
            chunk = chunk.min(left / 2).max(1);
        } else if chunk == 1 {
            break;
        } else {
            chunk /= 2;
        }
    }
    Some(
        (0..ops.len())
            .filter(|&i| kept[i])
            .map(|i| ops[i].clone())
            .collect(),
    )
}

struct Shrinker<'a> {
    /// The operations, by invocation time.
    ops: &'a [&'a Operation],
    observers: Observers,
    steps: u64,
}

impl Shrinker<'_> {
    fn illegal(&self, kept: &[bool]) -> bool {
        let ops: Vec<&Operation> = (0..self.ops.len())
            .filter(|&i| kept[i])
            .map(|i| self.ops[i])
            .collect();
        matches!(check_key(&ops, self.steps), KeyVerdict::Illegal(_))
    }

    /// `kept` without the reads of `group` and without the writes of `group` that no read
    /// left may have observed; `None` if that removes nothing.
    fn without(&self, kept: &[bool], group: &[usize]) -> Option<Vec<bool>> {
        let mut next = kept.to_vec();
        for &i in group {
            if self.ops[i].op == KvOp::Get {
                next[i] = false;
            }
        }
        for &i in group {
            if self.ops[i].op != KvOp::Get && !self.observers.of_write[i].iter().any(|&r| next[r]) {
                next[i] = false;
            }
        }
        (next != kept).then_some(next)
    }
}

/// For every write of a history (indices into it), the completed reads that may have
/// observed it, by the rules of the module docs. Depends on the whole history only.
struct Observers {
    of_write: Vec<Vec<usize>>,
}

impl Observers {
    fn of(ops: &[&Operation]) -> Self {
        // Latest invocation of a `Put` or `Delete` (`puts`), or of any write (`all`), among
        // those completed before `before`: a `Delete` that returned before it lies wholly
        // before such a write.
        let latest_between = |before: u64, any_write: bool| -> Option<u64> {
            ops.iter()
                .filter(|w| match &w.op {
                    KvOp::Get => false,
                    KvOp::Append(_) => any_write,
                    KvOp::Put(_) | KvOp::Delete => true,
                })
                .filter(|w| w.ret.is_some_and(|ret| ret < before))
                .map(|w| w.call)
                .max()
        };
        // A `Delete` `d` may be the last `Put`/`Delete` right before operation `x`.
        let leads = |d: &Operation, x: &Operation, any_write: bool| {
            x.ret.is_none_or(|ret| d.call <= ret)
                && match (d.ret, latest_between(x.call, any_write)) {
                    (Some(ret), Some(latest)) => latest <= ret,
                    _ => true,
                }
        };
        let may_observe = |w: &Operation, r: &Operation| {
            let Some(ret) = r.ret else {
                return false;
            };
            if r.op != KvOp::Get || w.call > ret {
                return false;
            }
            match (&w.op, &r.output) {
                (KvOp::Delete, None) => leads(w, r, true),
                (KvOp::Delete, Some(v)) => ops.iter().any(|a| match &a.op {
                    KvOp::Append(b) => v.starts_with(b) && leads(w, a, false),
                    _ => false,
                }),
                (op, seen) => crate::value_may_show(op, seen),
            }
        };
        let of_write = ops
            .iter()
            .map(|w| {
                if w.op == KvOp::Get {
                    return Vec::new();
                }
                (0..ops.len()).filter(|&r| may_observe(w, ops[r])).collect()
            })
            .collect();
        Observers { of_write }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{check, DEFAULT_STEPS_PER_KEY};

    fn op(client: u64, op: KvOp, seen: Option<&str>, call: u64, ret: u64) -> Operation {
        Operation::completed(client, "k", op, seen.map(Into::into), call, ret)
    }

    fn put(v: &str) -> KvOp {
        KvOp::Put(v.into())
    }

    /// A long legal sequential history with one stale read in the middle.
    fn with_stale_read() -> (Vec<Operation>, Operation) {
        let mut h = Vec::new();
        let mut t = 0;
        let stale = op(3, KvOp::Get, Some("v119;"), 2420, 2425);
        for n in 0..200 {
            let v = format!("v{n};");
            h.push(op(1, put(&v), None, t, t + 5));
            h.push(op(2, KvOp::Get, Some(&v), t + 10, t + 15));
            t += 20;
            if n == 120 {
                // After "v120;" was acknowledged (and read), a read of the value before it.
                assert_eq!(t, stale.call);
                h.push(stale.clone());
                t += 10;
            }
        }
        (h, stale)
    }

    #[test]
    fn a_stale_read_shrinks_to_the_writes_around_it() {
        let (h, stale) = with_stale_read();
        assert!(check(&h, DEFAULT_STEPS_PER_KEY).is_illegal());
        let small = shrink(&h, DEFAULT_STEPS_PER_KEY).expect("illegal");
        assert!(small.contains(&stale), "{small:#?}");
        // The put the read saw, and the later acknowledged put it missed.
        assert!(small.iter().any(|o| o.op == put("v119;")), "{small:#?}");
        assert!(small.iter().any(|o| o.op == put("v120;")), "{small:#?}");
        assert_eq!(small.len(), 3, "{small:#?}");
        assert!(check(&small, DEFAULT_STEPS_PER_KEY).is_illegal());
    }

    #[test]
    fn a_linearizable_history_does_not_shrink() {
        let h = [
            op(1, put("a"), None, 0, 1),
            op(2, KvOp::Get, Some("a"), 2, 3),
        ];
        assert_eq!(shrink(&h, DEFAULT_STEPS_PER_KEY), None);
    }

    #[test]
    fn never_drops_the_delete_that_explains_an_absent_read() {
        // The value was seen again after a delete: illegal. Dropping the delete would leave
        // `put a; get -> absent` for the second read, a violation that never happened.
        let h = [
            op(1, put("a"), None, 0, 1),
            op(1, KvOp::Delete, None, 2, 3),
            op(2, KvOp::Get, None, 4, 5),
            op(3, KvOp::Get, Some("a"), 6, 7),
        ];
        let small = shrink(&h, DEFAULT_STEPS_PER_KEY).unwrap();
        assert!(small.iter().any(|o| o.op == KvOp::Delete), "{small:#?}");
        assert!(check(&small, DEFAULT_STEPS_PER_KEY).is_illegal());
    }

    #[test]
    fn keeps_every_write_a_kept_read_may_have_observed() {
        let h = [
            op(1, KvOp::Append("x;".into()), None, 0, 1),
            op(1, KvOp::Append("y;".into()), None, 2, 3),
            Operation::timed_out(4, "k", KvOp::Append("z;".into()), 4),
            op(2, KvOp::Get, Some("x;y;"), 10, 11),
            // Lost "y;" although it was seen before.
            op(3, KvOp::Get, Some("x;z;"), 12, 13),
        ];
        let small = shrink(&h, DEFAULT_STEPS_PER_KEY).unwrap();
        let all: Vec<&Operation> = h.iter().collect();
        let observers = Observers::of(&all);
        for (w, readers) in observers.of_write.iter().enumerate() {
            for &r in readers {
                if small.contains(all[r]) {
                    assert!(
                        small.contains(all[w]),
                        "{} seen by {} was dropped",
                        all[w],
                        all[r]
                    );
                }
            }
        }
        assert!(check(&small, DEFAULT_STEPS_PER_KEY).is_illegal());
    }

    #[test]
    fn what_stays_of_a_linearizable_history_stays_linearizable() {
        // The soundness of shrinking, tried on real linearizable histories: drop reads at
        // random, and writes no remaining read may have observed; what stays must still be
        // linearizable (else shrinking could report a violation that never happened).
        let mut rng = crate::tests::Rng(11);
        for seed in 0..40 {
            let h = crate::tests::random_history(seed, 5, 24, 1);
            let mut ops: Vec<&Operation> = h
                .iter()
                .filter(|o| o.ret.is_some() || o.op != KvOp::Get)
                .collect();
            ops.sort_by_key(|o| (o.call, o.ret));
            let observers = Observers::of(&ops);
            let mut kept: Vec<bool> = ops
                .iter()
                .map(|o| o.op != KvOp::Get || rng.below(3) != 0)
                .collect();
            for (w, readers) in observers.of_write.iter().enumerate() {
                let observed = readers.iter().any(|&r| kept[r]);
                if ops[w].op != KvOp::Get && !observed && rng.below(2) == 0 {
                    kept[w] = false;
                }
            }
            let stays: Vec<Operation> = (0..ops.len())
                .filter(|&i| kept[i])
                .map(|i| ops[i].clone())
                .collect();
            let result = check(&stays, DEFAULT_STEPS_PER_KEY);
            assert!(result.is_ok(), "seed {seed}: {result}");
        }
    }

    #[test]
    fn a_delete_long_overwritten_explains_no_read() {
        let h = [
            op(1, KvOp::Delete, None, 0, 1),
            op(1, put("a;"), None, 2, 3),
            op(1, KvOp::Delete, None, 4, 5),
            op(1, KvOp::Append("b;".into()), None, 6, 7),
            op(2, KvOp::Get, Some("b;"), 8, 9),
            op(2, KvOp::Get, None, 10, 11),
        ];
        let all: Vec<&Operation> = h.iter().collect();
        let observers = Observers::of(&all);
        // The first delete lies wholly before the put, so it cannot be the last one before
        // the append that starts "b;", nor before the read of nothing (the append is between).
        assert!(observers.of_write[0].is_empty(), "{:?}", observers.of_write);
        assert_eq!(observers.of_write[2], vec![4]);
    }
}
