//! The live cluster dashboard: `GET /dashboard` (one page: HTML, CSS and a small script,
//! embedded in the binary, no build step, plots drawn as SVG) and `GET /api/cluster`, the JSON
//! it polls every second.
//!
//! The page needs nothing but the admin port it was loaded from: this server gathers the rest
//! ([`gather`]: the controller's latest configuration, and every member's `AdminView` over the
//! cluster's mutual TLS with this server's own certificate) and turns it into what the page
//! shows ([`track`]: throughput and p99 latency per group from the deltas of the members'
//! counters, leader changes, members going down and coming back, new configurations).
//!
//! Nothing runs while no one looks: a request to `/api/cluster` gathers, and answers within
//! [`FRESH_FOR`] of the last gathering share it, so any number of open pages cost one
//! gathering a second. What is kept between requests is bounded (see [`track`]).

pub mod gather;
pub mod track;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use quorumkv_common::TlsMaterial;

use crate::AdminSource;
use gather::Gatherer;
use track::{Served, Tracker};

/// How a server reaches the rest of the cluster for the dashboard.
#[derive(Clone)]
pub struct ClusterAccess {
    /// The controller members' `host:port` (any of them; the leader is followed).
    pub ctrlers: Vec<String>,
    /// This server's own certificate and the cluster CA.
    pub tls: TlsMaterial,
}

/// Answers to `/api/cluster` within this long of a gathering reuse it.
pub const FRESH_FOR: Duration = Duration::from_millis(900);

const PAGE: &str = include_str!("../../assets/dashboard.html");
const SCRIPT: &str = include_str!("../../assets/dashboard.js");
const STYLE: &str = include_str!("../../assets/dashboard.css");

struct Dashboard {
    source: Arc<dyn AdminSource>,
    gatherer: Result<Gatherer, String>,
    /// The tracker and the last answer with its time. Held across a gathering, so that
    /// concurrent requests wait for one gathering instead of starting their own.
    state: tokio::sync::Mutex<(Tracker, Option<(Instant, String)>)>,
}

impl Dashboard {
    async fn cluster_json(&self) -> String {
        let mut state = self.state.lock().await;
        if let Some((at, json)) = &state.1 {
            if at.elapsed() < FRESH_FOR {
                return json.clone();
            }
        }
        let status = self.source.raft_status();
        let served_by = Served {
            group: status.group_id,
            node: status.id,
        };
        let json = match &self.gatherer {
            Ok(g) => {
                let obs = g.observe(state.0.config()).await;
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let view = state.0.update(now_ms, served_by, obs);
                serde_json::to_string(&view).unwrap_or_else(|e| error_json(&e.to_string()))
            }
            Err(e) => error_json(e),
        };
        state.1 = Some((Instant::now(), json.clone()));
        json
    }
}

fn error_json(e: &str) -> String {
    serde_json::json!({ "error": format!("cannot gather the cluster: {e}") }).to_string()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn api(State(d): State<Arc<Dashboard>>) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        d.cluster_json().await,
    )
        .into_response()
}

/// The dashboard's routes. Must be called within a tokio runtime.
pub(crate) fn router(access: ClusterAccess, source: Arc<dyn AdminSource>) -> Router {
    let dashboard = Dashboard {
        source,
        gatherer: Gatherer::new(access),
        state: tokio::sync::Mutex::new((Tracker::default(), None)),
    };
    Router::new()
        .route(
            "/dashboard",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/api/cluster", get(api))
        .with_state(Arc::new(dashboard))
}
