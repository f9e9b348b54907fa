//! The group caller follows a `not leader` hint to its address even when that address is not
//! among the servers it was given (they may predate a membership change: a member replaced
//! while the controller still lists the old servers). Two stub servers over mutual TLS: the
//! listed one names the other as leader; the other answers.

use std::time::{Duration, Instant};

use bytes::Bytes;
use quorumkv_common::rpc::{to_status, ErrorKind};
use quorumkv_proto::shardkv as pb;
use quorumkv_proto::shardkv::shard_kv_server::{ShardKv, ShardKvServer};
use quorumkv_shardkv_client::GroupCaller;
use quorumkv_testkit::certs::TestPki;
use tonic::{Request, Response, Status};

/// Answers gets with `value`, or, with `leader` set, refuses everything naming it.
struct Stub {
    leader: Option<String>,
    value: &'static str,
}

impl Stub {
    fn refuse(&self) -> Result<(), Status> {
        match &self.leader {
            Some(l) => Err(to_status(
                ErrorKind::NotLeader {
                    leader: Some(l.clone()),
                },
                format!("not leader (leader is at {l})"),
            )),
            None => Ok(()),
        }
    }
}

fn unused<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not used by this test"))
}

#[tonic::async_trait]
impl ShardKv for Stub {
    async fn get(&self, _: Request<pb::GetRequest>) -> Result<Response<pb::GetReply>, Status> {
        self.refuse()?;
        Ok(Response::new(pb::GetReply {
            found: true,
            value: Bytes::from_static(self.value.as_bytes()),
        }))
    }
    async fn put(&self, _: Request<pb::PutRequest>) -> Result<Response<pb::WriteReply>, Status> {
        unused()
    }
    async fn append(&self, _: Request<pb::PutRequest>) -> Result<Response<pb::WriteReply>, Status> {
        unused()
    }
    async fn delete(
        &self,
        _: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        unused()
    }
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        unused()
    }
    async fn pull_shard(
        &self,
        _: Request<pb::PullShardRequest>,
    ) -> Result<Response<pb::PullShardReply>, Status> {
        unused()
    }
    async fn delete_shard(
        &self,
        _: Request<pb::DeleteShardRequest>,
    ) -> Result<Response<pb::DeleteShardReply>, Status> {
        unused()
    }
    type ExportShardStream = tonic::codegen::BoxStream<pb::ExportShardChunk>;
    async fn export_shard(
        &self,
        _: Request<pb::ExportShardRequest>,
    ) -> Result<Response<Self::ExportShardStream>, Status> {
        unused()
    }
}

async fn serve(pki: &TestPki, stub: Stub) -> String {
    let listener = quorumkv_testkit::ports::reserve_tokio();
    let addr = format!("localhost:{}", listener.local_addr().unwrap().port());
    let server = tonic::transport::Server::builder()
        .tls_config(pki.node.server_config())
        .unwrap()
        .add_service(ShardKvServer::new(stub))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_to_an_unlisted_leader_is_followed() {
    quorumkv_common::tls::install_crypto_provider();
    let pki = TestPki::new();
    let new_leader = serve(
        &pki,
        Stub {
            leader: None,
            value: "from the new leader",
        },
    )
    .await;
    let listed = serve(
        &pki,
        Stub {
            leader: Some(new_leader.clone()),
            value: "",
        },
    )
    .await;
    let groups = GroupCaller::new(pki.client.clone());
    let reply = groups
        .call(
            1,
            std::slice::from_ref(&listed),
            Instant::now() + Duration::from_secs(5),
            |mut c| async move {
                c.get(pb::GetRequest {
                    key: Bytes::from_static(b"k"),
                    config_num: 1,
                })
                .await
            },
        )
        .await
        .expect("the hint was not followed");
    assert_eq!(reply.value, Bytes::from_static(b"from the new leader"));
}
