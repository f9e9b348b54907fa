//! Who may call what: the role a certificate carries, and the one rule table every server
//! enforces.
//!
//! Mutual TLS proves that a peer holds a certificate the cluster CA signed; the role in that
//! certificate says what it may do. A role is a URI subject alternative name,
//! `urn:quorumkv:role:node`, `…:client` or `…:admin` ([`Role::uri`]), written by
//! [`crate::certs::Ca::issue`] and read back by [`role_of_certificate`]:
//!
//! | role     | held by                         | may call |
//! |----------|---------------------------------|----------|
//! | `node`   | every server                    | the Raft transport, `PullShard`/`DeleteShard` (group to group), and the reads: controller `Query`/`Status`, group `Status`, `RaftAdmin.Members` |
//! | `client` | applications                    | `Get`/`Put`/`Append`/`Delete`, and the reads above |
//! | `admin`  | operators, the join Job         | everything a client may, plus `Join`/`Leave`/`Move`/`SetServers`, the `RaftAdmin` membership changes and `ExportShard` (backups) |
//!
//! Admin implies client (an operator's shell uses one certificate for everything), and
//! neither implies node: only servers speak Raft or move shards. A certificate with no role
//! (issued before roles existed) counts as a **node** certificate, so a cluster upgraded
//! without re-issuing keeps replicating; it loses the key/value calls and the changes, whose
//! refusal names the fix (re-issue with `quorumkv-certs issue --role`). Such certificates
//! stop working altogether once the cluster rotates to a new CA (see the README).
//!
//! The rules are a table keyed by gRPC method ([`RULES`]), applied by one tower layer
//! ([`AuthLayer`]) that every server mounts in front of all its services, so a handler never
//! checks anything itself and a method missing from the table is refused (fail closed); a
//! unit test checks that every `rpc` in `proto/` has a rule. A refused call gets
//! `PERMISSION_DENIED` naming the roles the method needs and the one presented.

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tonic::codegen::http;
use tonic::codegen::Service;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use crate::CommonError;

/// What a certificate's holder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A server: a Raft member of the controller or of a replica group.
    Node,
    /// An application: reads and writes keys, reads configurations.
    Client,
    /// An operator: a client that may also change configurations and memberships.
    Admin,
}

/// The prefix of the URI subject alternative name that carries a role.
pub const ROLE_URI_PREFIX: &str = "urn:quorumkv:role:";

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 3] = [Role::Node, Role::Client, Role::Admin];

    /// The role's name: `node`, `client`, `admin` (the CLI flag value and the URI suffix).
    pub fn name(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }

    /// The URI subject alternative name that carries this role.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.name())
    }

    /// Whether a certificate of this role may make a call that needs `needed`: the same role,
    /// or admin for a client call.
    pub fn grants(self, needed: Role) -> bool {
        self == needed || (self == Role::Admin && needed == Role::Client)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Role {
    type Err = CommonError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                CommonError::InvalidArgument(format!(
                    "unknown role {s:?} (expected node, client or admin)"
                ))
            })
    }
}

/// The role written in a DER certificate: `Ok(None)` for a certificate without one (issued
/// before roles existed); an error for one that cannot be parsed, names an unknown role or
/// names several.
pub fn role_of_certificate(der: &[u8]) -> Result<Option<Role>, CommonError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let bad = |why: String| CommonError::Certificate(why);
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| bad(format!("unreadable certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad(format!("unreadable subject alternative names: {e}")))?;
    let mut roles = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(ROLE_URI_PREFIX),
            _ => None,
        });
    let Some(first) = roles.next() else {
        return Ok(None);
    };
    if let Some(second) = roles.next() {
        return Err(bad(format!(
            "the certificate names several roles ({first}, {second}); it must name one"
        )));
    }
    first.parse().map(Some)
}

/// The common name of a DER certificate, for messages (`?` when it has none).
fn common_name(der: &[u8]) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(der)
        .ok()
        .and_then(|(_, c)| {
            c.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok().map(str::to_string))
        })
        .unwrap_or_else(|| "?".into())
}

/// Node, client, admin: who may call a method.
type Allowed = &'static [Role];
const NODE: Allowed = &[Role::Node];
/// Client calls; admin implies client.
const CLIENT: Allowed = &[Role::Client];
const ADMIN: Allowed = &[Role::Admin];
/// Reads that servers make of each other (and dashboards, with the node certificate) as well
/// as clients.
const READ: Allowed = &[Role::Client, Role::Node];

