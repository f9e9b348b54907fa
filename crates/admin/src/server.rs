//! The HTTP side: an axum router over an [`AdminSource`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::dashboard;
use crate::health::{liveness, readiness};
use crate::prom::{render_raft, MetricsWriter, CONTENT_TYPE};
use crate::{AdminSource, STUCK_AFTER};

/// How long a stopping admin server lets open connections (keep-alive scrapers) finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

type Source = Arc<dyn AdminSource>;

fn json_response(code: StatusCode, body: serde_json::Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

async fn alive(State(src): State<Source>) -> Response {
    let status = src.raft_status();
    let age = src.raft_metrics().driver_heartbeat_age();
    let uptime = src.started().elapsed().as_secs();
    match liveness(&status, age, STUCK_AFTER) {
        Ok(()) => json_response(
            StatusCode::OK,
            json!({"status": "alive", "uptime_secs": uptime}),
        ),
        Err(dead) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({
                "status": "dead",
                "reason": dead.reason,
                "detail": dead.detail,
                "uptime_secs": uptime,
            }),
        ),
    }
}

async fn ready(State(src): State<Source>) -> Response {
    let s = src.raft_status();
    let age = src.raft_metrics().driver_heartbeat_age();
    match readiness(&s, age, STUCK_AFTER, src.shutting_down()) {
        Ok(()) => json_response(
            StatusCode::OK,
            json!({
                "status": "ready",
                "role": s.role.to_string(),
                "leader_id": s.leader_id,
                "term": s.term,
                "applied_index": s.applied_index,
            }),
        ),
        Err(nr) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not_ready", "failed": nr.failed, "detail": nr.detail}),
        ),
    }
}

/// Everything `GET /metrics` shows for `src`.
pub(crate) fn render_metrics(src: &dyn AdminSource) -> String {
    let s = src.raft_status();
    let (group, node) = (s.group_id.to_string(), s.id.to_string());
    let mut w = MetricsWriter::new(&[("group", &group), ("node", &node)]);
    render_raft(&mut w, &s, &src.raft_metrics(), src.started());
    src.render_extra_metrics(&mut w);
    w.finish()
}

async fn metrics(State(src): State<Source>) -> Response {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        render_metrics(&*src),
    )
        .into_response()
}

fn router(source: Source) -> Router {
    let base = Router::new()
        .route("/health/alive", get(alive))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(source.clone());
    match source.cluster() {
        Some(access) => base.merge(dashboard::router(access, source)),
        None => base,
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves (then waits for open
/// connections to close; see [`AdminServer`] for a bounded stop).
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn AdminSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(source))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A running admin server. Dropping it stops it at once; [`AdminServer::shutdown`] stops it
/// gracefully within a bound.
pub struct AdminServer {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` and serves in the background. Must be called within a tokio runtime.
    pub async fn bind(addr: SocketAddr, source: Arc<dyn AdminSource>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        Self::start(listener, source)
    }

    /// Serves on `listener` in the background.
    pub fn start(listener: TcpListener, source: Arc<dyn AdminSource>) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let signal = async {
                let _ = stopped.await;
            };
            if let Err(e) = serve(listener, source, signal).await {
                tracing::error!(error = %e, "admin server failed");
            }
        });
        tracing::info!(addr = %local_addr, "admin endpoint serving");
        Ok(AdminServer {
            local_addr,
            stop: Some(stop),
            task,
        })
    }

    /// The address the server listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets open connections finish for at most a second, then drops them.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(DRAIN_TIMEOUT, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
