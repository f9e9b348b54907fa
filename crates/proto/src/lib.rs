//! Generated gRPC types and services of QuorumKV. The sources are the `.proto` files in the
//! workspace's `proto/` directory; every message and field is documented there.
//!
//! This crate holds no logic: it is the bottom of the dependency graph, and every other crate
//! may depend on it.

/// Transport between members of one Raft group (`proto/raft.proto`).
pub mod raft {
    tonic::include_proto!("quorumkv.raft");
}

/// The raft core's durable formats: log metadata, snapshot files, entry contexts
/// (`proto/storage.proto`).
pub mod storage {
    tonic::include_proto!("quorumkv.storage");
}

/// The shard controller's API, Raft log commands and snapshot encoding
/// (`proto/shardctrler.proto`).
pub mod shardctrler {
    tonic::include_proto!("quorumkv.shardctrler");
}

/// ShardKV replica groups: client API, shard migration, replicated commands
/// (`proto/shardkv.proto`).
pub mod shardkv {
    tonic::include_proto!("quorumkv.shardkv");
}

/// A client-side subset of etcd v3's KV API, for side-by-side benchmarks
/// (`proto/etcd.proto`).
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

/// A member's admin view (readiness, Raft state, metrics) over mutual TLS, for the dashboard
/// (`proto/admin.proto`).
pub mod admin {
    tonic::include_proto!("quorumkv.admin");
}

/// The file of `shardkv-client backup` / `restore`: versioned, checksummed records
/// (`proto/backup.proto`).
pub mod backup {
    tonic::include_proto!("quorumkv.backup");
}
