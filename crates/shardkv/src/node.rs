//! One shardkv member, wired: a Raft node hosting [`ShardKvState`], one mutual-TLS gRPC
//! server serving both the Raft transport and `ShardKv` on a single listener, and the
//! migration task (active only while this member leads).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quorumkv_common::TlsMaterial;
use quorumkv_raft_core::{GrpcTransport, NodeConfig, RaftError, RaftNode, Transport};
use quorumkv_shardctrler_client::CtrlerClient;
use quorumkv_shardkv_client::GroupCaller;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::Instrument;

use crate::service::KvService;
use crate::state::ShardKvState;

/// Requests queued for the Raft driver before new ones are refused with `RetryLater`.
const MAILBOX_CAPACITY: usize = 65_536;
/// How long a stopping member waits for connections to close before dropping them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

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
}

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Raft(#[from] RaftError),
}

/// A running member of a replica group.
pub struct KvMember {
    node: Arc<RaftNode<ShardKvState>>,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    migrator: JoinHandle<()>,
}

impl KvMember {
    /// Starts the member and serves on `listener`. Must run inside a tokio runtime.
    pub async fn start(opts: KvMemberOptions, listener: TcpListener) -> Result<Self, StartError> {
        let KvMemberOptions {
            raft,
            ctrlers,
            tls,
            wrap_transport,
        } = opts;
        let gid = raft.group_id;
        if gid == 0 {
            return Err(StartError::InvalidArgument(
                "group id 0 is reserved (it means \"no group\")".into(),
            ));
        }
        let id = raft.id;
        let ctrler = CtrlerClient::connect(ctrlers, tls.clone())
            .map_err(|e| StartError::InvalidArgument(e.to_string()))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| StartError::InvalidArgument(e.to_string()))?;
        let (node, raft_service) = RaftNode::start_grpc_wrapped(
            raft,
            ShardKvState::new(gid, 1),
            tls.clone(),
            MAILBOX_CAPACITY,
            |t| match &wrap_transport {
                Some(wrap) => wrap(t),
                None => Arc::new(t),
            },
        )?;
        let node = Arc::new(node);
        let router = tonic::transport::Server::builder()
            .tls_config(tls.server_config())
            .map_err(|e| StartError::InvalidArgument(format!("TLS configuration: {e}")))?
            .add_service(raft_service.into_server())
            .add_service(KvService::new(node.clone()).into_server());
        let (stop, stopped) = watch::channel(false);
        let span = tracing::info_span!("shardkv", gid, node = id);
        let mut server_stop = stopped.clone();
        let server = tokio::spawn(
            async move {
                let incoming = TcpListenerStream::new(listener);
                let signal = async move {
                    let _ = server_stop.wait_for(|s| *s).await;
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
                stopped,
            )
            .instrument(span),
        );
        tracing::info!(gid, node = id, addr = %local_addr, "shardkv member serving");
        Ok(KvMember {
            node,
            local_addr,
            stop,
            server,
            migrator,
        })
    }

    pub fn node(&self) -> &Arc<RaftNode<ShardKvState>> {
        &self.node
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the migration task and the server, then the Raft node (storage is durable).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.migrator.await;
        let mut server = self.server;
        if tokio::time::timeout(DRAIN_TIMEOUT, &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
        self.node.shutdown().await;
    }
}
