//! Who may talk to a member: only holders of a certificate from the cluster CA (or, during a
//! CA rotation, from any CA of the bundle), and for each call only the roles
//! `quorumkv_common::auth` allows: Raft traffic from nodes, membership changes from admins.

use quorumkv_common::certs::Ca;
use quorumkv_common::rpc::{ErrorKind, RpcError};
use quorumkv_common::{Role, TlsMaterial};
use quorumkv_proto::raft::raft_admin_client::RaftAdminClient;
use quorumkv_proto::raft::raft_transport_client::RaftTransportClient;
use quorumkv_proto::raft::{MembersRequest, MessageBatch, RemoveMemberRequest};
use quorumkv_testkit::certs::TestPki;
use quorumkv_testkit::{ClusterOptions, TestCluster};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

async fn channel(addr: &str, tls: ClientTlsConfig) -> Result<Channel, String> {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))
}

/// Opens a raft stream to `addr` with `tls` and sends one empty batch; Ok if the member
/// accepted the connection and the call.
///
/// When the member refuses the client's certificate, TLS 1.3 lets the client finish its side
/// of the handshake first; if the member's alert closes the connection before the request is
/// written, hyper reports only "connection was not ready" and drops the alert. Like the
/// clients' own retries, this tries again on a new connection (at most five times) so the
/// error names the member's reason.
async fn call(addr: &str, tls: ClientTlsConfig) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..5 {
        let batch = MessageBatch {
            group_id: 7,
            messages: vec![],
        };
        match RaftTransportClient::new(channel(addr, tls.clone()).await?)
            .send(tokio_stream::iter(vec![batch]))
            .await
        {
            Ok(_) => return Ok(()),
            Err(s) => last = format!("call: {s}"),
        }
        if !last.contains("operation was canceled") {
            break;
        }
    }
    Err(last)
}

/// Whether `err` is the member refusing the TLS session. TLS 1.3 checks the client
/// certificate after the client considers the handshake done, so the refusal shows either as
/// the `alert` or as the member closing the connection under the client's first request.
fn refused(err: &str, alert: &str) -> bool {
    err.contains(alert) || err.contains("connection closed") || err.contains("broken pipe")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_certificates_from_the_cluster_ca_are_accepted() {
    let c = TestCluster::start(1, ClusterOptions::default()).await;
    let addr = c.addr(1).to_string();

    // A node certificate from the cluster CA gets in.
    call(&addr, c.pki.node.client_config("127.0.0.1"))
        .await
        .expect("a node certificate from the cluster CA must be accepted");

    // No client certificate at all: refused.
    let ca_only = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(c.pki.ca.pem().cert.clone()))
        .domain_name("127.0.0.1");
    let err = call(&addr, ca_only).await.unwrap_err();
    assert!(
        refused(&err, "CertificateRequired"),
        "unexpected error: {err}"
    );

    // A certificate from another CA: refused (the client itself trusts the cluster CA, so
    // only the member's check of the client certificate can fail).
    let stranger_ca = Ca::generate("stranger").unwrap();
    let stranger = stranger_ca
        .issue(
            "stranger",
            Role::Node,
            &["localhost".into(), "127.0.0.1".into()],
        )
        .unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(c.pki.ca.pem().cert.clone()))
        .identity(Identity::from_pem(&stranger.cert, &stranger.key))
        .domain_name("127.0.0.1");
    let err = call(&addr, tls).await.unwrap_err();
    assert!(refused(&err, "UnknownCA"), "unexpected error: {err}");

    // And a client that trusts only another CA does not accept the member as a server.
    let other = TestPki::material(&stranger_ca, Role::Node);
    assert!(call(&addr, other.client_config("127.0.0.1")).await.is_err());
}

fn denied(status: tonic::Status) -> String {
    let e = RpcError::from_status(&status);
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{status:?}");
    e.message
}

