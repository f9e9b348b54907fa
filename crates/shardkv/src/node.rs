//! One shardkv member, wired: a Raft node hosting [`ShardKvState`], one mutual-TLS gRPC
//! server serving the Raft transport, `RaftAdmin` (membership) and `ShardKv` on a single
//! listener, the migration
//! task (active only while this member leads), and optionally the plain-HTTP admin endpoint
//! (health and metrics, see `quorumkv-admin`).
//!
//! # Graceful shutdown
//! [`KvMember::shutdown`] (the SIGTERM path) loses no acknowledged write and costs the group
//! no election timeout, and is bounded by [`SHUTDOWN_LIMIT`]:
//! 1. close the request gate: new requests get `ShuttingDown` at once (clients go to another
//!    member) and readiness turns 503; stop the migration task from starting another round;
//! 2. if this member leads, hand leadership to the most caught-up voter
//!    ([`RaftNode::hand_off_leadership`]): the group has a new leader in about one round trip,
//!    and entries this leader appended are committed by the new one;
//! 3. let in-flight requests finish or fail ([`IN_FLIGHT_TIMEOUT`]);
//! 4. stop the migration task, then the Raft node (storage is durable after every Ready; the
//!    peers' streams into this member end with it, which is what lets the server drain), then
//!    the gRPC server (bounded drain), then the admin endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorumkv_admin::{
    shutdown, AdminServer, AdminSource, AdminViewService, ClusterAccess, RequestGate,
};
use quorumkv_common::TlsMaterial;
use quorumkv_raft_core::{
    GrpcTransport, NodeConfig, RaftAdminService, RaftError, RaftNode, Transport,
};
use quorumkv_shardctrler_client::CtrlerClient;
use quorumkv_shardkv_client::GroupCaller;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::admin::KvAdmin;
use crate::metrics::KvMetrics;
use crate::service::KvService;
use crate::stale_reads::{LaggingTransport, ReadMode, StaleReadsService};
use crate::state::ShardKvState;

/// Requests queued for the Raft driver before new ones are refused with `RetryLater`.
const MAILBOX_CAPACITY: usize = 65_536;
pub use quorumkv_admin::shutdown::{HAND_OFF_TIMEOUT, IN_FLIGHT_TIMEOUT, SHUTDOWN_LIMIT};
/// How long a stopping member waits for the migration task's current round.
const MIGRATION_STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// Wraps a member's Raft transport (tests inject network faults through it).
pub type TransportWrapper = Arc<dyn Fn(GrpcTransport) -> Arc<dyn Transport> + Send + Sync>;

/// Everything one member of a replica group needs.
#[derive(Clone)]
pub struct KvMemberOptions {
    /// Raft settings; `group_id` is the replica group id (gid, non-zero).
    pub raft: NodeConfig,
    /// Addresses of the shard controller's members.
    pub ctrlers: Vec<String>,
    /// This member's certificate and the cluster CA.
    pub tls: TlsMaterial,
    /// Optional wrapper of the Raft transport; `None` in production.
    pub wrap_transport: Option<TransportWrapper>,
    /// Address of the plain-HTTP admin endpoint (`/health/alive`, `/health/ready`,
    /// `/metrics`); port 0 picks a free port (see [`KvMember::admin_addr`]). `None`: no admin
    /// endpoint.
    pub admin: Option<SocketAddr>,
    /// How `Get` is served: [`ReadMode::ReadIndex`] (linearizable) except in tests that need
    /// stale reads on purpose (see [`crate::stale_reads`]; with `wrap_transport` set, the read
    /// follower does not lag).
    pub reads: ReadMode,
}

