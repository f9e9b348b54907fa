//! The `AdminView` gRPC service (`proto/admin.proto`): what the admin port shows — the Raft
//! state, readiness, chosen metric families — offered to peers over the cluster's mutual TLS,
//! so that one server can gather the picture of every member for the dashboard without knowing
//! their admin ports.

use std::sync::Arc;

use quorumkv_proto::admin as pb;
use quorumkv_proto::admin::admin_view_server::{AdminView, AdminViewServer};
use tonic::{Request, Response, Status};

use crate::health::readiness;
use crate::prom::select_families;
use crate::server::render_metrics;
use crate::{AdminSource, STUCK_AFTER};

/// What `source`'s member shows of itself, with the metric `families` (all when empty).
pub fn member_view(source: &dyn AdminSource, families: &[String]) -> pb::MemberView {
    let s = source.raft_status();
    let age = source.raft_metrics().driver_heartbeat_age();
    let (ready, not_ready, not_ready_detail) =
        match readiness(&s, age, STUCK_AFTER, source.shutting_down()) {
            Ok(()) => (true, String::new(), String::new()),
            Err(nr) => (false, nr.failed.to_string(), nr.detail),
        };
    pb::MemberView {
        group_id: s.group_id,
        node_id: s.id,
        role: s.role.to_string(),
        term: s.term,
        leader_id: s.leader_id.unwrap_or(0),
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        ready,
        not_ready,
        not_ready_detail,
        uptime_secs: source.started().elapsed().as_secs(),
        members: s
            .members
            .iter()
            .map(|(id, addr)| pb::Member {
                id: *id,
                addr: addr.clone(),
                learner: s.learners.contains(id),
            })
            .collect(),
        metrics: select_families(&render_metrics(source), families),
    }
}

/// The `AdminView` service of one member.
pub struct AdminViewService {
    source: Arc<dyn AdminSource>,
}

impl AdminViewService {
    pub fn new(source: Arc<dyn AdminSource>) -> Self {
        AdminViewService { source }
    }

    pub fn into_server(self) -> AdminViewServer<Self> {
        AdminViewServer::new(self)
    }
}

#[tonic::async_trait]
impl AdminView for AdminViewService {
    async fn member(
        &self,
        req: Request<pb::MemberViewRequest>,
    ) -> Result<Response<pb::MemberView>, Status> {
        Ok(Response::new(member_view(
            &*self.source,
            &req.into_inner().families,
        )))
    }
}
