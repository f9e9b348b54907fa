//! The same bench load on an etcd cluster (`bench --etcd`), through etcd's own KV API, so
//! that QuorumKV and etcd can be measured side by side on one machine
//! (`scripts/bench-vs-etcd.sh`). Puts are `Put`s; gets are linearizable `Range`s of one key
//! (etcd's default, like QuorumKV's gets).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quorumkv_proto::etcd::kv_client::KvClient as EtcdKvClient;
use quorumkv_proto::etcd::{PutRequest, RangeRequest};
use quorumkv_shardkv_client::KvError;
use tonic::transport::{Channel, Endpoint};

/// Connections to an etcd cluster's members (plaintext gRPC), shared by every bench client.
pub struct Etcd {
    channels: Vec<Channel>,
    next: AtomicUsize,
}

impl Etcd {
    /// `endpoints`: comma-separated `http://host:port` (or `host:port`) of etcd members.
    pub fn connect(endpoints: &str) -> Result<Arc<Self>, String> {
        let channels = endpoints
            .split(',')
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let e = e.trim();
                let url = if e.contains("://") {
                    e.to_string()
                } else {
                    format!("http://{e}")
                };
                Endpoint::from_shared(url)
                    .map(|ep| {
                        ep.connect_timeout(Duration::from_secs(2))
                            .tcp_nodelay(true)
                            .connect_lazy()
                    })
                    .map_err(|err| format!("--etcd {e}: {err}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if channels.is_empty() {
            return Err("--etcd needs at least one endpoint".into());
        }
        Ok(Arc::new(Etcd {
            channels,
            next: AtomicUsize::new(0),
        }))
    }

    /// A client on the next member's connection (clients are spread over the members).
    pub fn client(&self) -> EtcdKv {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        EtcdKv {
            kv: EtcdKvClient::new(self.channels[i].clone()),
        }
    }
}

/// One bench client of etcd.
pub struct EtcdKv {
    kv: EtcdKvClient<Channel>,
}

fn error(s: tonic::Status) -> KvError {
    match s.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Unavailable => KvError::Timeout {
            after: Duration::ZERO,
            last_error: Some(s.message().to_string()),
        },
        tonic::Code::InvalidArgument => KvError::InvalidArgument(s.message().to_string()),
        _ => KvError::Internal(format!("etcd: {}", s.message())),
    }
}

impl EtcdKv {
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        let req = PutRequest {
            key: key.to_vec().into(),
            value: value.to_vec().into(),
            ..Default::default()
        };
        self.kv.put(req).await.map(|_| ()).map_err(error)
    }

    /// A linearizable read; whether the key exists.
    pub async fn get(&mut self, key: &[u8]) -> Result<bool, KvError> {
        let req = RangeRequest {
            key: key.to_vec().into(),
            ..Default::default()
        };
        let r = self.kv.range(req).await.map_err(error)?;
        Ok(!r.into_inner().kvs.is_empty())
    }
}
