//! One numbered configuration: which replica group owns each shard.

use std::collections::{BTreeMap, BTreeSet};

use crate::addr::canonical_addr;

/// The owner recorded for a shard that no group serves. Never a valid group id.
pub const UNASSIGNED: u64 = 0;

/// Configuration number `num`: the owner of every shard and the servers of every group.
///
/// Invariants, checked for every configuration the controller creates:
/// - `shards.len()` is the controller's fixed shard count;
/// - `groups` never contains [`UNASSIGNED`], and every group lists at least one server;
/// - no server address (compared canonically) belongs to two groups, or twice to one group;
/// - if `groups` is empty every shard is [`UNASSIGNED`], otherwise every shard is owned by a
///   group in `groups`. Hence a shard is served by at most one group per configuration.
///
/// `BTreeMap` rather than `HashMap` so that iteration, and with it every decision made from a
/// configuration, is identical on every replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The configuration number; equal to its index in the controller's history.
    pub num: u64,
    /// `shards[s]` is the gid owning shard `s`, or [`UNASSIGNED`].
    pub shards: Vec<u64>,
    /// gid → the `host:port` addresses of that group's replicas, in the order they joined with.
    pub groups: BTreeMap<u64, Vec<String>>,
}

impl Config {
    /// Configuration 0: no groups, every shard unassigned.
    pub fn initial(num_shards: usize) -> Self {
        Config {
            num: 0,
            shards: vec![UNASSIGNED; num_shards],
            groups: BTreeMap::new(),
        }
    }

    /// The number of shards, fixed for the controller's lifetime.
    pub fn num_shards(&self) -> usize {
        self.shards.len()
    }

    /// The gid owning `shard` ([`UNASSIGNED`] if none), or `None` if `shard` is out of range.
    pub fn owner(&self, shard: u64) -> Option<u64> {
        usize::try_from(shard)
            .ok()
            .and_then(|s| self.shards.get(s).copied())
    }

    /// The shards `gid` owns, ascending.
    pub fn shards_of(&self, gid: u64) -> Vec<u64> {
        (0u64..)
            .zip(&self.shards)
            .filter(|(_, owner)| **owner == gid)
            .map(|(shard, _)| shard)
            .collect()
    }

    /// Shard count per group, including groups that own none.
    pub fn shard_counts(&self) -> BTreeMap<u64, usize> {
        let mut counts: BTreeMap<u64, usize> = self.groups.keys().map(|&g| (g, 0)).collect();
        for owner in &self.shards {
            if let Some(c) = counts.get_mut(owner) {
                *c += 1;
            }
        }
        counts
    }

    /// The gids of the groups in this configuration.
    pub(crate) fn gids(&self) -> BTreeSet<u64> {
        self.groups.keys().copied().collect()
    }

    /// Names the first broken invariant (see the type's doc), if any.
    pub(crate) fn check_invariants(&self, num_shards: usize) -> Result<(), String> {
        let num = self.num;
        if self.shards.len() != num_shards {
            return Err(format!(
                "config {num} has {} shards, expected {num_shards}",
                self.shards.len()
            ));
        }
        if self.groups.contains_key(&UNASSIGNED) {
            return Err(format!("config {num} has a group with the reserved gid 0"));
        }
        let mut seen = BTreeMap::new();
        for (gid, servers) in &self.groups {
            if servers.is_empty() {
                return Err(format!("config {num}: group {gid} has no servers"));
            }
            for server in servers {
                let key = canonical_addr(server)
                    .map_err(|why| format!("config {num}: group {gid}: {server:?} {why}"))?;
                match seen.insert(key, gid) {
                    None => {}
                    Some(other) if other == gid => {
                        return Err(format!(
                            "config {num}: group {gid} lists server {server:?} twice"
                        ));
                    }
                    Some(other) => {
                        return Err(format!(
                            "config {num}: server {server:?} is in groups {other} and {gid}"
                        ));
                    }
                }
            }
        }
        for (shard, owner) in self.shards.iter().enumerate() {
            let ok = if self.groups.is_empty() {
                *owner == UNASSIGNED
            } else {
                self.groups.contains_key(owner)
            };
            if !ok {
                return Err(format!(
                    "config {num}: shard {shard} is owned by {owner}, which is not a valid owner"
                ));
            }
        }
        Ok(())
    }
}
