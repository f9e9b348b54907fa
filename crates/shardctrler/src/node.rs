//! One controller member, wired: mailbox → gRPC transport → Raft node hosting
//! [`ControllerSm`] → one mutual-TLS tonic server that serves the Raft transport (to the other
//! members), `RaftAdmin` (membership, for operators) and `ShardCtrler` (to clients) on a single
//! listener.
//!
//! The shard count is fixed when the controller is created. The first start writes it to
//! `DATA_DIR/controller.meta`; every later start compares, and a member started with another
//! count refuses to start ([`CtrlError::CannotStart`]) instead of serving configurations of the
//! wrong shape. The restored Raft snapshot is checked too (see [`ControllerSm`]).
//!
//! The binary and the tests use the same wiring: [`serve`] runs until a shutdown future
//! resolves; [`CtrlerMember`] is the handle behind it, for callers (tests) that stop and
//! restart members themselves. With [`MemberOptions::admin`] the member also runs the
//! plain-HTTP admin endpoint (health and metrics, see `quorumkv-admin`).
//!
//! # Graceful shutdown
//! [`CtrlerMember::shutdown`] (the SIGTERM path), bounded by [`SHUTDOWN_LIMIT`]: close the
//! request gate (new requests get `ShuttingDown`, readiness turns 503); if leading, hand
//! leadership to the most caught-up voter while the Raft transport still runs; let admitted
//! requests finish ([`IN_FLIGHT_TIMEOUT`]); stop the Raft node (storage is durable after every
//! Ready; the peers' streams into this member end with it), then the gRPC server (short
//! bounded drain), then the admin endpoint.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use quorumkv_admin::{
    shutdown, AdminServer, AdminSource, AdminViewService, ClusterAccess, RequestGate,
};
use quorumkv_common::TlsMaterial;
use quorumkv_raft_core::{NodeConfig, RaftAdminService, RaftNode};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::admin::{CtrlMetrics, CtrlerAdmin};
use crate::server::CtrlerService;
use crate::sm::ControllerSm;
use crate::CtrlError;

/// The Raft group id of the controller. Replica groups are numbered from 1 (gid 0 means "no
/// group"), so no replica group's Raft traffic can be mistaken for the controller's.
pub const CONTROLLER_GROUP_ID: u64 = 0;

/// Name of the file, in the data directory, that records the shard count.
pub const META_FILE: &str = "controller.meta";

/// Requests queued for the Raft driver before new ones are refused with `RetryLater`.
const MAILBOX_CAPACITY: usize = 16_384;

pub use quorumkv_admin::shutdown::{HAND_OFF_TIMEOUT, IN_FLIGHT_TIMEOUT, SHUTDOWN_LIMIT};

/// Everything one controller member needs.
#[derive(Debug, Clone)]
pub struct MemberOptions {
    /// Raft settings: id, data directory, members, bootstrap mode, timing. `group_id` is
    /// overwritten with [`CONTROLLER_GROUP_ID`].
    pub raft: NodeConfig,
    /// The fixed shard count; must match the one stored in the data directory, if any.
    pub num_shards: usize,
    /// This member's certificate (server and client identity) and the cluster CA.
    pub tls: TlsMaterial,
    /// Address of the plain-HTTP admin endpoint (`/health/alive`, `/health/ready`,
    /// `/metrics`); port 0 picks a free port (see [`CtrlerMember::admin_addr`]). `None`: no
    /// admin endpoint.
    pub admin: Option<SocketAddr>,
}

/// A running controller member.
pub struct CtrlerMember {
    node: Arc<RaftNode<ControllerSm>>,
    local_addr: SocketAddr,
    gate: Arc<RequestGate>,
    metrics: Arc<CtrlMetrics>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    admin: Option<AdminServer>,
}

fn cannot_start(e: impl std::fmt::Display) -> CtrlError {
    CtrlError::CannotStart(e.to_string())
}