/// The rule of every gRPC method the servers serve: `(service, method, roles allowed)`.
/// Services are the fully qualified names of `proto/*.proto`.
pub const RULES: &[(&str, &str, Allowed)] = &[
    // Raft traffic between the members of one group.
    ("quorumkv.raft.RaftTransport", "Send", NODE),
    ("quorumkv.raft.RaftTransport", "InstallSnapshot", NODE),
    // Membership: listing is a read; changes are the operator's.
    (
        "quorumkv.raft.RaftAdmin",
        "Members",
        &[Role::Admin, Role::Node],
    ),
    ("quorumkv.raft.RaftAdmin", "AddMember", ADMIN),
    ("quorumkv.raft.RaftAdmin", "RemoveMember", ADMIN),
    ("quorumkv.raft.RaftAdmin", "ReplaceMember", ADMIN),
    ("quorumkv.raft.RaftAdmin", "TransferLeader", ADMIN),
    // The controller: configuration changes, and the reads every group makes.
    ("quorumkv.shardctrler.ShardCtrler", "Join", ADMIN),
    ("quorumkv.shardctrler.ShardCtrler", "Leave", ADMIN),
    ("quorumkv.shardctrler.ShardCtrler", "Move", ADMIN),
    ("quorumkv.shardctrler.ShardCtrler", "SetServers", ADMIN),
    ("quorumkv.shardctrler.ShardCtrler", "Query", READ),
    ("quorumkv.shardctrler.ShardCtrler", "Status", READ),
    // Replica groups: the data, status, and migration between groups.
    ("quorumkv.shardkv.ShardKv", "Get", CLIENT),
    ("quorumkv.shardkv.ShardKv", "Put", CLIENT),
    ("quorumkv.shardkv.ShardKv", "Append", CLIENT),
    ("quorumkv.shardkv.ShardKv", "Delete", CLIENT),
    ("quorumkv.shardkv.ShardKv", "Status", READ),
    ("quorumkv.shardkv.ShardKv", "PullShard", NODE),
    ("quorumkv.shardkv.ShardKv", "DeleteShard", NODE),
    // A backup copies whole shards: the operator's, not an application's.
    ("quorumkv.shardkv.ShardKv", "ExportShard", ADMIN),
    // A member's readiness, Raft state and metrics, gathered by the dashboard.
    ("quorumkv.admin.AdminView", "Member", READ),
];

/// The roles allowed to call the gRPC method at `path` (`/package.Service/Method`); `None`
/// for a method without a rule.
pub fn allowed_roles(path: &str) -> Option<&'static [Role]> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    RULES
        .iter()
        .find(|(s, m, _)| *s == service && *m == method)
        .map(|(_, _, roles)| *roles)
}

/// `a client, admin or node`, `an admin`: the roles of a rule, for messages.
fn describe(roles: &[Role]) -> String {
    let mut names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
    if roles.contains(&Role::Client) && !roles.contains(&Role::Admin) {
        names.insert(1, "admin");
    }
    let article = if names[0] == "admin" { "an" } else { "a" };
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => {
            format!("{article} {} or {last}", rest.join(", "))
        }
        _ => format!("{article} {}", names[0]),
    }
}

static LEGACY_SEEN: AtomicBool = AtomicBool::new(false);

/// Decides a call to `path` by the peer's verified certificate chain (leaf first).
pub fn check(path: &str, peer_certs: Option<&[impl AsRef<[u8]>]>) -> Result<(), Status> {
    let method = path.trim_start_matches('/');
    let Some(allowed) = allowed_roles(path) else {
        return Err(Status::permission_denied(format!(
            "{method} has no access rule on this server (quorumkv_common::auth::RULES)"
        )));
    };
    let Some(leaf) = peer_certs.and_then(|c| c.first()) else {
        // The servers always require a client certificate; no chain means plain TCP, which
        // never reaches a QuorumKV service.
        return Err(Status::permission_denied(format!(
            "{method} needs {} certificate; the connection presented none",
            describe(allowed)
        )));
    };
    let leaf = leaf.as_ref();
    let (role, presented) = match role_of_certificate(leaf) {
        Ok(Some(role)) => (role, format!("a {role} certificate")),
        Ok(None) => {
            if !LEGACY_SEEN.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    cn = %common_name(leaf),
                    "a peer presented a certificate without a role: it counts as a node \
                     certificate; re-issue it with `quorumkv-certs issue --role`"
                );
            }
            (
                Role::Node,
                "a certificate without a role (issued before roles; it counts as node)".to_string(),
            )
        }
        Err(e) => {
            return Err(Status::permission_denied(format!(
                "{method}: the client certificate (CN {}) is unusable: {e}",
                common_name(leaf)
            )))
        }
    };
    if allowed.iter().any(|needed| role.grants(*needed)) {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "{method} needs {} certificate; this connection presented {presented} (CN {}): \
         use a certificate of the right role (quorumkv-certs issue NAME --role {})",
        describe(allowed),
        common_name(leaf),
        allowed[0],
    )))
}

/// The tower layer every QuorumKV gRPC server mounts (`Server::builder().layer(AuthLayer)`):
/// each call is checked against [`RULES`] with the peer's verified certificate before any
/// service sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthLayer;

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize { inner }
    }
}

