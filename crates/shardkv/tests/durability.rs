//! Durability, shown with a syscall trace: a member's storage is run under `strace` while it
//! acknowledges writes (small ones and 1 MiB values, whose sled pages land in blob files) and
//! compacts its log several times, and the trace is checked against the rule of
//! `quorumkv_raft_core::storage` (see `quorumkv_testkit::syscalls`): every log and snapshot
//! file an acknowledgement depends on is fsynced before it, new directory entries too, and
//! every shard store file written before a store sync is fsynced before the log is compacted
//! behind it.
//!
//! The trace covers whatever files the member writes (raft-engine's log files, snapshot
//! files, sled's main file, its blob files when a page outgrows a quarter of a segment, its
//! own snapshot files). The test runs itself again as the traced child (`QKV_DURABILITY_CHILD` names the data
//! directory). Needs `strace` (installed by `scripts/test.sh`); without it the test fails
//! under CI and is skipped with a message elsewhere.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use quorumkv_proto::shardkv as pb;
use quorumkv_raft_core::{mailbox, NodeConfig, RaftNode, StateMachine, Transport};
use quorumkv_shardkv::ShardKvState;
use quorumkv_testkit::syscalls::{check, run_test_under_strace, Rule};
use quorumkv_testkit::{KvCommand, KvStateMachine};

const CHILD: &str = "QKV_DURABILITY_CHILD";
/// What the raft driver logs (at trace level, on its own thread) as it acknowledges a write.
const ACKNOWLEDGED: &str = "proposal acknowledged";
const NAME: &str = "every_file_an_acknowledgement_depends_on_is_synced_before_it";

/// A one-member group has no peers to send to.
struct Alone;

impl Transport for Alone {
    fn send(&self, _: Vec<raft::eraftpb::Message>) {}
    fn set_members(&self, _: &BTreeMap<u64, String>) {}
}

async fn single_member<S: StateMachine>(dir: &Path, sm: S, log_bytes: u64) -> RaftNode<S> {
    let mut cfg = NodeConfig::new(1, 1, dir);
    cfg.members = vec![(1, "localhost:1".into())];
    cfg.tick_interval = Duration::from_millis(10);
    cfg.snapshot_log_bytes = log_bytes;
    cfg.keep_entries_after_snapshot = 4;
    let (mb, inbox) = mailbox(1024);
    let node = RaftNode::start(cfg, sm, Arc::new(Alone), mb, inbox).unwrap();
    node.wait_for(Duration::from_secs(10), |s| s.is_leader())
        .await
        .unwrap();
    node
}

fn write(key: String, value: Vec<u8>, seq: u64) -> Vec<u8> {
    pb::Command {
        cmd: Some(pb::command::Cmd::Write(pb::ClientWrite {
            key: key.into(),
            value: value.into(),
            op: pb::WriteOp::Put as i32,
            id: Some(pb::RequestId { client_id: 7, seq }),
            now_ms: 1,
        })),
    }
    .encode_to_vec()
}

/// The traced child: a replica group member (its own store) and an in-memory state machine
/// (snapshot files), each alone in its group, acknowledging writes and compacting.
async fn child(root: &Path) {
    let kv_dir = root.join("group");
    let sm = ShardKvState::open(1, &kv_dir.join("kv")).unwrap();
    let node = single_member(&kv_dir, sm, 2 << 20).await;
    let config = pb::Config {
        num: 1,
        shards: vec![1; 16],
        groups: vec![pb::Group {
            gid: 1,
            servers: vec!["localhost:1".into()],
        }],
    };
    let next = pb::Command {
        cmd: Some(pb::command::Cmd::NextConfig(config)),
    };
    node.propose(next.encode_to_vec()).await.unwrap();
    let mut seq = 0;
    // Leaves of several MiB: sled writes a page larger than a quarter of a segment to a blob
    // file outside its main file (not seen in this run with sled 0.34's consolidation
    // thresholds, but checked like every other store file when it happens).
    for i in 0..48u32 {
        seq += 1;
        let value = vec![b'a' + (i % 26) as u8; 1 << 20];
        node.propose(write(format!("big-{}", i % 6), value, seq))
            .await
            .unwrap();
        for j in 0..5u32 {
            seq += 1;
            node.propose(write(format!("small-{i}-{j}"), vec![b'v'; 100], seq))
                .await
                .unwrap();
        }
    }
    node.shutdown().await;

    let mem_dir = root.join("memory");
    let node = single_member(&mem_dir, KvStateMachine::default(), 16 << 10).await;
    for i in 0..200u32 {
        let cmd = KvCommand::Put {
            key: format!("k{}", i % 50),
            value: "x".repeat(1000),
        };
        node.propose(cmd.encode()).await.unwrap();
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_an_acknowledgement_depends_on_is_synced_before_it() {
    if let Some(root) = std::env::var_os(CHILD) {
        quorumkv_testkit::init_tracing();
        return child(Path::new(&root)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let exe = std::env::current_exe().unwrap();
    let trace = run_test_under_strace(
        &exe,
        NAME,
        &[
            (CHILD, root.to_str().unwrap()),
            (
                "RUST_LOG",
                "quorumkv_raft_core=info,quorumkv_raft_core::driver=trace",
            ),
        ],
        &dir.path().join("trace.txt"),
    );
    let Some(trace) = trace else {
        assert!(
            std::env::var("CI").is_err(),
            "strace is not installed (scripts/test.sh installs it)"
        );
        eprintln!("SKIPPED: strace is not installed");
        return;
    };
    // Kept for a look when the check fails.
    let kept = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("durability-trace.txt");
    let _ = std::fs::write(&kept, &trace);
    let group = root.join("group");
    let r = check(
        &trace,
        &Rule {
            root: &group,
            ack_marker: ACKNOWLEDGED,
            log_dirs: &["raft-log", "snapshots"],
            store_dirs: &["kv"],
        },
    );
    assert!(
        r.violations.is_empty(),
        "{:#?} (trace: {})",
        r.violations,
        kept.display()
    );
    // Every write of both members (and the group's configuration) was acknowledged.
    assert_eq!(r.acks, 1 + 48 * 6 + 200, "{r:?}");
    assert!(r.store_syncs >= 3 && r.compactions >= 3, "{r:?}");
    let wrote = |part: &str| r.files.iter().any(|f| f.to_string_lossy().contains(part));
    assert!(wrote("/raft-log/") && wrote("/kv/db"), "{:?}", r.files);

    let memory = root.join("memory");
    let r = check(
        &trace,
        &Rule {
            root: &memory,
            ack_marker: ACKNOWLEDGED,
            log_dirs: &["raft-log", "snapshots"],
            store_dirs: &[],
        },
    );
    assert!(r.violations.is_empty(), "{:#?}", r.violations);
    assert!(r.compactions >= 3, "{r:?}");
    assert!(
        wrote_in(&r.files, "/snapshots/"),
        "no snapshot file: {:?}",
        r.files
    );
    assert!(
        r.snapshot_references >= 3,
        "no base named a snapshot file: {r:?}"
    );
}

fn wrote_in(files: &[std::path::PathBuf], part: &str) -> bool {
    files.iter().any(|f| f.to_string_lossy().contains(part))
}