/// Reads the shard count stored in `dir`, or stores `num_shards` if there is none yet.
fn check_or_store_shards(dir: &Path, num_shards: usize) -> Result<(), CtrlError> {
    std::fs::create_dir_all(dir).map_err(|e| cannot_start(format!("{}: {e}", dir.display())))?;
    let path = dir.join(META_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let stored = parse_meta(&text)
                .map_err(|why| cannot_start(format!("{}: {why}", path.display())))?;
            if stored != num_shards {
                return Err(cannot_start(format!(
                    "the controller in {} was created with {stored} shards, not {num_shards}; \
                     the shard count is fixed when the controller is created (start with \
                     {stored} shards, or use a new data directory for a new controller)",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_meta(dir, &path, num_shards)
            .map_err(|e| cannot_start(format!("{}: {e}", path.display()))),
        Err(e) => Err(cannot_start(format!("{}: {e}", path.display()))),
    }
}

fn parse_meta(text: &str) -> Result<usize, String> {
    let mut format = None;
    let mut shards = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("malformed line {line:?}"))?;
        let v: u64 = v
            .trim()
            .parse()
            .map_err(|_| format!("{line:?}: not a number"))?;
        match k.trim() {
            "format" => format = Some(v),
            "shards" => shards = Some(v),
            other => return Err(format!("unknown key {other:?}")),
        }
    }
    if format != Some(1) {
        return Err(format!("unsupported format {format:?} (expected 1)"));
    }
    shards
        .and_then(|s| usize::try_from(s).ok())
        .filter(|s| *s > 0)
        .ok_or_else(|| "no valid shard count".into())
}

/// Written once, atomically (temporary file, fsync, rename, fsync of the directory), so a crash
/// leaves either no file or a complete one.
fn write_meta(dir: &Path, path: &Path, num_shards: usize) -> std::io::Result<()> {
    let tmp: PathBuf = dir.join(format!("{META_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    write!(
        f,
        "# QuorumKV shard controller. Written when this data directory was created; the shard\n\
         # count can never change.\nformat = 1\nshards = {num_shards}\n"
    )?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl CtrlerMember {
    /// Checks the stored shard count, starts the Raft node and serves on `listener`. Must be
    /// called within a tokio runtime (the transport and the server run on it).
    pub async fn start(opts: MemberOptions, listener: TcpListener) -> Result<Self, CtrlError> {
        let MemberOptions {
            mut raft,
            num_shards,
            tls,
            admin,
        } = opts;
        let started = Instant::now();
        raft.group_id = CONTROLLER_GROUP_ID;
        raft.validate().map_err(cannot_start)?;
        let id = raft.id;
        check_or_store_shards(&raft.data_dir, num_shards)?;
        let sm = ControllerSm::new(num_shards).map_err(|e| cannot_start(e.to_string()))?;
        let local_addr = listener.local_addr().map_err(cannot_start)?;
        // The dashboard of this member reaches the controller through its own members.
        let cluster = ClusterAccess {
            ctrlers: raft.members.iter().map(|(_, addr)| addr.clone()).collect(),
            tls: tls.clone(),
        };

        let (node, raft_service) =
            RaftNode::start_grpc(raft, sm, tls.clone(), MAILBOX_CAPACITY).map_err(cannot_start)?;
        let node = Arc::new(node);
        let gate = RequestGate::new();
        let metrics = Arc::new(CtrlMetrics::new());
        let span = tracing::info_span!("ctrler", node = id);
        let source: Arc<dyn AdminSource> = Arc::new(CtrlerAdmin {
            node: node.clone(),
            gate: gate.clone(),
            metrics: metrics.clone(),
            started,
            cluster,
        });
        let admin = match admin {
            Some(addr) => {
                match AdminServer::bind(addr, source.clone())
                    .instrument(span.clone())
                    .await
                {
                    Ok(s) => Some(s),
                    Err(e) => {
                        node.shutdown().await;
                        return Err(cannot_start(format!("admin endpoint: {e}")));
                    }
                }
            }
            None => None,
        };
        let server = tonic::transport::Server::builder()
            .tls_config(tls.server_config())
            .map_err(|e| cannot_start(format!("TLS configuration: {e}")))?
            // Who may call what, by the role in the peer's certificate (quorumkv_common::auth).
            .layer(quorumkv_common::AuthLayer)
            .add_service(raft_service.into_server())
            .add_service(RaftAdminService::new(node.clone()).into_server())
            .add_service(AdminViewService::new(source).into_server())
            .add_service(
                CtrlerService::new(node.clone(), gate.clone(), metrics.clone()).into_server(),
            );
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(
            async move {
                let incoming = quorumkv_raft_core::transport::incoming(listener);
                let signal = async {
                    let _ = stopped.await;
                };
                if let Err(e) = server.serve_with_incoming_shutdown(incoming, signal).await {
                    tracing::error!(error = %e, "gRPC server failed");
                }
            }
            .instrument(span),
        );
        tracing::info!(node = id, addr = %local_addr, num_shards, "controller member serving");
        Ok(CtrlerMember {
            node,
            local_addr,
            gate,
            metrics,
            stop: Some(stop),
            server,
            admin,
        })
    }

    /// The Raft node (status, linearizable reads, membership changes).
    pub fn node(&self) -> &Arc<RaftNode<ControllerSm>> {
        &self.node
    }

    /// The address the member listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin endpoint's address, when it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// Request counters of this member.
    pub fn metrics(&self) -> &Arc<CtrlMetrics> {
        &self.metrics
    }

    /// Stops the member gracefully within [`SHUTDOWN_LIMIT`] (see the module docs). Returns
    /// the member that leads afterwards, if leadership was handed over.
    pub async fn shutdown(mut self) -> Option<u64> {
        let deadline = Instant::now() + SHUTDOWN_LIMIT;
        let id = self.node.id();
        let new_leader = shutdown::quiesce(&self.node, &self.gate, deadline).await;
        shutdown::finish(
            &self.node,
            self.stop.take(),
            &mut self.server,
            self.admin.take(),
            deadline,
        )
        .await;
        tracing::info!(node = id, "controller member stopped");
        new_leader
    }
}

impl Drop for CtrlerMember {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Runs one member on `listener` until `shutdown` resolves, then stops it.
pub async fn serve(
    opts: MemberOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CtrlError> {
    let member = CtrlerMember::start(opts, listener).await?;
    let mut status = member.node().watch_status();
    tokio::select! {
        _ = shutdown => {}
        // A driver that stopped by itself (fatal storage error) ends the process too.
        _ = status.wait_for(|s| s.stopped) => {
            let why = member.node().status().fatal.unwrap_or_else(|| "raft node stopped".into());
            member.shutdown().await;
            return Err(CtrlError::CannotStart(format!("the raft node stopped: {why}")));
        }
    }
    member.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_the_shard_count_once_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        check_or_store_shards(dir.path(), 64).unwrap();
        check_or_store_shards(dir.path(), 64).unwrap();
        let err = check_or_store_shards(dir.path(), 10)
            .unwrap_err()
            .to_string();
        assert!(err.contains("64 shards, not 10"), "{err}");
        std::fs::write(dir.path().join(META_FILE), "format = 1\n").unwrap();
        assert!(check_or_store_shards(dir.path(), 64).is_err());
    }
}