/// The service [`AuthLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for Authorize<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    RB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        futures::future::Either<std::future::Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs());
        match check(req.uri().path(), certs.as_deref().map(Vec::as_slice)) {
            Ok(()) => futures::future::Either::Right(self.inner.call(req)),
            Err(status) => {
                futures::future::Either::Left(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::Ca;

    fn der(pem: &str) -> Vec<u8> {
        let block = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1;
        block.contents
    }

    #[test]
    fn roles_round_trip_through_certificates() {
        let ca = Ca::generate("ca").unwrap();
        for role in Role::ALL {
            let leaf = ca.issue("x", role, &["localhost".into()]).unwrap();
            assert_eq!(role_of_certificate(&der(&leaf.cert)).unwrap(), Some(role));
        }
        let legacy = ca.issue_without_role("old", &["localhost".into()]).unwrap();
        assert_eq!(role_of_certificate(&der(&legacy.cert)).unwrap(), None);
        assert!(role_of_certificate(b"not a certificate").is_err());
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn admin_implies_client_and_nothing_implies_node() {
        assert!(Role::Admin.grants(Role::Client));
        assert!(!Role::Client.grants(Role::Admin));
        assert!(!Role::Admin.grants(Role::Node));
        assert!(!Role::Node.grants(Role::Client));
    }

    #[test]
    fn the_table_decides_by_role() {
        let ca = Ca::generate("ca").unwrap();
        let cert = |role: Option<Role>| {
            let pem = match role {
                Some(r) => ca.issue("peer", r, &["localhost".into()]).unwrap(),
                None => ca
                    .issue_without_role("peer", &["localhost".into()])
                    .unwrap(),
            };
            vec![der(&pem.cert)]
        };
        let (node, client, admin, legacy) = (
            cert(Some(Role::Node)),
            cert(Some(Role::Client)),
            cert(Some(Role::Admin)),
            cert(None),
        );
        let ok = |path: &str, c: &Vec<Vec<u8>>| check(path, Some(c.as_slice())).is_ok();
        let raft = "/quorumkv.raft.RaftTransport/Send";
        assert!(ok(raft, &node) && ok(raft, &legacy));
        assert!(!ok(raft, &client) && !ok(raft, &admin));
        let put = "/quorumkv.shardkv.ShardKv/Put";
        assert!(ok(put, &client) && ok(put, &admin));
        assert!(!ok(put, &node) && !ok(put, &legacy));
        let join = "/quorumkv.shardctrler.ShardCtrler/Join";
        assert!(ok(join, &admin));
        assert!(!ok(join, &client) && !ok(join, &node));
        let query = "/quorumkv.shardctrler.ShardCtrler/Query";
        assert!(ok(query, &client) && ok(query, &admin) && ok(query, &node));
        let pull = "/quorumkv.shardkv.ShardKv/PullShard";
        assert!(ok(pull, &node) && !ok(pull, &admin) && !ok(pull, &client));
        // A backup reads every key of a shard: operators only.
        let export = "/quorumkv.shardkv.ShardKv/ExportShard";
        assert!(ok(export, &admin));
        assert!(!ok(export, &client) && !ok(export, &node) && !ok(export, &legacy));

        let refusal = check(put, Some(node.as_slice())).unwrap_err();
        assert_eq!(refusal.code(), tonic::Code::PermissionDenied);
        let msg = refusal.message();
        assert!(
            msg.contains("needs a client or admin certificate")
                && msg.contains("presented a node certificate"),
            "{msg}"
        );
        let legacy_refusal = check(join, Some(legacy.as_slice())).unwrap_err();
        assert!(
            legacy_refusal.message().contains("without a role"),
            "{legacy_refusal:?}"
        );
        // Fail closed: no rule, no call; no certificate, no call.
        assert!(check("/quorumkv.shardkv.ShardKv/Backdoor", Some(admin.as_slice())).is_err());
        assert!(check(put, None::<&[Vec<u8>]>).is_err());
    }

    /// Every `rpc` of every service in `proto/` has a rule, so a new method cannot be
    /// reachable by any certificate by accident (nor refused to everyone by surprise).
    #[test]
    fn every_rpc_in_the_protos_has_a_rule() {
        let protos = [
            include_str!("../../../proto/raft.proto"),
            include_str!("../../../proto/shardctrler.proto"),
            include_str!("../../../proto/shardkv.proto"),
            include_str!("../../../proto/admin.proto"),
        ];
        let mut seen = 0;
        for text in protos {
            let package = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("package "))
                .and_then(|p| p.strip_suffix(';'))
                .expect("package line");
            let mut service = None;
            for line in text.lines().map(str::trim) {
                if let Some(rest) = line.strip_prefix("service ") {
                    service = rest.split_whitespace().next().map(str::to_string);
                }
                if let Some(rest) = line.strip_prefix("rpc ") {
                    let method = rest.split('(').next().unwrap().trim();
                    let service = service.as_deref().expect("rpc outside a service");
                    let path = format!("/{package}.{service}/{method}");
                    assert!(
                        allowed_roles(&path).is_some(),
                        "{path} has no rule in quorumkv_common::auth::RULES"
                    );
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, RULES.len(), "RULES names a method the protos lack");
    }
}
