//! `shardkv-server`: one member of a QuorumKV replica group.
//!
//! Thin on purpose: parse the flags (and the optional TOML file), validate them into one
//! [`ServerConfig`], install logging, start a `quorumkv_shardkv::KvMember`, and serve until
//! SIGINT or SIGTERM (or until the Raft node stops by itself, which is an error).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use quorumkv_bin::{
    exit_status, parse_args_with_config, run_probe_if_asked, shutdown_signal, LogArgs, MemberFlags,
    RaftMember, TlsArgs,
};
use quorumkv_common::HostPort;
use quorumkv_shardkv::{KvMember, KvMemberOptions, ReadMode};

const ABOUT: &str = "One member of a QuorumKV replica group (a Raft group, normally 3 members).";

const LONG_ABOUT: &str = "\
One member of a QuorumKV replica group: a Raft group, normally of 3 members, that stores and
serves the shards the shard controller assigns to it, and hands shards to and pulls shards from
other groups when the controller's configuration changes. `shardkv-client` is the command-line
client.

Every member of a group is started with the same --gid and --cluster list and its own --id. The
group serves nothing until an operator adds it to the controller with
`shardctrler-client join GID=HOST:PORT,...` (the addresses clients dial, normally the --cluster
addresses). All traffic (between members, between groups, from clients) is gRPC over mutual TLS
on one port; certificates come from `quorumkv-certs`.

Every flag can also be set by its environment variable (shown below) or by a key of the --config
file named like the long flag (`gid = 1`, `data-dir = \"/var/lib/qkv\"`, `tls-ca = ...`). Flags
override the environment, which overrides the file.";

const EXAMPLES: &str = "\
Example (group 1, three members on one machine):
  shardkv-server --gid 1 --id 1 --cluster 1=localhost:7201,2=localhost:7202,3=localhost:7203 \\
      --ctrlers localhost:7101,localhost:7102,localhost:7103 --data-dir /tmp/g1-1 \\
      --tls-ca certs/ca.pem --tls-cert certs/node.pem --tls-key certs/node-key.pem
  shardctrler-client join 1=localhost:7201,localhost:7202,localhost:7203\n\nHealth check (for images without curl; exit 0 when the URL answers 2xx, else 1):\n  shardkv-server probe http://127.0.0.1:8201/health/ready [--timeout 2s]";

/// Flags of `shardkv-server`.
#[derive(Debug, Parser)]
#[command(name = "shardkv-server", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXAMPLES)]
struct Args {
    /// TOML file with values for any of the flags below, keyed by long flag name. Flags and
    /// environment variables override it.
    #[arg(long, env = "QKV_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// The replica group's id (gid): non-zero, the same on every member of the group, and the
    /// gid the group is joined under in the controller.
    #[arg(long, env = "QKV_GID")]
    gid: u64,

    /// This member's id within its group: non-zero, one of the ids in --cluster, never reused
    /// for another member.
    #[arg(long, env = "QKV_ID")]
    id: u64,

    /// All members of this group as `id=host:port,...` (the same list on every member). Hosts
    /// are DNS names (or IPs) that every member, other group and client can resolve, and that
    /// the members' certificates name.
    #[arg(long, env = "QKV_CLUSTER", value_name = "ID=HOST:PORT,...")]
    cluster: String,

    /// The shard controller's members, `host:port,...` (any of them; the leader is followed).
    #[arg(long, env = "QKV_CTRLERS", value_name = "HOST:PORT,...")]
    ctrlers: String,

    /// Address to listen on for gRPC (clients, the other members, other groups), `ip:port`.
    /// Default: 0.0.0.0 and the port of this member's entry in --cluster.
    #[arg(long, env = "QKV_LISTEN", value_name = "IP:PORT")]
    listen: Option<String>,

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

    /// Directory of this member's durable state: the Raft log (`sled/`), snapshots
    /// (`snapshots/`) and the shards' keys and values (`kv/`). Created if missing; never share
    /// it between members, and move or back it up as a whole.
    #[arg(long, env = "QKV_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,

