//! Only holders of a certificate from the cluster CA may talk to a member.

use quorumkv_proto::raft::raft_transport_client::RaftTransportClient;
use quorumkv_proto::raft::MessageBatch;
use quorumkv_testkit::certs::TestPki;
use quorumkv_testkit::{ClusterOptions, TestCluster};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Opens a raft stream to `addr` with `tls` and sends one empty batch; Ok if the member
/// accepted the connection and the call.
async fn call(addr: &str, tls: ClientTlsConfig) -> Result<(), String> {
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let batch = MessageBatch {
        group_id: 7,
        messages: vec![],
    };
    RaftTransportClient::new(channel)
        .send(tokio_stream::iter(vec![batch]))
        .await
        .map(|_| ())
        .map_err(|s| format!("call: {s}"))
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

    // A holder of a certificate from the cluster CA gets in.
    let member = TestPki::material(&c.pki.ca, "client");
    call(&addr, member.client_config("127.0.0.1"))
        .await
        .expect("a certificate from the cluster CA must be accepted");

    // No client certificate at all: refused.
    let ca_only = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&c.pki.ca.pem().cert))
        .domain_name("127.0.0.1");
    let err = call(&addr, ca_only).await.unwrap_err();
    assert!(
        refused(&err, "CertificateRequired"),
        "unexpected error: {err}"
    );

    // A certificate from another CA: refused (the client itself trusts the cluster CA, so
    // only the member's check of the client certificate can fail).
    let stranger_ca = quorumkv_common::certs::Ca::generate("stranger").unwrap();
    let stranger = stranger_ca
        .issue("stranger", &["localhost".into(), "127.0.0.1".into()])
        .unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&c.pki.ca.pem().cert))
        .identity(Identity::from_pem(&stranger.cert, &stranger.key))
        .domain_name("127.0.0.1");
    let err = call(&addr, tls).await.unwrap_err();
    assert!(refused(&err, "UnknownCA"), "unexpected error: {err}");

    // And a client that trusts only another CA does not accept the member as a server.
    let other = TestPki::material(&stranger_ca, "other");
    assert!(call(&addr, other.client_config("127.0.0.1")).await.is_err());
}