/// The Raft transport takes node certificates only (and, for clusters upgraded without
/// re-issuing, certificates without a role); membership changes take admin certificates only;
/// each refusal names the role needed and the role presented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_needs_its_role() {
    let c = TestCluster::start(1, ClusterOptions::default()).await;
    let addr = c.addr(1).to_string();
    let tls = |m: &TlsMaterial| m.client_config("127.0.0.1");

    let legacy = TestPki::material_without_role(&c.pki.ca);
    call(&addr, tls(&legacy))
        .await
        .expect("a certificate without a role counts as a node's");
    for (who, material) in [("client", &c.pki.client), ("admin", &c.pki.admin)] {
        let err = call(&addr, tls(material)).await.unwrap_err();
        assert!(
            err.contains("does not have permission")
                && err.contains("RaftTransport/Send needs a node certificate")
                && err.contains(&format!("presented a {who} certificate")),
            "{who}: {err}"
        );
    }

    let admin = |m: &TlsMaterial| {
        let m = m.clone();
        let addr = addr.clone();
        async move { RaftAdminClient::new(channel(&addr, tls(&m)).await.unwrap()) }
    };
    // Listing members is a read: nodes and admins; a client is refused.
    let list = MembersRequest { leader_only: false };
    for ok in [&c.pki.admin, &c.pki.node] {
        admin(ok).await.members(list).await.unwrap();
    }
    let msg = denied(admin(&c.pki.client).await.members(list).await.unwrap_err());
    assert!(msg.contains("needs an admin or node certificate"), "{msg}");
    // A change: admins only. The refused calls change nothing (member 1 is still there).
    for (who, no) in [("node", &c.pki.node), ("client", &c.pki.client)] {
        let msg = denied(
            admin(no)
                .await
                .remove_member(RemoveMemberRequest { id: 1 })
                .await
                .unwrap_err(),
        );
        assert!(
            msg.contains("RemoveMember needs an admin certificate")
                && msg.contains(&format!("presented a {who} certificate")),
            "{msg}"
        );
    }
    assert_eq!(c.node(1).status().voters, vec![1]);
}

/// Rolling a new CA in without downtime: every member first trusts a bundle of the old and
/// the new CA, then presents a certificate of the new CA, then trusts the new CA alone. The
/// group keeps committing at every step, with members in both states at once; afterwards a
/// certificate of the old CA is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_bundle_rolls_the_cluster_to_a_new_ca_without_downtime() {
    let mut c = TestCluster::start(3, ClusterOptions::default()).await;
    c.put("before", "v").await;
    let old = &c.pki.ca;
    let new = Ca::generate("new cluster CA").unwrap();
    let bundle = format!("{}{}", old.pem().cert, new.pem().cert);
    let sans = ["localhost".to_string(), "127.0.0.1".to_string()];
    let old_leaf = old.issue("node", Role::Node, &sans).unwrap();
    let new_leaf = new.issue("node", Role::Node, &sans).unwrap();
    let steps = [
        (
            "trust both",
            TlsMaterial::from_pem(&bundle, &old_leaf.cert, &old_leaf.key),
        ),
        (
            "new certificates",
            TlsMaterial::from_pem(&bundle, &new_leaf.cert, &new_leaf.key),
        ),
        (
            "trust the new CA only",
            TlsMaterial::from_pem(&new.pem().cert, &new_leaf.cert, &new_leaf.key),
        ),
    ];
    for (step, material) in steps {
        for id in [1, 2, 3] {
            c.stop(id).await;
            c.set_tls(id, material.clone());
            c.restart(id).await;
            // The restarted member is back in the group: a write reaches all three.
            c.put(&format!("{step}-{id}"), "v").await;
            let index = c
                .node(c.wait_leader(quorumkv_testkit::cluster::WAIT).await)
                .status()
                .commit_index;
            c.wait_applied(&[1, 2, 3], index).await;
        }
    }
    assert_eq!(c.get("before").await.as_deref(), Some("v"));
    let addr = c.addr(1).to_string();
    let new_node = TestPki::material(&new, Role::Node);
    call(&addr, new_node.client_config("127.0.0.1"))
        .await
        .expect("a certificate of the new CA is accepted");
    // A certificate of the old CA (trusting both, so only the member's check can fail).
    let old_client = TlsMaterial::from_pem(&bundle, &old_leaf.cert, &old_leaf.key);
    let err = call(&addr, old_client.client_config("127.0.0.1"))
        .await
        .unwrap_err();
    assert!(refused(&err, "UnknownCA"), "unexpected error: {err}");
}
