//! The leader's background work: follow the controller's configurations one at a time, pull
//! incoming shards from their previous owners, and tell previous owners to delete what was
//! handed off.
//!
//! Everything decided here goes through the group's Raft log as a command and is re-checked
//! when applied, so a stale leader or a duplicate pull changes nothing: this task only
//! proposes; the state machine decides.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use quorumkv_proto::shardkv as pb;
use quorumkv_raft_core::RaftNode;
use quorumkv_shardctrler_client::CtrlerClient;
use quorumkv_shardkv_client::GroupCaller;
use tokio::sync::watch;

use crate::metrics::KvMetrics;
use crate::service::{propose, MAX_CHUNK_BYTES};
use crate::state::{
    config_to_pb, install_command, pull_request, CollectTask, PullTask, ShardKvState,
};

/// How often the leader polls the controller and drives migrations.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Bound of one round of migration calls.
const ROUND_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs until `shutdown` becomes true.
pub async fn run(
    node: Arc<RaftNode<ShardKvState>>,
    ctrler: Arc<CtrlerClient>,
    groups: Arc<GroupCaller>,
    metrics: Arc<KvMetrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    let mut warned = None;
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        if !node.status().is_leader() {
            continue;
        }
        let view = node.read_local(|sm| sm.migration_view());
        if view.settled {
            next_config(&node, &ctrler, view.config_num, &mut warned).await;
            continue;
        }
        let deadline = Instant::now() + ROUND_TIMEOUT;
        let pulls = view
            .pulling
            .into_iter()
            .map(|task| pull(&node, &groups, &metrics, view.config_num, task, deadline));
        let gcs = view
            .collecting
            .into_iter()
            .map(|task| collect(&node, &groups, &metrics, view.config_num, task, deadline));
        // Shards move concurrently; each pull is sequential in key order.
        tokio::join!(join_all(pulls), join_all(gcs));
    }
}

/// Proposes the configuration after `current`, if the controller has it.
async fn next_config(
    node: &RaftNode<ShardKvState>,
    ctrler: &CtrlerClient,
    current: u64,
    warned: &mut Option<u64>,
) {
    let next = match ctrler.query(Some(current + 1)).await {
        Ok(c) if c.num == current + 1 => c,
        Ok(_) => return,
        Err(e) => {
            tracing::debug!(error = %e, "controller query failed");
            return;
        }
    };
    if let Some(why) = node.read_local(|sm| sm.orphans(&next)) {
        // Said once per configuration; the poll sees it every round.
        if *warned != Some(next.num) {
            tracing::warn!("{why}");
            *warned = Some(next.num);
        }
        return;
    }
    tracing::info!(config = next.num, "moving to the next configuration");
    if let Err(e) = propose(node, pb::command::Cmd::NextConfig(config_to_pb(&next))).await {
        tracing::debug!(error = %e, "next configuration not applied");
    }
}

/// Pulls the rest of a shard from its previous owner, chunk by chunk (its keys, then its
/// sessions), installing each through the log.
async fn pull(
    node: &RaftNode<ShardKvState>,
    groups: &GroupCaller,
    metrics: &KvMetrics,
    config_num: u64,
    task: PullTask,
    deadline: Instant,
) {
    let PullTask {
        shard,
        from,
        servers,
        mut cursor,
    } = task;
    while Instant::now() < deadline {
        let req = pull_request(config_num, shard, &cursor, MAX_CHUNK_BYTES as u64);
        let reply = match groups
            .call(from, &servers, deadline, |mut c| {
                let req = req.clone();
                async move { c.pull_shard(req).await }
            })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(shard, from, error = %e, "pull failed; will retry");
                KvMetrics::add(&metrics.pull_failures, 1);
                return;
            }
        };
        let keys = reply.entries.len() as u64;
        let (chunk, next, complete) = install_command(config_num, shard, &cursor, reply);
        if let Err(e) = propose(node, pb::command::Cmd::InsertChunk(chunk)).await {
            tracing::debug!(shard, error = %e, "chunk not installed; will retry");
            return;
        }
        KvMetrics::add(&metrics.chunks_installed, 1);
        KvMetrics::add(&metrics.keys_installed, keys);
        if complete {
            KvMetrics::add(&metrics.shards_installed, 1);
            tracing::info!(shard, from, config = config_num, "shard installed");
            return;
        }
        cursor = next;
    }
}

/// Tells the previous owner to delete its copy of a shard, then marks the shard fully ours.
async fn collect(
    node: &RaftNode<ShardKvState>,
    groups: &GroupCaller,
    metrics: &KvMetrics,
    config_num: u64,
    task: CollectTask,
    deadline: Instant,
) {
    let CollectTask {
        shard,
        from,
        servers,
    } = task;
    let req = pb::DeleteShardRequest { config_num, shard };
    if let Err(e) = groups
        .call(from, &servers, deadline, |mut c| async move {
            c.delete_shard(req).await
        })
        .await
    {
        tracing::debug!(shard, from, error = %e, "delete at the previous owner failed; will retry");
        return;
    }
    let done = pb::ShardDone { config_num, shard };
    match propose(node, pb::command::Cmd::ShardDone(done)).await {
        Ok(()) => KvMetrics::add(&metrics.shards_collected, 1),
        Err(e) => tracing::debug!(shard, error = %e, "shard not marked done; will retry"),
    }
}