    /// Start as a new, empty member of an existing group (it waits until the group's leader
    /// adds it) instead of creating the group. Ignored once the data directory holds state.
    #[arg(long, env = "QKV_JOIN")]
    join: bool,

    #[command(flatten)]
    tls: TlsArgs,

    #[command(flatten)]
    log: LogArgs,

    /// FOR TESTS ONLY, hidden: serve stale reads on purpose, to show that `shardkv-client
    /// check` catches them. The leader sends every get to a follower that answers from its own
    /// state without ReadIndex and is kept 400 ms behind (see the `stale_reads` module of
    /// quorumkv-shardkv). Deliberately without an environment variable.
    #[arg(long, hide = true)]
    unsafe_stale_reads_for_testing: bool,
}

/// The validated configuration of one member.
#[derive(Debug)]
struct ServerConfig {
    gid: u64,
    member: RaftMember,
    ctrlers: Vec<HostPort>,
    reads: ReadMode,
}

impl ServerConfig {
    /// Checks every flag and names the one that is wrong.
    fn validate(args: &Args) -> anyhow::Result<Self> {
        if args.gid == 0 {
            bail!("--gid 0 is reserved for unassigned shards; use a positive group id");
        }
        let member = RaftMember::validate(MemberFlags {
            id: args.id,
            cluster: &args.cluster,
            listen: args.listen.as_deref(),
            admin_listen: args.admin_listen.as_deref(),
            data_dir: &args.data_dir,
            join: args.join,
            tls: &args.tls,
        })?;
        let ctrlers = args
            .ctrlers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(HostPort::parse)
            .collect::<Result<Vec<_>, _>>()
            .context("--ctrlers")?;
        if ctrlers.is_empty() {
            bail!("--ctrlers lists no controller address");
        }
        Ok(ServerConfig {
            gid: args.gid,
            member,
            ctrlers,
            reads: if args.unsafe_stale_reads_for_testing {
                ReadMode::UnsafeFollowerReadsForTesting
            } else {
                ReadMode::ReadIndex
            },
        })
    }

    fn member_options(&self) -> KvMemberOptions {
        KvMemberOptions {
            raft: self.member.raft_config(self.gid),
            ctrlers: self.ctrlers.iter().map(ToString::to_string).collect(),
            tls: self.member.tls.clone(),
            wrap_transport: None,
            admin: self.member.admin_listen,
            reads: self.reads,
        }
    }
}

async fn run(cfg: ServerConfig) -> anyhow::Result<()> {
    // First: a SIGTERM from here on stops the member, even one that arrives while it starts.
    let shutdown = shutdown_signal();
    let listener = tokio::net::TcpListener::bind(cfg.member.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.member.listen))?;
    let member = KvMember::start(cfg.member_options(), listener)
        .await
        .context("cannot start the member")?;
    let mut status = member.node().watch_status();
    let stopped_by_itself = tokio::select! {
        _ = shutdown => false,
        // A driver that stopped by itself (fatal storage error) ends the process too.
        _ = status.wait_for(|s| s.stopped) => true,
    };
    let why = stopped_by_itself.then(|| {
        member
            .node()
            .status()
            .fatal
            .unwrap_or_else(|| "raft node stopped".into())
    });
    member.shutdown().await;
    match why {
        Some(why) => bail!("the raft node stopped: {why}"),
        None => Ok(()),
    }
}

fn main() -> ExitCode {
    if let Some(code) = run_probe_if_asked("shardkv-server") {
        return code;
    }
    quorumkv_bin::disable_transparent_huge_pages();
    let result = parse_args_with_config::<Args>().and_then(|args| {
        let cfg = ServerConfig::validate(&args)?;
        args.log.init()?;
        tracing::info!(gid = cfg.gid, id = cfg.member.id, listen = %cfg.member.listen, data_dir = %cfg.member.data_dir.display(), "starting shardkv member");
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(run(cfg))
    });
    exit_status("shardkv-server", result)
}
