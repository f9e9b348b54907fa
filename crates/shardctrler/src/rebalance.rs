//! Minimal-move rebalancing of shards over the live groups.
//!
//! # What "balanced" means
//!
//! With `N` shards and `k` live groups, every group ends up with `⌊N/k⌋` or `⌈N/k⌉` shards,
//! so the spread is at most one. When `k > N` that reads "0 or 1": exactly `N` groups receive one
//! shard and the rest receive none. The multiset of per-group targets is therefore forced —
//! `N mod k` groups get `⌊N/k⌋ + 1`, the others `⌊N/k⌋` — and the only freedom is *which*
//! groups get the larger target.
//!
//! # Why the result moves the fewest shards possible
//!
//! Let `c_g` be the shards group `g` holds before and `t_g` its target. A shard changes owner
//! unless its group survives and keeps it, and group `g` can keep at most `min(c_g, t_g)`.
//! So every balanced outcome moves at least `N − Σ_g min(c_g, t_g)` shards, which includes every
//! shard of a departed group or [`UNASSIGNED`].
//!
//! The bound depends on how targets are paired with groups. `min` is supermodular: for
//! `c_a ≥ c_b` and `t_a < t_b`, `min(c_a, t_b) + min(c_b, t_a) ≥ min(c_a, t_a) + min(c_b, t_b)`,
//! so swapping targets towards "more shards held, larger target" never lowers the sum. Ranking
//! groups by shards held (descending) and handing out the larger targets in rank order thus
//! maximises `Σ min(c_g, t_g)` and minimises the bound over all balanced outcomes.
//!
//! The assignment then meets that bound exactly: each group keeps `min(c_g, t_g)` of its
//! shards, and only the rest — orphans and each group's excess — are handed out to groups below
//! target. A freed shard never returns to its old owner (that owner is gone or already at its
//! target), so moves = freed shards = `N − Σ min(c_g, t_g)`.
//!
//! # Determinism
//!
//! Ties in the ranking are broken by ascending gid; a group over target keeps its
//! lowest-numbered shards; freed shards go out in ascending shard order to groups in ascending
//! gid order. Only ordered collections are iterated. So with more groups than shards, the groups
//! left without a shard are those holding none before, highest gids first.
//!
//! Cost: `O(N + k log k)` time, `O(N + k)` space.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::UNASSIGNED;

/// The owner of each shard after rebalancing `shards` over exactly the groups `groups`.
///
/// `shards[s]` is the current owner of shard `s`; owners absent from `groups` (departed groups,
/// [`UNASSIGNED`]) count as unowned. A gid 0 in `groups` is ignored. With no groups every shard
/// becomes [`UNASSIGNED`]. The result is balanced and moves the minimum number of shards; see
/// the module documentation for why.
pub fn rebalance(shards: &[u64], groups: &BTreeSet<u64>) -> Vec<u64> {
    let targets = targets(shards, groups);
    if targets.is_empty() {
        return vec![UNASSIGNED; shards.len()];
    }
    let mut kept: BTreeMap<u64, usize> = BTreeMap::new();
    let mut freed = Vec::new();
    for (shard, owner) in shards.iter().enumerate() {
        let target = targets.get(owner).copied().unwrap_or(0);
        let held = kept.entry(*owner).or_insert(0);
        if *held < target {
            *held += 1;
        } else {
            freed.push(shard);
        }
    }
    let mut next = shards.to_vec();
    let mut freed = freed.into_iter();
    for (gid, target) in &targets {
        let held = kept.get(gid).copied().unwrap_or(0);
        for _ in held..*target {
            let shard = freed
                .next()
                .expect("targets sum to the shard count, so every deficit has a freed shard");
            next[shard] = *gid;
        }
    }
    debug_assert!(freed.next().is_none(), "every freed shard finds a group");
    next
}

