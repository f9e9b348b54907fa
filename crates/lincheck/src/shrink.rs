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
//! dropped only when no read that stays could have observed it ([`may_observe`]): a `Put`
//! whose value starts the read's value, an `Append` whose bytes are in it, a `Delete` invoked
//! before the read returned when the read saw no key or a value that starts with an appended
//! piece (the value was then built after a delete or from nothing). In any linearization of
//! the whole history, what a read returned is decided by the last `Put` or `Delete` before it
//! and the `Append`s after that one; all of them were invoked before the read returned and
//! match its value as above, so all of them stay. The linearization restricted to what stays
//! is therefore a linearization of what stays. Contrapositive: when what stays has none, the
//! whole history has none either. The result is a proof that can be read in a few lines.

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
    let appended: Vec<&[u8]> = ops
        .iter()
        .filter_map(|o| match &o.op {
            KvOp::Append(b) => Some(b.as_slice()),
            _ => None,
        })
        .collect();
    let shrinker = Shrinker {
        ops: &ops,
        appended: &appended,
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
    /// The bytes of every `Append` (for [`may_observe`] of deletes).
    appended: &'a [&'a [u8]],
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
    /// left could have observed; `None` if that removes nothing.
    fn without(&self, kept: &[bool], group: &[usize]) -> Option<Vec<bool>> {
        let mut next = kept.to_vec();
        for &i in group {
            if self.ops[i].op == KvOp::Get {
                next[i] = false;
            }
        }
        for &i in group {
            let w = self.ops[i];
            if w.op != KvOp::Get
                && !(0..self.ops.len())
                    .any(|r| next[r] && may_observe(w, self.ops[r], self.appended))
            {
                next[i] = false;
            }
        }
        (next != kept).then_some(next)
    }
}

/// Whether the completed read `r` may have observed the write `w` (see the module docs):
/// `w` was invoked before `r` returned and is a possible source of `r`'s value.
fn may_observe(w: &Operation, r: &Operation, appended: &[&[u8]]) -> bool {
    let Some(ret) = r.ret else {
        return false;
    };
    if r.op != KvOp::Get || w.call > ret {
        return false;
    }
    match &w.op {
        KvOp::Delete => r
            .output
            .as_ref()
            .is_none_or(|v| appended.iter().any(|b| v.starts_with(b))),
        op => crate::value_may_show(op, &r.output),
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
        let appended: Vec<&[u8]> = vec![b"x;", b"y;", b"z;"];
        for r in small.iter().filter(|o| o.op == KvOp::Get) {
            for w in h.iter().filter(|o| o.op != KvOp::Get) {
                if may_observe(w, r, &appended) {
                    assert!(small.contains(w), "{w} seen by {r} was dropped");
                }
            }
        }
        assert!(check(&small, DEFAULT_STEPS_PER_KEY).is_illegal());
    }
}
