//! `shardctrler-server`: one member of the shard controller's Raft group.
//!
//! Thin on purpose: parse the flags (and the optional TOML file), validate them into one
//! [`ServerConfig`], install logging, then hand everything to `quorumkv_shardctrler::serve`
//! until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use quorumkv_bin::{
    exit_status, parse_args_with_config, run_probe_if_asked, shutdown_signal, LogArgs, MemberFlags,
    RaftMember, TlsArgs,
};

use quorumkv_shardctrler::{MemberOptions, CONTROLLER_GROUP_ID, DEFAULT_SHARDS};

/// The largest shard count accepted: every configuration lists every shard, and clients fetch
/// whole configurations.
const MAX_SHARDS: usize = 16_384;

const ABOUT: &str =
    "One member of the QuorumKV shard controller (a Raft group, normally 3 members).";

const LONG_ABOUT: &str = "\
One member of the QuorumKV shard controller: a Raft group, normally of 3 members, that keeps the
numbered history of configurations (which replica group owns each shard, and the servers of every
group). Clients and KV servers use it through the ShardCtrler gRPC API; `shardctrler-client` is the
command-line client.

Every member is started with the same --cluster list and its own --id. All traffic (between
members, and from clients) is gRPC over mutual TLS on one port; certificates come from
`quorumkv-certs`.

Every flag can also be set by its environment variable (shown below) or by a key of the --config
file named like the long flag (`data-dir = \"/var/lib/qkv\"`, `shards = 64`, `tls-ca = ...`).
Flags override the environment, which overrides the file.";

const EXAMPLES: &str = "\
Example (three members on one machine):
  shardctrler-server --id 1 --cluster 1=localhost:7101,2=localhost:7102,3=localhost:7103 \\
      --data-dir /tmp/ctl1 --tls-ca certs/ca.pem --tls-cert certs/node.pem --tls-key certs/node-key.pem\n\nHealth check (for images without curl; exit 0 when the URL answers 2xx, else 1):\n  shardctrler-server probe http://127.0.0.1:8101/health/ready [--timeout 2s]";

/// Flags of `shardctrler-server`.
#[derive(Debug, Parser)]
#[command(name = "shardctrler-server", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXAMPLES)]
struct Args {
    /// TOML file with values for any of the flags below, keyed by long flag name. Flags and
    /// environment variables override it.
    #[arg(long, env = "QKV_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// This member's id in the controller group: non-zero, one of the ids in --cluster, never
    /// reused for another member.
    #[arg(long, env = "QKV_ID")]
    id: u64,

    /// All controller members as `id=host:port,...` (the same list on every member). Hosts are
    /// DNS names (or IPs) that every member and client can resolve, and that the members'
    /// certificates name.
    #[arg(long, env = "QKV_CLUSTER", value_name = "ID=HOST:PORT,...")]
    cluster: String,

    /// Address to listen on for gRPC (clients and the other members), `ip:port`. Default:
    /// 0.0.0.0 and the port of this member's entry in --cluster.
    #[arg(long, env = "QKV_LISTEN", value_name = "IP:PORT")]
    listen: Option<String>,

    /// Directory of this member's durable state (Raft log, snapshots, the stored shard count).
    /// Created if missing; never share it between members.
    #[arg(long, env = "QKV_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,

    /// Plain-HTTP admin address, `ip:port` (no TLS, so probes need no certificates):
    /// `GET /health/alive` (200 while the process and its Raft driver run), `GET
    /// /health/ready` (200 only when this member can serve: in a group with a leader and a
    /// quorum, storage fine, caught up; else 503 with JSON naming the failed check) and `GET
    /// /metrics` (Prometheus); and `GET /dashboard`, a live page of the whole cluster, which
    /// this server gathers from the controller and every member over mutual TLS. Off when not
    /// given. `SERVER probe URL` checks one of them. Unauthenticated: whoever reaches the
    /// address reads health, metrics and the cluster's layout (never keys or values), so bind
    /// it to 127.0.0.1 or a network only probes, monitoring and operators reach.
    #[arg(long, env = "QKV_ADMIN_LISTEN", value_name = "IP:PORT")]
    admin_listen: Option<String>,

    /// Number of shards, fixed when the controller is created. A member whose data directory
    /// was created with another count refuses to start.
    #[arg(long, env = "QKV_SHARDS", default_value_t = DEFAULT_SHARDS)]
    shards: usize,

    /// Start as a new, empty member of an existing controller group (it waits until the
    /// group's leader adds it) instead of creating the group. Ignored once the data directory
    /// holds state.
    #[arg(long, env = "QKV_JOIN")]
    join: bool,

    #[command(flatten)]
    tls: TlsArgs,

    #[command(flatten)]
    log: LogArgs,
}

/// The validated configuration of one member.
#[derive(Debug)]
struct ServerConfig {
    member: RaftMember,
    num_shards: usize,
}

impl ServerConfig {
    /// Checks every flag and names the one that is wrong.
    fn validate(args: &Args) -> anyhow::Result<Self> {
        let member = RaftMember::validate(MemberFlags {
            id: args.id,
            cluster: &args.cluster,
            listen: args.listen.as_deref(),
            admin_listen: args.admin_listen.as_deref(),
            data_dir: &args.data_dir,
            join: args.join,
            tls: &args.tls,
        })?;
        if args.shards == 0 || args.shards > MAX_SHARDS {
            bail!(
                "--shards {} must be between 1 and {MAX_SHARDS}",
                args.shards
            );
        }
        Ok(ServerConfig {
            member,
            num_shards: args.shards,
        })
    }

    fn member_options(&self) -> MemberOptions {
        MemberOptions {
            raft: self.member.raft_config(CONTROLLER_GROUP_ID),
            num_shards: self.num_shards,
            tls: self.member.tls.clone(),
            admin: self.member.admin_listen,
        }
    }
}

async fn run(cfg: ServerConfig) -> anyhow::Result<()> {
    // First: a SIGTERM from here on stops the member, even one that arrives while it starts.
    let shutdown = shutdown_signal();
    let listener = tokio::net::TcpListener::bind(cfg.member.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.member.listen))?;
    Ok(quorumkv_shardctrler::serve(cfg.member_options(), listener, shutdown).await?)
}

fn main() -> ExitCode {
    if let Some(code) = run_probe_if_asked("shardctrler-server") {
        return code;
    }
    quorumkv_bin::disable_transparent_huge_pages();
    let result = parse_args_with_config::<Args>().and_then(|args| {
        let cfg = ServerConfig::validate(&args)?;
        args.log.init()?;
        tracing::info!(id = cfg.member.id, listen = %cfg.member.listen, data_dir = %cfg.member.data_dir.display(), shards = cfg.num_shards, "starting shard controller member");
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(run(cfg))
    });
    exit_status("shardctrler-server", result)
}