/// The number of shards each live group holds after [`rebalance`], keyed by gid.
///
/// Groups are ranked by shards currently held (descending, ties by ascending gid); the first
/// `N mod k` get `⌊N/k⌋ + 1`, the others `⌊N/k⌋`.
pub(crate) fn targets(shards: &[u64], groups: &BTreeSet<u64>) -> BTreeMap<u64, usize> {
    let mut held: BTreeMap<u64, usize> = groups
        .iter()
        .filter(|gid| **gid != UNASSIGNED)
        .map(|&gid| (gid, 0))
        .collect();
    if held.is_empty() {
        return held;
    }
    for owner in shards {
        if let Some(count) = held.get_mut(owner) {
            *count += 1;
        }
    }
    let mut ranked: Vec<(u64, usize)> = held.into_iter().collect();
    ranked.sort_by(|(ga, ca), (gb, cb)| cb.cmp(ca).then(ga.cmp(gb)));
    let (base, extra) = (shards.len() / ranked.len(), shards.len() % ranked.len());
    ranked
        .into_iter()
        .enumerate()
        .map(|(rank, (gid, _))| (gid, base + usize::from(rank < extra)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(gids: &[u64]) -> BTreeSet<u64> {
        gids.iter().copied().collect()
    }

    fn moved(a: &[u64], b: &[u64]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn no_groups_unassigns_everything() {
        assert_eq!(rebalance(&[1, 2, 1], &set(&[])), vec![0, 0, 0]);
        assert_eq!(rebalance(&[1, 2, 1], &set(&[0])), vec![0, 0, 0]);
    }

    #[test]
    fn first_group_takes_all_unassigned_shards() {
        assert_eq!(rebalance(&[0; 4], &set(&[7])), vec![7; 4]);
    }

    #[test]
    fn join_moves_only_the_new_groups_share() {
        let before = rebalance(&[0; 10], &set(&[1, 2]));
        assert_eq!(before, vec![1, 1, 1, 1, 1, 2, 2, 2, 2, 2]);
        let after = rebalance(&before, &set(&[1, 2, 3]));
        // Group 1 ranks first (tie broken by gid) and keeps 4; group 2 keeps 3; 3 gets 3.
        assert_eq!(after, vec![1, 1, 1, 1, 3, 2, 2, 2, 3, 3]);
        assert_eq!(moved(&before, &after), 3);
    }

    #[test]
    fn leave_moves_only_the_departed_groups_shards() {
        let before = vec![1, 1, 1, 1, 3, 2, 2, 2, 3, 3];
        let after = rebalance(&before, &set(&[1, 2]));
        assert_eq!(after, vec![1, 1, 1, 1, 1, 2, 2, 2, 2, 2]);
        assert_eq!(moved(&before, &after), 3);
    }

    #[test]
    fn holders_win_the_larger_targets() {
        // After a Move, group 2 holds 3 of 4; re-balancing over {1, 2} must keep two of them
        // there and move just one shard, not re-split the shards by gid.
        let before = vec![1, 2, 2, 2];
        let after = rebalance(&before, &set(&[1, 2]));
        assert_eq!(after, vec![1, 2, 2, 1]);
        assert_eq!(moved(&before, &after), 1);
    }

    #[test]
    fn more_groups_than_shards_leaves_non_holders_empty() {
        let before = vec![5, 9, 9];
        let after = rebalance(&before, &set(&[1, 2, 5, 9]));
        // 9 keeps one, 5 keeps one; of the empty groups 1 ranks before 2 and receives.
        assert_eq!(after, vec![5, 9, 1]);
        let t = targets(&before, &set(&[1, 2, 5, 9]));
        assert_eq!(t, BTreeMap::from([(1, 1), (2, 0), (5, 1), (9, 1)]));
    }

    #[test]
    fn already_balanced_is_a_fixed_point() {
        let before = vec![3, 1, 2, 3, 1, 2, 3];
        assert_eq!(rebalance(&before, &set(&[1, 2, 3])), before);
    }
}