/// The shard store's directory inside a member's data directory.
pub const STORE_DIR: &str = "kv";

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Raft(#[from] RaftError),
    /// The admin endpoint could not listen on its address.
    #[error("admin endpoint: {0}")]
    Admin(String),
    /// The shard store in the data directory could not be opened or read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A running member of a replica group.
pub struct KvMember {
    node: Arc<RaftNode<ShardKvState>>,
    local_addr: SocketAddr,
    gate: Arc<RequestGate>,
    metrics: Arc<KvMetrics>,
    stop_migration: watch::Sender<bool>,
    stop_server: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    migrator: JoinHandle<()>,
    admin: Option<AdminServer>,
}

impl KvMember {
    /// Starts the member and serves on `listener`. Must run inside a tokio runtime.
    pub async fn start(opts: KvMemberOptions, listener: TcpListener) -> Result<Self, StartError> {
        let KvMemberOptions {
            raft,
            ctrlers,
            tls,
            wrap_transport,
            admin,
            reads,
        } = opts;
        let started = Instant::now();
        let gid = raft.group_id;
        if gid == 0 {
            return Err(StartError::InvalidArgument(
                "group id 0 is reserved (it means \"no group\")".into(),
            ));
        }
        let id = raft.id;
        let members = raft.members.clone();
        let cluster = ClusterAccess {
            ctrlers: ctrlers.clone(),
            tls: tls.clone(),
        };
        let ctrler = CtrlerClient::connect(ctrlers, tls.clone())
            .map_err(|e| StartError::InvalidArgument(e.to_string()))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| StartError::InvalidArgument(e.to_string()))?;
        // The shards live beside the Raft log, in the member's data directory.
        let state = ShardKvState::open(gid, &raft.data_dir.join(STORE_DIR))?;
        let (node, raft_service) =
            RaftNode::start_grpc_wrapped(raft, state, tls.clone(), MAILBOX_CAPACITY, |t| {
                match (&wrap_transport, reads) {
                    (Some(wrap), _) => wrap(t),
                    (None, ReadMode::ReadIndex) => Arc::new(t),
                    (None, ReadMode::UnsafeFollowerReadsForTesting) => {
                        Arc::new(LaggingTransport::new(t, id, &members))
                    }
                }
            })?;
        let node = Arc::new(node);
        let gate = RequestGate::new();
        let metrics = Arc::new(KvMetrics::new());
        let span = tracing::info_span!("shardkv", gid, node = id);
        let source: Arc<dyn AdminSource> = Arc::new(KvAdmin {
            node: node.clone(),
            gate: gate.clone(),
            metrics: metrics.clone(),
            started,
            cluster,
        });
        let admin = match admin {
            Some(addr) => {
                let server = AdminServer::bind(addr, source.clone())
                    .instrument(span.clone())
                    .await;
                match server {
                    Ok(s) => Some(s),
                    Err(e) => {
                        node.shutdown().await;
                        return Err(StartError::Admin(e.to_string()));
                    }
                }
            }
            None => None,
        };
        let router = tonic::transport::Server::builder()
            .tls_config(tls.server_config())
            .map_err(|e| StartError::InvalidArgument(format!("TLS configuration: {e}")))?
            // Who may call what, by the role in the peer's certificate (quorumkv_common::auth).
            .layer(quorumkv_common::AuthLayer)
            .add_service(raft_service.into_server())
            .add_service(RaftAdminService::new(node.clone()).into_server())
            .add_service(AdminViewService::new(source).into_server());
        let router = match reads {
            ReadMode::ReadIndex => router.add_service(
                KvService::new(node.clone(), gate.clone(), metrics.clone()).into_server(),
            ),
            ReadMode::UnsafeFollowerReadsForTesting => {
                tracing::warn!(
                    gid,
                    node = id,
                    "UNSAFE: serving stale reads on purpose (--unsafe-stale-reads-for-testing)"
                );
                router.add_service(
                    StaleReadsService::new(node.clone(), gate.clone(), metrics.clone())
                        .into_server(),
                )
            }
        };
        let (stop_migration, migration_stopped) = watch::channel(false);
        let (stop_server, server_stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(
            async move {
                let incoming = quorumkv_raft_core::transport::incoming(listener);
                let signal = async move {
                    let _ = server_stopped.await;
                };
                if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await {
                    tracing::error!(error = %e, "gRPC server failed");
                }
            }
            .instrument(span.clone()),
        );
        let migrator = tokio::spawn(
            crate::migrate::run(
                node.clone(),
                Arc::new(ctrler),
                Arc::new(GroupCaller::new(tls)),
                metrics.clone(),
                migration_stopped,
            )
            .instrument(span),
        );
        tracing::info!(gid, node = id, addr = %local_addr, "shardkv member serving");
        Ok(KvMember {
            node,
            local_addr,
            gate,
            metrics,
            stop_migration,
            stop_server: Some(stop_server),
            server,
            migrator,
            admin,
        })
    }

    pub fn node(&self) -> &Arc<RaftNode<ShardKvState>> {
        &self.node
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin endpoint's address, when it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// Client request and migration counters of this member.
    pub fn metrics(&self) -> &Arc<KvMetrics> {
        &self.metrics
    }

    /// Stops the member at once, as a crash would, for fault-injection tests: no hand-off of
    /// leadership, no draining of admitted requests (they fail), the gRPC server and the
    /// migration task aborted. What is on disk is what every completed Ready made durable;
    /// unlike a power loss, the page cache survives, so this is a process crash, not a
    /// machine's.
    pub async fn crash(mut self) {
        let _ = self.stop_migration.send(true);
        self.migrator.abort();
        self.gate.close();
        self.server.abort();
        self.node.shutdown().await;
        if let Some(admin) = self.admin.take() {
            admin.shutdown().await;
        }
        let _ = (&mut self.server).await;
    }

    /// Stops the member gracefully, within [`SHUTDOWN_LIMIT`]; see the module docs for the
    /// steps. Returns the member that leads afterwards, if leadership was handed over.
    pub async fn shutdown(mut self) -> Option<u64> {
        let deadline = Instant::now() + SHUTDOWN_LIMIT;
        let id = self.node.id();
        tracing::info!(node = id, "shardkv member stopping");
        // No new migration rounds; then the shared steps: no new requests, leadership handed
        // over, admitted requests finished.
        let _ = self.stop_migration.send(true);
        let new_leader = shutdown::quiesce(&self.node, &self.gate, deadline).await;
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(MIGRATION_STOP_TIMEOUT.min(left), &mut self.migrator)
            .await
            .is_err()
        {
            // Safe: everything it does goes through the log and is re-checked there.
            self.migrator.abort();
        }
        shutdown::finish(
            &self.node,
            self.stop_server.take(),
            &mut self.server,
            self.admin.take(),
            deadline,
        )
        .await;
        tracing::info!(node = id, "shardkv member stopped");
        new_leader
    }
}
