//! Which shard a key belongs to. Clients and servers must agree forever, so the function is
//! fixed here: FNV-1a (64-bit) over every byte of the key, modulo the number of shards. It is
//! stable across versions and platforms and spreads keys with common prefixes.

/// The shard of `key` among `num_shards` shards (`num_shards` > 0).
pub fn shard_of(key: &[u8], num_shards: usize) -> usize {
    debug_assert!(num_shards > 0);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % num_shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_stable_and_uses_the_whole_key() {
        // Pinned values: changing the function would strand existing data.
        assert_eq!(shard_of(b"", 64), (0xcbf2_9ce4_8422_2325u64 % 64) as usize);
        assert_eq!(
            shard_of(b"a", 1024),
            0xaf63_dc4c_8601_ec8cu64 as usize % 1024
        );
        let shards: std::collections::BTreeSet<usize> = (0..64)
            .map(|i| shard_of(format!("user:{i}").as_bytes(), 64))
            .collect();
        assert!(
            shards.len() > 30,
            "keys with a common prefix spread: {shards:?}"
        );
    }
}
