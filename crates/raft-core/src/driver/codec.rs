//! The context the driver attaches to the entries it proposes: the proposal's id (so the
//! proposer is answered by id, never by log position) and, for a membership change, the
//! addresses of the members it adds (so every member learns them when the entry applies).
//! A prost message (`EntryContext` in `proto/storage.proto`) after a version byte, since it
//! lives in the log. Contexts written by format 1 (an 8-byte id, then id / length / address
//! triples; their first byte is below 0x80) are still read, for logs upgraded in place.

use prost::Message as _;
use quorumkv_proto::storage as pb;

use crate::storage::snapshot::{members_from_pb, members_to_pb};

use std::collections::BTreeMap;

/// The first byte of a context in this format.
const VERSION: u8 = 0xC1;

/// The context of a proposal with `id` that adds `added` members.
pub(crate) fn encode(id: u64, added: &[(u64, String)]) -> Vec<u8> {
    let added: BTreeMap<u64, String> = added.iter().cloned().collect();
    let mut out = vec![VERSION];
    pb::EntryContext {
        proposal_id: id,
        added: members_to_pb(&added),
    }
    .encode(&mut out)
    .expect("a Vec grows");
    out
}

fn decode(ctx: &[u8]) -> Option<(u64, BTreeMap<u64, String>)> {
    match ctx.split_first() {
        Some((&VERSION, rest)) => pb::EntryContext::decode(rest)
            .ok()
            .map(|c| (c.proposal_id, members_from_pb(c.added))),
        Some((first, _)) if *first < 0x80 => decode_format_1(ctx),
        _ => None,
    }
}

fn decode_format_1(ctx: &[u8]) -> Option<(u64, BTreeMap<u64, String>)> {
    let id = u64::from_be_bytes(ctx.get(..8)?.try_into().ok()?);
    let mut out = BTreeMap::new();
    let mut b = &ctx[8..];
    while b.len() >= 12 {
        let mid = u64::from_be_bytes(b[..8].try_into().ok()?);
        let len = u32::from_be_bytes(b[8..12].try_into().ok()?) as usize;
        let addr = b.get(12..12 + len)?;
        out.insert(mid, String::from_utf8_lossy(addr).into_owned());
        b = &b[12 + len..];
    }
    Some((id, out))
}

/// The proposal id in an entry's context; `None` for entries no member proposed through
/// [`encode`] (a new leader's empty entry, raft-rs's leave-joint entry, a refused change).
pub(crate) fn proposal_id(ctx: &[u8]) -> Option<u64> {
    decode(ctx).map(|(id, _)| id).filter(|id| *id != 0)
}

/// The members a membership change adds, with their addresses (empty when the context does
/// not decode: the change is applied all the same, only its addresses are unknown).
pub(crate) fn added_members(ctx: &[u8]) -> BTreeMap<u64, String> {
    decode(ctx).map(|(_, m)| m).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_round_trip_and_foreign_ones_have_no_id() {
        let ctx = encode(42, &[(4, "d:4".into()), (5, "e:5".into())]);
        assert_eq!(proposal_id(&ctx), Some(42));
        let added = added_members(&ctx);
        assert_eq!(added.get(&4).map(String::as_str), Some("d:4"));
        assert_eq!(added.len(), 2);
        assert_eq!(proposal_id(&[]), None);
        assert_eq!(proposal_id(&[0xff, 0xff]), None, "garbage is no proposal");
        // Format 1: the id, then (id, length, address).
        let mut old = 77u64.to_be_bytes().to_vec();
        old.extend_from_slice(&6u64.to_be_bytes());
        old.extend_from_slice(&3u32.to_be_bytes());
        old.extend_from_slice(b"f:6");
        assert_eq!(proposal_id(&old), Some(77));
        assert_eq!(added_members(&old).get(&6).map(String::as_str), Some("f:6"));
    }
}
