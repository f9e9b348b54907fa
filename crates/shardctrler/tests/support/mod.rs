//! Checks shared by the integration tests, written independently of the crate's own code so
//! that they can catch its mistakes.

#![allow(dead_code)]

use std::collections::BTreeMap;

use quorumkv_shardctrler::Config;

/// The 6.824 `check`: the groups are exactly `gids`, every shard is owned by one of them (or
/// all are 0 when there are none), and shard counts differ by at most one.
pub fn check_balanced(c: &Config, gids: &[u64]) {
    let got: Vec<u64> = c.groups.keys().copied().collect();
    let mut want = gids.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "groups of config {}", c.num);
    check_owners(c);
    let counts = counts(c);
    if let (Some(min), Some(max)) = (counts.values().min(), counts.values().max()) {
        assert!(max - min <= 1, "config {} unbalanced: {counts:?}", c.num);
    }
}

/// Every shard is owned by a group of `c`, or all are 0 when `c` has no groups.
pub fn check_owners(c: &Config) {
    for (shard, owner) in c.shards.iter().enumerate() {
        if c.groups.is_empty() {
            assert_eq!(
                *owner, 0,
                "config {}: shard {shard} owned with no groups",
                c.num
            );
        } else {
            assert!(
                c.groups.contains_key(owner),
                "config {}: shard {shard} owned by absent group {owner}",
                c.num
            );
        }
    }
}

/// Shards per group of `c`, including groups with none.
pub fn counts(c: &Config) -> BTreeMap<u64, usize> {
    let mut m: BTreeMap<u64, usize> = c.groups.keys().map(|g| (*g, 0)).collect();
    for owner in &c.shards {
        if let Some(n) = m.get_mut(owner) {
            *n += 1;
        }
    }
    m
}

/// Shards whose owner differs between `a` and `b`.
pub fn moved(a: &Config, b: &Config) -> usize {
    a.shards
        .iter()
        .zip(&b.shards)
        .filter(|(x, y)| x != y)
        .count()
}

/// The fewest shard moves any balanced assignment over `after.groups` needs, starting from
/// `before`: brute force over which groups get the larger share (so keep groups few).
pub fn min_moves(before: &Config, after: &Config) -> usize {
    let n = before.shards.len();
    let gids: Vec<u64> = after.groups.keys().copied().collect();
    if gids.is_empty() {
        return before.shards.iter().filter(|o| **o != 0).count();
    }
    assert!(gids.len() <= 16, "brute force over {} groups", gids.len());
    let held: Vec<usize> = gids
        .iter()
        .map(|g| before.shards.iter().filter(|o| *o == g).count())
        .collect();
    let (base, extra) = (n / gids.len(), n % gids.len());
    let mut best_kept = 0;
    for mask in 0u32..(1 << gids.len()) {
        if mask.count_ones() as usize != extra {
            continue;
        }
        let kept: usize = (0..gids.len())
            .map(|i| held[i].min(base + usize::from(mask & (1 << i) != 0)))
            .sum();
        best_kept = best_kept.max(kept);
    }
    n - best_kept
}
